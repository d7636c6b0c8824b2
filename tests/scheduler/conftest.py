"""Fixtures for the scheduler tests: a fake clock, an inline scheduler, YAML files."""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The PostgreSQL server fixtures of the run-store tests.
from pg_fixtures import pg_schema, pg_server  # noqa: F401

from styxcache.scheduler import FakeClock, InlineExecutor, Scheduler


def _root_conftest() -> Any:
    # Every conftest here is imported as the module "conftest", so tests that
    # do `from conftest import require` may get this file: re-export the
    # shared helpers of tests/conftest.py.
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_styxcache_tests_root_sched", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
require: Callable[[bool, str], None] = _root.require
run_tool = _root.run_tool
IN_CI: bool = _root.IN_CI

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def make_scheduler(
    clock: FakeClock, tmp_path: Path
) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(**kwargs: object) -> Scheduler:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("executor", InlineExecutor())
        kwargs.setdefault("state_dir", tmp_path / "state")
        kwargs.setdefault("logger", logging.getLogger("test.scheduler"))
        scheduler = Scheduler(**kwargs)  # type: ignore[arg-type]
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str], Path]:
    path = tmp_path / "schedule.yaml"

    def write(text: str) -> Path:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _default_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # File entries without `runner:` go through a default cache; keep it out
    # of the user's real cache folder.
    monkeypatch.setenv("STYXCACHE_DIR", str(tmp_path / "default-cache"))
