"""Faults around the cache never turn into the cache's own errors.

A full disk (a real 1 MiB tmpfs, mounted as root) and a `gc`/`clear` running
concurrently with a pipeline, with real `LocalRunner` processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from styxdefs import LocalRunner, Metadata, StyxRuntimeError

from conftest import require, run_tool
from styxcache import CacheStore, CachingRunner
from styxcache.gc import GcLimits, SweepAges, collect_garbage

TOOL = Metadata(id="fill", name="fill", package="test")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), unmounted afterwards."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root (CI runs as root)")
    require(shutil.which("mount") is not None, "mount(8) not installed")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(runner: CachingRunner, kib: int, token: str) -> dict[str, Path]:
    # A few lines of stdout, so the log has buffered data to flush at close.
    return run_tool(
        runner,
        TOOL,
        {"kib": kib, "token": token},
        outputs={"data": "data.bin"},
        cargs=lambda _: [
            "sh",
            "-c",
            f"for i in 1 2 3 4 5; do echo line $i {token}; done; "
            f"head -c {kib * 1024} /dev/zero > data.bin",
        ],
    )


def test_full_disk_raises_the_tools_error_and_the_cache_keeps_working(
    tiny_fs: Path, tmp_path: Path
) -> None:
    cache = tiny_fs / "cache"
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "styx_tmp"), cache)
    with pytest.raises(StyxRuntimeError) as info:
        fill(runner, 4096, "big")
    assert "kept in" not in "\n".join(getattr(info.value, "__notes__", []))
    # The partial run is gone: nothing left holding the space.
    incoming = cache / CacheStore.STAGING_DIR
    failed = cache / CacheStore.FAILED_DIR
    assert [p for p in incoming.iterdir() if not p.name.startswith(".probe")] == []
    assert not failed.exists() or list(failed.iterdir()) == []
    # The next run fits and is stored; the one after is a hit.
    small = fill(runner, 16, "small")
    assert small["data"].stat().st_size == 16 * 1024
    fill(runner, 16, "small")
    assert (runner.stats.misses, runner.stats.hits) == (2, 1)


def test_concurrent_clear_never_fails_a_pipeline_step(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "styx_tmp"), cache)
    store = CacheStore(cache)
    stop = threading.Event()
    gc_errors: list[BaseException] = []

    def clear_repeatedly() -> None:
        ages = SweepAges(staging_s=0.0, failed_s=0.0, quarantine_s=0.0, trash_s=0.0)
        while not stop.is_set():
            try:
                collect_garbage(store, GcLimits(max_entries=0), ages=ages)
            except BaseException as exc:  # reported below, not swallowed
                gc_errors.append(exc)
                return

    step_errors: list[BaseException] = []

    def pipeline(worker: int) -> None:
        try:
            for step in range(120):
                token = str((step + worker) % 5)
                lines: list[str] = []
                out = run_tool(
                    runner,
                    Metadata(id=f"step{step % 3}", name="step", package="test"),
                    {"token": token},
                    outputs={"out": "out.txt"},
                    cargs=lambda _, t=token: [
                        "sh",
                        "-c",
                        f"echo {t} > out.txt; echo said {t}",
                    ],
                    stdout=lines,
                )
                assert lines == [f"said {token}"]
                # `clear` removes entries not in use; one may go right after
                # its step returned, which is clear's job, not a failed step.
                with contextlib.suppress(FileNotFoundError):
                    assert out["out"].read_text() == f"{token}\n"
        except BaseException as exc:
            step_errors.append(exc)

    cleaner = threading.Thread(target=clear_repeatedly)
    cleaner.start()
    workers = [threading.Thread(target=pipeline, args=(i,)) for i in range(3)]
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=600)
    finally:
        stop.set()
        cleaner.join(timeout=60)
    assert step_errors == []
    assert gc_errors == []
    assert runner.stats.hits + runner.stats.misses == 360


def test_entry_removed_while_its_logs_are_replayed(tmp_path: Path) -> None:
    # A concurrent `clear` removes the entry after the stdout replay began:
    # the stderr log must still be delivered, in full, exactly once.
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "s"), tmp_path / "c")
    script = "echo out > out.txt; echo to-stdout; echo to-stderr >&2"

    def step(on_line: Callable[[str], None]) -> dict[str, Path]:
        execution = runner.start_execution(TOOL)
        execution.params({"n": 1})
        root = Path(execution.output_file("."))
        errors: list[str] = []
        execution.output_file("out.txt")
        execution.run(
            ["sh", "-c", script], handle_stdout=on_line, handle_stderr=errors.append
        )
        assert errors == ["to-stderr"]
        return {"root": root}

    first: list[str] = []
    step(first.append)
    seen: list[str] = []

    def clear_midway(line: str) -> None:
        seen.append(line)
        runner.store.remove(entry["root"].name)

    entry = step(lambda _line: None)
    entry = step(clear_midway)
    assert seen == ["to-stdout"]
    assert first == ["to-stdout"]


def test_full_disk_after_a_successful_tool_still_gives_its_files(
    tiny_fs: Path, tmp_path: Path
) -> None:
    # The tool's files fit; its stdout log does not. The bare runner would
    # have succeeded, so the call succeeds, uncached.
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "styx_tmp"), tiny_fs / "c")
    lines: list[str] = []
    script = (
        "head -c 900000 /dev/zero > data.bin; "
        "head -c 3000000 /dev/urandom | od -An -tx1 | head -n 20000"
    )
    for _ in range(2):
        lines.clear()
        out = run_tool(
            runner,
            TOOL,
            {"n": 1},
            outputs={"data": "data.bin"},
            cargs=lambda _: ["sh", "-c", script],
            stdout=lines,
        )
        assert out["data"].stat().st_size == 900000
        assert len(lines) == 20000
    assert runner.stats.hits == 0
