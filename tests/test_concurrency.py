"""One run for concurrent twins: threads, processes, and crashed lease holders."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from styxdefs import LocalRunner, Metadata

from conftest import run_tool
from styxcache import CachePolicy, CachingRunner
from styxcache.lease import LeaseOwner

SLOW = Metadata(id="slow", name="slow", package="test")


def _slow_call(cache: Path, work: Path, counter: Path, seconds: float) -> str:
    runner = CachingRunner(LocalRunner(data_dir=work / "styx_tmp"), cache)
    out = run_tool(
        runner,
        SLOW,
        {"seconds": seconds},
        outputs={"out": "out.txt"},
        cargs=lambda _: [
            "sh",
            "-c",
            f"echo $$ >> {counter}; sleep {seconds}; echo result > out.txt",
        ],
    )
    return f"{out['out']}|{out['out'].read_text()}"


def _worker(args: tuple[str, str, str, float, object]) -> str:
    cache, work, counter, seconds, barrier = args
    barrier.wait()  # type: ignore[attr-defined]
    return _slow_call(Path(cache), Path(work), Path(counter), seconds)


def test_eight_processes_run_the_tool_once(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(8)
    counter = tmp_path / "runs.txt"
    args = [
        (str(tmp_path / "cache"), str(tmp_path / f"w{i}"), str(counter), 1.0, barrier)
        for i in range(8)
    ]
    with ctx.Pool(8) as pool:
        results = pool.map(_worker, args)
    assert len(counter.read_text().split()) == 1
    assert len(set(results)) == 1
    assert results[0].endswith("|result\n")


def test_threads_of_one_process_run_the_tool_once(tmp_path: Path) -> None:
    counter = tmp_path / "runs.txt"
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "styx_tmp"), tmp_path / "cache"
    )
    barrier = threading.Barrier(4)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        out = run_tool(
            runner,
            SLOW,
            {"seconds": 0.5},
            outputs={"out": "out.txt"},
            cargs=lambda _: [
                "sh",
                "-c",
                f"echo x >> {counter}; sleep 0.5; echo r > out.txt",
            ],
        )
        results.append(out["out"].read_text())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["r\n"] * 4
    assert len(counter.read_text().split()) == 1
    assert runner.stats.misses == 1 and runner.stats.hits == 3


def _hold_forever(cache: str, work: str, counter: str) -> None:
    os.setpgrp()  # so the test can kill the tool with its caller
    _slow_call(Path(cache), Path(work), Path(counter), 600.0)


def _wait_for(condition: object, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_lease_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    cache, counter = tmp_path / "cache", tmp_path / "runs.txt"
    holder = mp.get_context("fork").Process(
        target=_hold_forever, args=(str(cache), str(tmp_path / "w0"), str(counter))
    )
    holder.start()
    locks = cache / ".locks"
    _wait_for(
        lambda: counter.exists() and any(locks.glob("*.lock")),
        "the holder to start the tool",
    )
    os.killpg(holder.pid, signal.SIGKILL)
    holder.join()
    # Same host, dead pid: taken over at once, without waiting out the lease.
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "w1"),
        cache,
        policy=CachePolicy(lease_seconds=3600, lock_timeout=60),
    )
    out = run_tool(
        runner,
        SLOW,
        {"seconds": 600.0},
        outputs={"out": "out.txt"},
        cargs=lambda _: ["sh", "-c", f"echo $$ >> {counter}; echo result > out.txt"],
    )
    assert out["out"].read_text() == "result\n"
    assert len(counter.read_text().split()) == 2
    assert not list(locks.glob("*.lock"))


def _fake_foreign_lease(cache: Path, key: str, age: float) -> Path:
    locks = cache / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{key}.lock"
    owner = LeaseOwner("other-node.cluster", 4242, "", "feedface", time.time() - age)
    path.write_text(json.dumps(owner.__dict__))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def _key_of(runner: CachingRunner, counter: Path) -> str:
    execution = runner.start_execution(SLOW)
    execution.params({"seconds": 0.0})
    entry = execution.output_file(".")
    return Path(entry).name


def test_unrenewed_lease_from_another_host_expires(tmp_path: Path) -> None:
    cache, counter = tmp_path / "cache", tmp_path / "runs.txt"
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "w"), cache, policy=CachePolicy(lease_seconds=5)
    )
    key = _key_of(runner, counter)
    _fake_foreign_lease(cache, key, age=60)
    out = run_tool(
        runner,
        SLOW,
        {"seconds": 0.0},
        outputs={"out": "out.txt"},
        cargs=lambda _: ["sh", "-c", f"echo 1 >> {counter}; echo ok > out.txt"],
    )
    assert out["out"].read_text() == "ok\n"


def test_live_foreign_lease_times_out_and_runs_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, counter = tmp_path / "cache", tmp_path / "runs.txt"
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "w"),
        cache,
        policy=CachePolicy(lease_seconds=3600, lock_timeout=0.2),
    )
    key = _key_of(runner, counter)
    lease = _fake_foreign_lease(cache, key, age=0)
    out = run_tool(
        runner,
        SLOW,
        {"seconds": 0.0},
        outputs={"out": "out.txt"},
        cargs=lambda _: ["sh", "-c", f"echo 1 >> {counter}; echo ok > out.txt"],
    )
    assert out["out"].read_text() == "ok\n"
    assert "running without it" in caplog.text
    assert lease.exists(), "another host's live lease is never deleted"
    assert runner.store.is_hit(key), "the result is still committed atomically"


def test_lease_records_its_owner(tmp_path: Path) -> None:
    from styxcache import lease as leases

    seen: dict[str, object] = {}
    with leases.acquire(
        tmp_path, "k" * 64, lease_seconds=30, timeout=1, done=lambda: False
    ) as held:
        assert held is not None
        seen.update(json.loads(held.path.read_text()))
    assert seen["host"] == socket.gethostname()
    assert seen["pid"] == os.getpid()
    assert seen["token"]
    assert not (tmp_path / f"{'k' * 64}.lock").exists()


def test_lease_is_renewed_while_held(tmp_path: Path) -> None:
    from styxcache import lease as leases

    with leases.acquire(
        tmp_path, "r" * 64, lease_seconds=0.4, timeout=1, done=lambda: False
    ) as held:
        assert held is not None
        past = time.time() - 100
        os.utime(held.path, (past, past))
        _wait_for(
            lambda: held.path.stat().st_mtime > past + 50, "the lease to be renewed"
        )
        assert not held.lost


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="process start times are read from /proc")
