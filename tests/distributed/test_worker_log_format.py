"""`styxcache worker --log-format`: greppable lines or JSON when not on a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The console script as a module call, so the test needs no PATH entry.
CLI = [sys.executable, "-c", "from styxcache.cli import main; main()"]

SCHEDULE = """\
nats: {url: "nats://127.0.0.1:1"}
schedules:
  - name: a
    target: "os:getcwd"
    cron: "0 1 * * *"
"""


def run_worker(tmp_path: Path, log_format: str) -> list[str]:
    config = tmp_path / "schedule.yaml"
    config.write_text(SCHEDULE)
    # Port 1 refuses at once: the worker logs its warnings, then gives up.
    done = subprocess.run(
        [
            *CLI,
            "worker",
            "--schedule",
            str(config),
            "--insecure-no-signing",
            "--connect-timeout",
            "1",
            "--log-format",
            log_format,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 1
    assert "no NATS server answered" in done.stderr
    return [line for line in done.stderr.splitlines() if "styxcache." in line]


def test_text_records_are_one_line_each_with_iso_times(tmp_path: Path) -> None:
    lines = run_worker(tmp_path, "text")
    assert any("NOT signed" in line for line in lines)
    for line in lines:
        assert re.match(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \w+ ", line
        )


def test_json_records_parse(tmp_path: Path) -> None:
    lines = [line for line in run_worker(tmp_path, "json") if line.startswith("{")]
    assert lines
    records = [json.loads(line) for line in lines]
    assert any("NOT signed" in r.get("message", r.get("msg", "")) for r in records)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_worker_help_lists_the_switch(fmt: str) -> None:
    done = subprocess.run(
        [*CLI, "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--log-format" in done.stdout and fmt in done.stdout
