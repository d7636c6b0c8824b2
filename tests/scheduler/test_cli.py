"""`styxcache schedule validate | list | history | run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from click.testing import CliRunner

from styxcache.cli import main
from styxcache.scheduler import FakeClock, InlineExecutor, Scheduler

CONFIG = """
state_dir: state
executor: inline
schedules:
  - name: nightly
    cron: "30 2 * * *"
    timezone: Europe/Berlin
    target: sched_jobs:fake_pipeline
  - name: paused
    interval_seconds: 60
    target: sched_jobs:record
    enabled: false
"""


def test_validate_ok_and_error(write_yaml: Callable[[str], Path]) -> None:
    runner = CliRunner()
    path = write_yaml(CONFIG)
    result = runner.invoke(main, ["schedule", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK, 2 schedule(s)" in result.output
    write_yaml(CONFIG.replace("30 2 * * *", "30 2 * *"))
    result = runner.invoke(main, ["schedule", "validate", str(path)])
    assert result.exit_code == 1
    assert "schedule 'nightly', field 'cron'" in result.output


def test_list_json_shows_next_fires(
    write_yaml: Callable[[str], Path], tmp_path: Path
) -> None:
    path = write_yaml(CONFIG)
    result = CliRunner().invoke(
        main, ["schedule", "list", str(path), "-n", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["schedules"]}
    assert len(rows["nightly"]["next"]) == 2
    assert all(t.endswith(("+01:00", "+02:00")) for t in rows["nightly"]["next"])
    assert rows["paused"]["next"] == [] and rows["paused"]["enabled"] is False
    assert not (tmp_path / "state").exists()  # list writes nothing
    table = CliRunner().invoke(main, ["schedule", "list", str(path)])
    assert table.exit_code == 0 and "nightly" in table.output


def test_history_reads_the_ledger(write_yaml: Callable[[str], Path]) -> None:
    path = write_yaml(CONFIG)
    runner = CliRunner()
    missing = runner.invoke(main, ["schedule", "history", str(path)])
    assert missing.exit_code == 1 and "no ledger" in missing.output
    clock = FakeClock()
    scheduler = Scheduler.from_yaml(path, clock=clock, executor=InlineExecutor())
    scheduler.run_pending()
    clock.advance(86400)
    scheduler.run_pending()
    scheduler.close()
    result = runner.invoke(main, ["schedule", "history", str(path), "--json"])
    assert result.exit_code == 0, result.output
    # One JSON document (the convention of every --json), runs under "runs".
    (row,) = json.loads(result.output)["runs"]
    assert (row["entry"], row["state"], row["hits"], row["misses"]) == (
        "nightly",
        "ok",
        1,
        2,
    )
    table = runner.invoke(
        main, ["schedule", "history", str(path), "--entry", "nightly"]
    )
    assert table.exit_code == 0 and "nightly" in table.output
    # Piped (not a terminal): a header and one tab-separated line per run,
    # never wrapped, with the real start and the lateness.
    header, line = table.output.splitlines()
    columns = dict(zip(header.split("\t"), line.split("\t"), strict=True))
    assert columns["schedule"] == "nightly" and columns["state"] == "ok"
    assert "T" in columns["started"] and columns["late s"]


def test_run_starts_and_stops(
    write_yaml: Callable[[str], Path], tmp_path: Path
) -> None:
    path = write_yaml(CONFIG)
    result = CliRunner().invoke(
        main, ["schedule", "run", str(path), "--max-cycles", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "state" / "ledger.sqlite3").exists()


def test_run_rejects_invalid_config(
    write_yaml: Callable[[str], Path], tmp_path: Path
) -> None:
    path = write_yaml(CONFIG.replace("catchup", "x") + "    overlap: never\n")
    result = CliRunner().invoke(main, ["schedule", "run", str(path)])
    assert result.exit_code == 1 and "field 'overlap'" in result.output
    assert not (tmp_path / "state").exists()


LAUNCH = "from styxcache.cli import main; main()"


def _read_until(stream: IO[str], needle: str, seen: list[str]) -> None:
    for line in stream:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"{needle!r} never appeared:\n{''.join(seen)}")


def test_run_service_reloads_on_sighup_and_stops_on_sigterm(
    write_yaml: Callable[[str], Path], tmp_path: Path
) -> None:
    """The real command in a real process: signals drive it, no timing involved."""
    path = write_yaml(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "schedule", "run", str(path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        _read_until(proc.stderr, "scheduler started with 2 schedule(s)", seen)
        write_yaml(CONFIG.replace("name: paused", "name: renamed"))
        proc.send_signal(signal.SIGHUP)
        _read_until(proc.stderr, "1 added, 0 changed, 1 removed", seen)
        proc.send_signal(signal.SIGTERM)
        _read_until(proc.stderr, "session ended (shutdown requested)", seen)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
