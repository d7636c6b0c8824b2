"""Scoped cache modes: bypass(), enabled(), refresh(), cache_mode().

Each mode is checked through a real `CachingRunner` over a `LocalRunner`;
the tool appends to a counter file so every real run is visible. Thread and
asyncio isolation are synchronised with barriers and events, never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from styxdefs import LocalRunner, Metadata, Runner

import styxcache
from conftest import run_tool
from styxcache import CacheMode, CachingRunner, cache_mode, current_mode
from styxcache.modes import is_refreshing

TOOL = Metadata(id="stamp", name="Stamp", package="test")


def stamp(runner: Runner, counter: Path, label: str = "a") -> Path:
    """Append a line to `counter` and write the run number to out.txt."""
    out = run_tool(
        runner,
        TOOL,
        {"label": label},
        outputs={"out": "out.txt"},
        cargs=lambda _: [
            "sh",
            "-c",
            f'echo {label} >> "{counter}"; wc -l < "{counter}" | tr -d " " > out.txt',
        ],
    )
    return out["out"]


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.fixture
def runner(tmp_cache: Path, data_dir: Path) -> CachingRunner:
    return CachingRunner(LocalRunner(data_dir=data_dir), tmp_cache)


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def test_default_mode_is_normal() -> None:
    assert current_mode() is CacheMode.NORMAL
    assert not styxcache.is_bypassed()


def test_bypass_neither_reads_nor_writes(
    runner: CachingRunner, counter: Path, tmp_cache: Path, data_dir: Path
) -> None:
    cached = stamp(runner, counter)
    entry = cached.parent
    long_ago = time.time() - 3600
    os.utime(entry, (long_ago, long_ago))
    keys = list(runner.store.iter_keys())

    with styxcache.bypass():
        assert styxcache.is_bypassed()
        fresh = stamp(runner, counter)  # cached, but not read
        other = stamp(runner, counter, "b")  # not cached, and not written
    assert runs(counter) == 3
    for path in (fresh, other):
        assert tmp_cache not in path.parents
        assert data_dir in path.parents
    assert fresh.read_text() == "2\n"
    assert cached.read_text() == "1\n"
    assert entry.stat().st_mtime == pytest.approx(long_ago, abs=1)
    assert list(runner.store.iter_keys()) == keys
    assert runner.stats.hits == 0
    assert runner.stats.bypassed == 2

    # Still not cached afterwards: the bypassed "b" run left nothing.
    stamp(runner, counter, "b")
    assert runs(counter) == 4


def test_enabled_inside_bypass_caches(runner: CachingRunner, counter: Path) -> None:
    with styxcache.bypass():
        with styxcache.enabled():
            assert not styxcache.is_bypassed()
            first = stamp(runner, counter)
            second = stamp(runner, counter)
        assert styxcache.is_bypassed()
    assert runs(counter) == 1
    assert first == second
    assert runner.stats.hits == 1


def test_refresh_reruns_and_replaces(runner: CachingRunner, counter: Path) -> None:
    first = stamp(runner, counter)
    assert first.read_text() == "1\n"
    with styxcache.refresh():
        assert is_refreshing()
        again = stamp(runner, counter)
    assert runs(counter) == 2
    assert again == first  # same key, same entry
    assert again.read_text() == "2\n"
    assert runner.store.is_hit(first.parent.name)
    assert runner.stats.refreshed == 1
    # The replaced entry is what later hits serve.
    served = stamp(runner, counter)
    assert runs(counter) == 2
    assert served.read_text() == "2\n"


def test_refresh_of_an_uncached_tool_stores_it(
    runner: CachingRunner, counter: Path
) -> None:
    with styxcache.refresh():
        out = stamp(runner, counter)
    stamp(runner, counter)
    assert runs(counter) == 1
    assert runner.store.is_hit(out.parent.name)


def test_innermost_block_wins(runner: CachingRunner, counter: Path) -> None:
    with styxcache.refresh():
        with styxcache.bypass():
            assert current_mode() is CacheMode.BYPASS
            bypassed = stamp(runner, counter)
        assert current_mode() is CacheMode.REFRESH
        with cache_mode("normal"):
            assert current_mode() is CacheMode.NORMAL
    with styxcache.bypass():
        with styxcache.refresh():
            assert current_mode() is CacheMode.REFRESH
            refreshed = stamp(runner, counter)
            with styxcache.enabled():
                assert current_mode() is CacheMode.NORMAL
                served = stamp(runner, counter)
        assert current_mode() is CacheMode.BYPASS
    assert current_mode() is CacheMode.NORMAL
    assert runs(counter) == 2
    assert served == refreshed
    assert bypassed != refreshed


def test_mode_restored_after_an_exception() -> None:
    with pytest.raises(RuntimeError), styxcache.bypass():
        raise RuntimeError("boom")
    assert current_mode() is CacheMode.NORMAL


def test_cache_mode_accepts_names_and_rejects_nonsense() -> None:
    with cache_mode("bypass") as mode:
        assert mode is CacheMode.BYPASS
        assert styxcache.is_bypassed()
    with cache_mode(CacheMode.REFRESH) as mode:
        assert mode is CacheMode.REFRESH
    expected = r"'nonsense'.*'normal'.*'refresh'.*'bypass'"
    with pytest.raises(ValueError, match=expected), cache_mode("nonsense"):
        pass  # pragma: no cover
    assert current_mode() is CacheMode.NORMAL


def test_bypass_in_one_thread_does_not_affect_another(
    runner: CachingRunner, counter: Path, tmp_cache: Path
) -> None:
    # Fill the cache so a NORMAL call is a hit and a BYPASS call a run.
    stamp(runner, counter)
    both_inside = threading.Barrier(2, timeout=30)
    both_done = threading.Barrier(2, timeout=30)
    seen: dict[str, object] = {}
    errors: list[BaseException] = []

    def bypassing() -> None:
        try:
            with styxcache.bypass():
                both_inside.wait()
                seen["bypass_mode"] = current_mode()
                seen["bypass_out"] = stamp(runner, counter)
                both_done.wait()
        except BaseException as exc:
            errors.append(exc)
            both_inside.abort()
            both_done.abort()

    def normal() -> None:
        try:
            both_inside.wait()  # the other thread is inside bypass() now
            seen["normal_mode"] = current_mode()
            seen["normal_out"] = stamp(runner, counter)
            both_done.wait()
        except BaseException as exc:
            errors.append(exc)
            both_inside.abort()
            both_done.abort()

    threads = [threading.Thread(target=bypassing), threading.Thread(target=normal)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert seen["bypass_mode"] is CacheMode.BYPASS
    assert seen["normal_mode"] is CacheMode.NORMAL
    assert tmp_cache in Path(str(seen["normal_out"])).parents
    assert tmp_cache not in Path(str(seen["bypass_out"])).parents
    assert runs(counter) == 2
    assert runner.stats.hits == 1
    assert runner.stats.bypassed == 1


def test_bypass_in_one_task_does_not_affect_another(
    runner: CachingRunner, counter: Path, tmp_cache: Path
) -> None:
    stamp(runner, counter)

    async def main() -> tuple[Path, Path, CacheMode]:
        inside = asyncio.Event()
        normal_done = asyncio.Event()

        async def bypassing() -> Path:
            with styxcache.bypass():
                inside.set()
                await normal_done.wait()  # stay inside while the other task runs
                # to_thread copies this task's context, bypass included.
                return await asyncio.to_thread(stamp, runner, counter)

        async def normal() -> tuple[Path, CacheMode]:
            await inside.wait()
            mode = current_mode()
            out = await asyncio.to_thread(stamp, runner, counter)
            normal_done.set()
            return out, mode

        bypassed, (served, mode) = await asyncio.gather(bypassing(), normal())
        return bypassed, served, mode

    bypassed, served, mode = asyncio.run(main())
    assert mode is CacheMode.NORMAL
    assert tmp_cache in served.parents
    assert tmp_cache not in bypassed.parents
    assert runs(counter) == 2
    assert runner.stats.hits == 1
    assert runner.stats.bypassed == 1


def test_mode_is_read_when_the_execution_starts(
    runner: CachingRunner, counter: Path, tmp_cache: Path
) -> None:
    stamp(runner, counter)
    # Started inside bypass(), finished outside: still bypassed.
    with styxcache.bypass():
        execution = runner.start_execution(TOOL)
    execution.params({"label": "a"})
    out = execution.output_file("out.txt")
    execution.run(["sh", "-c", f'echo a >> "{counter}"; echo x > out.txt'])
    assert tmp_cache not in out.parents
    assert runs(counter) == 2
