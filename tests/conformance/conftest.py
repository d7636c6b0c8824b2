"""Session fixtures of the conformance suite and its coverage table."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conformance_harness import RESULTS, Session, fast_tmp, quiet_local_runner


def _load_root_conftest() -> Any:
    # tests/ has no __init__.py: both conftest files are imported as the module
    # "conftest", and a test's `from conftest import require` sees whichever
    # came last. Re-exporting the root's helpers makes either one work.
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_styxcache_tests_root", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_root = _load_root_conftest()
require: Callable[[bool, str], None] = _root.require
run_tool = _root.run_tool
IN_CI: bool = _root.IN_CI


@pytest.fixture(scope="module")
def conformance_session() -> Iterator[Session]:
    root = Path(tempfile.mkdtemp(prefix="styxcache-conformance-", dir=fast_tmp()))
    # The cache warns once per tool it cannot cache; the suite checks the
    # behaviour itself, and thousands of captured records only cost time.
    # Module scope: the levels are restored before any other test module runs.
    cache_log = logging.getLogger("styxcache")
    level = cache_log.level
    cache_log.setLevel(logging.ERROR)
    try:
        with quiet_local_runner():
            yield Session(root / "session")
    finally:
        cache_log.setLevel(level)
        shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    from report import behaviour_table, table

    terminalreporter.section("NiWrap conformance coverage")
    terminalreporter.write_line(table(RESULTS))
    terminalreporter.write_line("")
    terminalreporter.write_line(behaviour_table(RESULTS))
    seconds = sum(r.seconds for r in RESULTS)
    terminalreporter.write_line(f"{len(RESULTS)} wrappers checked in {seconds:.0f} s")
