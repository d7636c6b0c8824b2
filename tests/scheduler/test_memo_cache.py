"""CacheMemory and Cache: seed-000 refresh semantics, single flight, atomic files."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from styxcache.scheduler import Cache, CacheMemory, FakeClock, json_reader, json_saver

NOW = dt.datetime.now(tz=dt.timezone.utc).replace(microsecond=0)


class Source:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, int]:
        self.calls += 1
        return {"n": self.calls}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def test_memory_first_access_expiry_and_fresh(clock: FakeClock) -> None:
    src = Source()
    cache = CacheMemory(
        src, dt.timedelta(seconds=30), logging.getLogger("t"), clock=clock
    )
    assert cache() == {"n": 1}
    clock.advance(30)
    assert cache() == {"n": 1}  # age == expire: still valid
    clock.advance(1)
    assert cache() == {"n": 2}
    assert cache(fresh=True, tolerance_seconds=999) == {"n": 3}  # unconditional


def test_memory_decorator() -> None:
    @CacheMemory.as_decorator(expire=dt.timedelta(minutes=1), name="snap")
    def snapshot() -> int:
        return 7

    assert isinstance(snapshot, CacheMemory)
    assert snapshot() == 7 and snapshot.name == "snap"


def test_negative_expire_is_rejected() -> None:
    with pytest.raises(ValueError, match="expire"):
        CacheMemory(Source(), dt.timedelta(seconds=-1))


def test_one_source_call_when_many_threads_ask(clock: FakeClock) -> None:
    calls = 0
    entered = threading.Event()
    release = threading.Event()

    def slow_source() -> int:
        nonlocal calls
        calls += 1
        entered.set()
        assert release.wait(timeout=30)
        return 42

    cache = CacheMemory(slow_source, dt.timedelta(minutes=5), clock=clock)
    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(cache()))
    first.start()
    assert entered.wait(timeout=30)
    others = [
        threading.Thread(target=lambda: results.append(cache())) for _ in range(8)
    ]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join()
    assert results == [42] * 9
    assert calls == 1


def test_disk_cache_reuses_young_file(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "snap.pkl"
    src = Source()
    Cache(src, dt.timedelta(minutes=5), path=path, clock=clock)()
    assert src.calls == 1 and path.exists()
    clock.advance(60)
    second_src = Source()
    again = Cache(second_src, dt.timedelta(minutes=5), path=path, clock=clock)
    assert again() == {"n": 1}  # read from disk, no call
    assert second_src.calls == 0


def test_disk_cache_regenerates_old_file(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "snap.pkl"
    Cache(Source(), dt.timedelta(minutes=5), path=path, clock=clock)()
    clock.advance(301)
    src = Source()
    assert Cache(src, dt.timedelta(minutes=5), path=path, clock=clock)() == {"n": 1}
    assert src.calls == 1


def test_disk_fresh_is_tolerance_aware(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "snap.pkl"
    src = Source()
    cache = Cache(src, dt.timedelta(minutes=5), path=path, clock=clock)
    cache()
    clock.advance(5)
    assert cache(fresh=True, tolerance_seconds=10) == {"n": 1}  # young enough
    clock.advance(10)
    assert cache(fresh=True, tolerance_seconds=10) == {"n": 2}
    # On first access too: a file older than the tolerance is regenerated.
    clock.advance(20)
    other = Source()
    Cache(other, dt.timedelta(minutes=5), path=path, clock=clock)(
        fresh=True, tolerance_seconds=5
    )
    assert other.calls == 1


def test_reader_failure_regenerates_and_rewrites(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snap.pkl"
    path.write_bytes(b"not a pickle")
    os.utime(path, (clock.time(), clock.time()))
    src = Source()
    with caplog.at_level(logging.WARNING):
        assert Cache(src, dt.timedelta(minutes=5), path=path, clock=clock)() == {"n": 1}
    assert "cannot read" in caplog.text
    assert Cache(Source(), dt.timedelta(minutes=5), path=path, clock=clock)() == {
        "n": 1
    }


def test_json_saver_and_reader(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "snap.json"
    cache = Cache(
        Source(),
        dt.timedelta(minutes=5),
        path=path,
        saver=json_saver,
        reader=json_reader,
        clock=clock,
    )
    cache()
    assert json.loads(path.read_text()) == {"n": 1}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_failed_save_keeps_value_in_memory(tmp_path: Path, clock: FakeClock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = Cache(
        Source(), dt.timedelta(minutes=5), path=blocker / "snap.pkl", clock=clock
    )
    assert cache() == {"n": 1}


def test_cache_needs_path() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        Cache(Source(), dt.timedelta(minutes=5))


def test_disk_decorator(tmp_path: Path) -> None:
    @Cache.as_decorator(
        expire=dt.timedelta(minutes=1),
        path=tmp_path / "v.json",
        saver=json_saver,
        reader=json_reader,
    )
    def value() -> list[int]:
        return [1, 2]

    assert isinstance(value, Cache)
    assert value() == [1, 2] and (tmp_path / "v.json").exists()
