"""`verify`'s forked workers: only when safe, and never left behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from styxcache import catalog_files, quick_verify
from styxcache._system import can_fork
from styxcache.catalog import record_use
from styxcache.catalog_rows import CatalogRows
from styxcache.inventory import EntryStamp
from styxcache.quick_verify import MIN_PER_JOB, whole_flags
from styxcache.store import CacheStore

_forks: list[int] = []
os.register_at_fork(before=lambda: _forks.append(os.getpid()))


@pytest.fixture
def stamps(tmp_path: Path) -> list[EntryStamp]:
    # Entries the catalog does not know: each is answered "unsure" quickly.
    return [
        EntryStamp(f"{n:064x}", 0.0, n, str(tmp_path / f"{n:064x}"))
        for n in range(2 * MIN_PER_JOB)
    ]


@pytest.fixture
def other_thread() -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    yield
    stop.set()
    thread.join()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_no_fork_while_another_thread_runs(
    tmp_path: Path, stamps: list[EntryStamp], other_thread: None
) -> None:
    assert not can_fork()
    before = len(_forks)
    flags = whole_flags(CacheStore(tmp_path), stamps, CatalogRows(), jobs=2)
    assert flags == [False] * len(stamps)
    assert len(_forks) == before


def test_workers_are_waited_for_when_this_share_fails(
    tmp_path: Path, stamps: list[EntryStamp], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Earlier tests may leave a thread alive; the workers here take no lock.
    monkeypatch.setattr(quick_verify, "can_fork", lambda: True)
    fds = _open_fds()
    before = len(_forks)

    def broken(_done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        whole_flags(
            CacheStore(tmp_path), stamps, CatalogRows(), jobs=2, on_progress=broken
        )
    assert len(_forks) == before + 1  # a worker did start
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # and was waited for
    assert _open_fds() == fds  # its pipe closed


def test_a_forked_child_records_uses_even_if_a_thread_held_the_writer_lock(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    parent_key, child_key = "a" * 64, "b" * 64
    record_use(root, parent_key)  # the parent has a catalog file open
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with catalog_files._WRITER.lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        pid = os.fork()
        if pid == 0:  # the child: without a fresh lock this would hang
            code = 1
            try:
                record_use(root, child_key)
                code = 0
            finally:
                os._exit(code)
        status = _wait(pid, timeout_s=60.0)
    finally:
        release.set()
        holder.join()
    assert status == 0
    files = os.listdir(root / catalog_files.CATALOG_DIR)
    assert any(f"-{pid}-" in name for name in files), files
    text = "".join((root / catalog_files.CATALOG_DIR / n).read_text() for n in files)
    assert text.count(child_key) == 1 and text.count(parent_key) == 1


def _wait(pid: int, *, timeout_s: float) -> int:
    """The child's exit code; kills it (and fails) when it hangs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the catalog writer's lock")
