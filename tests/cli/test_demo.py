"""`styxcache demo`, the README's main job, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from conftest import require
from styxcache.cli import main
from styxcache.demo.mrtrix import missing_requirements


def _check_two_runs(report: dict[str, list[dict[str, object]]], steps: int) -> None:
    first, second = report["first"], report["second"]
    assert len(first) == len(second) == steps
    assert {s["outcome"] for s in first} == {"ran"}
    assert {s["outcome"] for s in second} == {"hit"}
    # The hit replays exactly what the tool printed.
    assert [s["stdout"] for s in first] == [s["stdout"] for s in second]


def test_builtin_demo_second_run_is_all_hits(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--builtin", "--subjects", "2", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["pipeline"] == "builtin"
    _check_two_runs(report, steps=8)


def test_demo_keeps_a_given_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "demo-cache"
    args = ["demo", "--builtin", "--subjects", "1", "--cache-dir", str(cache), "--json"]
    assert CliRunner().invoke(main, args).exit_code == 0
    again = json.loads(CliRunner().invoke(main, args).output)
    # A kept cache serves even the first run of the next invocation.
    assert {s["outcome"] for s in again["first"]} == {"hit"}
    assert any(cache.iterdir())


def test_demo_rejects_bad_subject_count() -> None:
    result = CliRunner().invoke(main, ["demo", "--subjects", "0"])
    assert result.exit_code == 2
    assert "--subjects" in result.output


def test_console_script_runs_the_mrtrix_pipeline_when_installed() -> None:
    require(
        not missing_requirements(), f"MRtrix3 pipeline needs: {missing_requirements()}"
    )
    script = shutil.which("styxcache", path=str(Path(sys.executable).parent))
    assert script is not None
    done = subprocess.run(
        [script, "demo", "--subjects", "2", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["pipeline"] == "mrtrix"
    _check_two_runs(report, steps=8)
