"""The execution given its services (issue 16 items 2-3) and the state it keeps.

An execution never reaches into its runner; a plan is frozen; the miss's
comparison with the nearest entry travels as facts; leases are judged by one
rule; parsed manifests are per-store state.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from styxdefs import LocalRunner, Metadata

from conftest import run_tool
from styxcache import CachingRunner
from styxcache.events import CacheEvent
from styxcache.gc_safety import LOCK_STALE_S, lease_is_live
from styxcache.lease import LeaseOwner, judge_lease, read_lease
from styxcache.logs import LineLog
from styxcache.manifest import ManifestCache
from styxcache.planning import Plan
from styxcache.store import CacheStore

SRC = Path(__file__).resolve().parents[1] / "src" / "styxcache"
TOOL = Metadata(id="words", name="words", package="test")


def _call(runner: CachingRunner, n: int) -> Path:
    out = run_tool(
        runner,
        TOOL,
        {"n": n},
        outputs={"out": "out.txt"},
        cargs=lambda _: ["sh", "-c", f"echo {n} > out.txt"],
    )
    return Path(out["out"])


def test_execution_modules_never_import_the_runner() -> None:
    for name in ("execution", "planning", "committing", "uncached", "services"):
        tree = ast.parse((SRC / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert "styxcache.runner" not in imported, name


def test_the_execution_holds_services_not_the_runner(tmp_path: Path) -> None:
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "tmp"), tmp_path / "c")
    execution = runner.start_execution(TOOL)
    assert not any(value is runner for value in vars(execution).values())


def test_a_plan_is_frozen() -> None:
    plan = Plan("cache", key="k" * 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.kind = "hit"  # type: ignore[misc]


def test_a_miss_event_carries_the_nearest_entry_and_what_differs(
    tmp_path: Path,
) -> None:
    events: list[CacheEvent] = []
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "tmp"), tmp_path / "c", on_event=events.append
    )
    _call(runner, 1)
    _call(runner, 2)
    first, second = events
    assert (first.nearest, first.differences) == ("", ())
    assert first.reason == "no earlier entry of this tool"
    assert second.nearest == first.key
    assert second.differences == ("param `n` 1 -> 2",)
    assert second.reason == f"nearest entry {first.key[:12]}: param `n` 1 -> 2"
    again = CacheEvent.from_dict(json.loads(second.to_json()))
    assert again == second
    assert "nearest" not in json.loads(first.to_json())  # not written when empty


def test_on_event_and_remote_can_be_replaced_after_construction(
    tmp_path: Path,
) -> None:
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "tmp"), tmp_path / "c")
    seen: list[CacheEvent] = []
    runner.on_event = seen.append
    _call(runner, 1)
    assert [e.kind for e in seen] == ["miss"]
    assert runner.stats.misses == 1
    runner.remote = None
    assert runner.remote is None
    _call(runner, 1)
    assert [e.kind for e in seen] == ["miss", "hit"]


def test_lease_owner_record_holds_every_field() -> None:
    owner = LeaseOwner.me()
    assert LeaseOwner(**json.loads(owner.to_json())) == owner
    assert owner.start  # this process's start time, read once


def _lease(path: Path, owner: LeaseOwner, age: float) -> None:
    path.write_text(owner.to_json())
    then = time.time() - age
    os.utime(path, (then, then))


def test_one_rule_for_lease_staleness(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    locks = tmp_path / store.LOCKS_DIR
    locks.mkdir()
    me = LeaseOwner.me()
    key = "a" * 64
    path = locks / f"{key}.lock"
    assert read_lease(path) is None
    assert not lease_is_live(store, key)

    _lease(path, me, age=10)  # a live holder renewing: live for both
    state = read_lease(path)
    assert state is not None and state.owner == me
    assert judge_lease(state, 30) == ""
    assert lease_is_live(store, key)

    _lease(path, me, age=100)  # not renewed for longer than a waiter's period
    state = read_lease(path)
    assert state is not None
    assert "stopped renewing" in judge_lease(state, 30)
    assert lease_is_live(store, key)  # gc waits far longer: LOCK_STALE_S
    _lease(path, me, age=LOCK_STALE_S + 60)
    assert not lease_is_live(store, key)

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = dataclasses.replace(me, pid=int(gone.stdout), start="1")
    _lease(path, dead, age=0)  # a holder of this host that no longer runs
    state = read_lease(path)
    assert state is not None
    assert "is gone" in judge_lease(state, 30)
    assert not lease_is_live(store, key)


def test_parsed_manifests_are_per_store_state(tmp_path: Path) -> None:
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "tmp"), tmp_path / "c")
    out = _call(runner, 1)
    manifest_path = out.parent / CacheStore.MANIFEST
    store = runner.store
    first = store.manifests.read(manifest_path)
    assert store.manifests.read(manifest_path) is first  # the miss remembered it
    other = ManifestCache()
    assert other.read(manifest_path) is not first
    assert other.read(manifest_path) == first
    replaced = manifest_path.with_suffix(".new")
    replaced.write_text(manifest_path.read_text().replace('"version"', '"version" '))
    os.chmod(manifest_path.parent, 0o755)
    os.replace(replaced, manifest_path)  # a new inode: parsed again
    assert other.read(manifest_path) is not first


def test_a_log_with_no_line_is_an_empty_gzip_file(tmp_path: Path) -> None:
    log = LineLog(tmp_path / "x.gz")
    assert not (tmp_path / "x.gz").exists()
    log.close()
    with gzip.open(tmp_path / "x.gz", "rb") as handle:
        assert handle.read() == b""
    written = LineLog(tmp_path / "y.gz")
    written.write("a")
    written.write("b")
    written.close()
    with gzip.open(tmp_path / "y.gz", "rt") as handle:
        assert handle.read() == "a\nb\n"
    assert written.lines == 2
