"""The scheduled-pipeline example: real LocalRunner, real CachingRunner, real tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import require
from styxcache.scheduler import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_schedule_validates() -> None:
    config = load_config(ROOT / "examples" / "schedule.yaml")
    assert {e.name for e in config.entries} == {"subjects", "weekly-rebuild"}


def test_example_second_fire_hits_the_cache(tmp_path: Path) -> None:
    require(bool(shutil.which("sort") and shutil.which("awk")), "needs sort and awk")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "scheduled_pipeline.py"),
            "--fake-clock",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "first fire: 0 hits, 4 misses" in result.stdout
    assert "second fire: 4 hits, 0 misses" in result.stdout
