"""Scheduled runs published to NATS workers: a real nats-server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
from pathlib import Path

from dist_helpers import (
    NATS_KEY,
    Processes,
    allow_args,
    lines,
    start_nats_worker,
    wait_for,
)

from styxcache.events import read_events
from styxcache.scheduler import FakeClock, NatsSettings, RunRecord, Scheduler
from styxcache.scheduler.signing import MessageAuth

HOUR = 3600


def make_scheduler(
    tmp_path: Path, url: str, clock: FakeClock, **kwargs: object
) -> Scheduler:
    settings = NatsSettings(
        url=url,
        name="test",
        lost_after_seconds=2.0,
        key_file=str(tmp_path / "nats.key"),
    )
    return Scheduler(clock=clock, state_dir=tmp_path / "state", nats=settings, **kwargs)  # type: ignore[arg-type]


def worker_args(tmp_path: Path) -> list[str]:
    return allow_args(tmp_path / "cache", tmp_path / "nats.key")


def runner_settings(tmp_path: Path) -> dict[str, object]:
    return {"cache_dir": str(tmp_path / "cache"), "policy": {"lease_seconds": 5}}


def test_fanout_runs_each_item_once_across_two_workers(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    processes: Processes,
    nats_url: str,
) -> None:
    workers = [
        start_nats_worker(processes, nats_url, f"w{n}", *worker_args(tmp_path))
        for n in (1, 2)
    ]
    scheduler = make_scheduler(tmp_path, nats_url, clock)
    scheduler.register_task(
        "fan",
        HOUR,
        "dist_jobs:run_item",
        expand_from="dist_jobs:six_items",
        executor="nats",
        runner=runner_settings(tmp_path),
    )
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        first = [r for r in scheduler.ledger.history(entry="fan") if r.item != "*"]
        assert sorted(r.item for r in first) == [f"i{n}" for n in range(6)]
        assert all((r.state, r.hits, r.misses) == ("ok", 0, 1) for r in first)
        runs = [line.split() for line in lines(dist_env["DIST_RUNS"])]
        assert sorted(key for key, _ in runs) == sorted(r.key for r in first)
        assert {int(pid) for _, pid in runs} <= {w.pid for w in workers}
        assert sorted(lines(dist_env["DIST_TOOL"])) == [f"v{n}" for n in range(6)]

        # Next hour: every item is a hit on whichever worker takes it.
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        second = [
            r
            for r in scheduler.ledger.history(entry="fan")
            if r.item != "*" and r.key not in {f.key for f in first}
        ]
        assert len(second) == 6
        assert all((r.state, r.hits, r.misses) == ("ok", 1, 0) for r in second)
        assert len(lines(dist_env["DIST_TOOL"])) == 6
        # Each worker process wrote its own event file in the shared cache.
        events = list(read_events(tmp_path / "cache"))
        assert sum(e.kind == "miss" for e in events) == 6
        assert sum(e.kind == "hit" for e in events) == 6
    finally:
        scheduler.close()


def test_identical_items_on_two_workers_run_the_tool_once(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    processes: Processes,
    nats_url: str,
) -> None:
    # Each worker only takes one schedule, so the twins surely meet on two
    # processes at the same time.
    for name in ("twin-a", "twin-b"):
        start_nats_worker(
            processes, nats_url, name, "--only", name, *worker_args(tmp_path)
        )
    scheduler = make_scheduler(tmp_path, nats_url, clock)
    for name in ("twin-a", "twin-b"):
        scheduler.register_task(
            name,
            HOUR,
            "dist_jobs:run_item",
            expand_from="dist_jobs:one_twin",
            executor="nats",
            runner=runner_settings(tmp_path),
        )
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        rows = [r for r in scheduler.ledger.history() if r.item == "a"]
        assert [r.state for r in rows] == ["ok", "ok"]
        assert sorted((r.hits, r.misses) for r in rows) == [(0, 1), (1, 0)]
        assert lines(dist_env["DIST_TOOL"]) == ["same"]
        pids = {line.split()[1] for line in lines(dist_env["DIST_RUNS"])}
        assert len(pids) == 2
    finally:
        scheduler.close()


def test_killed_worker_leaves_the_run_interrupted_and_it_is_retried(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    processes: Processes,
    nats_url: str,
) -> None:
    for name in ("w1", "w2"):
        start_nats_worker(processes, nats_url, name, *worker_args(tmp_path))
    seen: list[RunRecord] = []
    scheduler = make_scheduler(tmp_path, nats_url, clock, on_run=seen.append)
    scheduler.register_task(
        "fragile",
        HOUR,
        "dist_jobs:hold_once",
        pass_context=True,
        executor="nats",
        retries=2,
        runner=runner_settings(tmp_path),
    )
    markers = dist_env["DIST_DIR"]
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        # Not waiting for the run: it ends only after the kill below.
        scheduler.run_pending(wait=False)
        wait_for(lambda: any(markers.glob("holding.*")), "a worker to take the run")
        victim = int(next(markers.glob("holding.*")).name.split(".")[1])
        (markers / "killed").touch()
        os.kill(victim, signal.SIGKILL)
        assert scheduler.drain(timeout=60)
        key = next(r.key for r in scheduler.ledger.history(entry="fragile"))
        final = scheduler.ledger.get(key)
        assert final is not None and final.state == "ok"
        interrupted = [r for r in seen if r.state == "interrupted"]
        assert len(interrupted) == 1
        assert "attempt 1 lost" in interrupted[0].reason
        assert "retry 1 of 2" in interrupted[0].reason
        assert str(victim) in interrupted[0].reason  # the silent worker is named
        ran = lines(dist_env["DIST_RUNS"])
        assert len(ran) == 1 and int(ran[0].split()[1]) != victim
    finally:
        scheduler.close()


async def _request(
    url: str, subject: str, body: dict[str, object]
) -> dict[str, object]:
    import nats

    auth = MessageAuth(NATS_KEY.encode())
    nc = await nats.connect(url)
    try:
        data = json.dumps(body).encode()
        reply = await nc.request(
            subject, data, timeout=10, headers=auth.sign(subject, data)
        )
        auth.check(reply.subject, reply.data, reply.headers, run="")  # signed too
        return json.loads(reply.data)  # type: ignore[no-any-return]
    finally:
        await nc.drain()


def test_yaml_dispatch_nats_status_and_reload_on_the_control_subject(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    processes: Processes,
    nats_url: str,
) -> None:
    start_nats_worker(processes, nats_url, "w1", *worker_args(tmp_path))
    config = tmp_path / "schedule.yaml"
    body = """\
        state_dir: state
        executor: inline
        nats: {{url: "{url}", name: lab, key_file: nats.key}}
        schedules:
          - name: first
            interval_seconds: 3600
            target: dist_jobs:run_item
            dispatch: nats
            runner: {{cache_dir: cache}}
        {extra}
    """
    config.write_text(textwrap.dedent(body.format(url=nats_url, extra="")))
    scheduler = Scheduler.from_yaml(config, clock=clock)
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        (row,) = scheduler.ledger.history(entry="first")
        assert (row.state, row.misses) == ("ok", 1)
        assert lines(dist_env["DIST_TOOL"]) == ["first"]
        assert (tmp_path / "cache").is_dir()  # relative to the YAML file

        status = asyncio.run(
            _request(nats_url, "styxcache.control.lab", {"command": "status"})
        )
        assert status["ok"] is True
        assert status["counts"] == {"ok": 1}
        assert status["running"] == []
        first = status["schedules"]["first"]  # type: ignore[index]
        assert (first["enabled"], first["executor"]) == (True, "nats")

        second = "  - {name: second, interval_seconds: 60, target: dist_jobs:run_item}"
        config.write_text(textwrap.dedent(body.format(url=nats_url, extra=second)))
        reply = asyncio.run(
            _request(nats_url, "styxcache.control.lab", {"command": "reload"})
        )
        assert reply == {"ok": True, "error": ""}
        assert sorted(scheduler.jobs) == ["first", "second"]

        unknown = asyncio.run(
            _request(nats_url, "styxcache.control.lab", {"command": "explode"})
        )
        assert unknown["ok"] is False and "explode" in str(unknown["error"])
    finally:
        scheduler.close()


def test_a_worker_stops_on_sigterm_even_with_the_server_gone(
    tmp_path: Path, processes: Processes, dist_env: dict[str, Path], nats_url: str
) -> None:
    worker = start_nats_worker(processes, nats_url, "w1", *worker_args(tmp_path))
    server = processes.started[0]
    server.kill()
    server.wait(10)
    wait_for(lambda: "NATS:" in processes.log("w1"), "the worker to notice")
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)  # bounded drain; without it the worker would hang here
    assert worker.returncode == 0, processes.log("w1")
