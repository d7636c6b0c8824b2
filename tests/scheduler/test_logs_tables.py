"""Logs people can grep and tables that survive a pipe."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from styxcache.cli._logging import configure_logging
from styxcache.cli._tables import print_table
from styxcache.cli.app import main


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_records_are_one_line_with_iso_times(restore_logging: None) -> None:
    stream = io.StringIO()  # not a terminal
    configure_logging("INFO", "auto", stream)
    log = logging.getLogger("styxcache.scheduler.test")
    log.info("run %s ok", "a@1")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("run b failed:\nsecond line")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    stamp, level, name, *_ = lines[0].split(" ")
    assert dt.datetime.fromisoformat(stamp).tzinfo is not None
    assert (level, name) == ("INFO", "styxcache.scheduler.test:")
    assert lines[0].endswith("run a@1 ok")
    assert "\\nsecond line" in lines[1] and "ValueError: boom" in lines[1]
    assert "[" not in lines[0].split(" ")[0]  # no rich "[11/29/26 ...]" stamp


def test_json_records(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    logging.getLogger("styxcache.x").warning("careful")
    record = json.loads(stream.getvalue())
    assert (record["level"], record["logger"], record["message"]) == (
        "WARNING",
        "styxcache.x",
        "careful",
    )
    assert dt.datetime.fromisoformat(record["time"]).tzinfo is not None


def test_piped_tables_are_tab_separated_and_unwrapped() -> None:
    out = io.StringIO()
    long = "x" * 300
    print_table("t", ("a", "b"), [(long, "1\n2")], file=out)
    assert out.getvalue().splitlines() == ["a\tb", f"{long}\t1; 2"]


def test_schedule_run_logs_plain_lines_when_piped(
    write_yaml: Callable[[str], Path], restore_logging: None
) -> None:
    path = write_yaml(
        """\
        state_dir: state
        runner: none
        schedules:
          - {name: tick, interval_seconds: 3600, target: "sched_jobs:record"}
        """
    )
    result = CliRunner().invoke(
        main,
        ["schedule", "run", str(path), "--max-cycles", "1", "--log-format", "text"],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line]
    assert any("scheduler started with 1 schedule(s)" in line for line in lines)
    for line in lines:
        dt.datetime.fromisoformat(
            line.split(" ", 1)[0]
        )  # every line starts with a time
