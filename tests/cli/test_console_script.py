"""The installed `styxcache` console script, run as users run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from clihelpers import make_runner, write_block

from conftest import require


def _script() -> str:
    found = shutil.which("styxcache", path=str(Path(sys.executable).parent))
    require(found is not None, "the styxcache console script (pip install -e .)")
    assert found is not None
    return found


def run(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_script(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_script_round_trip(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    runner = make_runner(cache, tmp_path / "scratch")
    write_block(runner, source, size=100)
    write_block(runner, source, size=100)
    env = {"STYXCACHE_DIR": str(cache)}
    stats = run("stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["total"]["hits"] == 1
    listing = run("ls", env=env)
    assert listing.returncode == 0 and "demo/write" in listing.stdout
    archive = tmp_path / "out.tar.gz"
    assert run("export", str(archive), env=env).returncode == 0
    other = run("import", "--cache-dir", str(tmp_path / "other"), str(archive))
    assert other.returncode == 0 and "Imported 1 entries" in other.stdout
    assert (
        run("verify", "--full", "--cache-dir", str(tmp_path / "other")).returncode == 0
    )


def test_script_exit_codes_and_help(tmp_path: Path) -> None:
    missing = run("stats", env={"STYXCACHE_DIR": ""})
    assert missing.returncode == 2
    assert "--cache-dir" in missing.stderr and "STYXCACHE_DIR" in missing.stderr
    bad = run("gc", "--cache-dir", str(tmp_path), "--max-size", "big")
    assert bad.returncode == 2 and "not a size" in bad.stderr
    for command in (
        "stats",
        "ls",
        "show",
        "explain",
        "verify",
        "gc",
        "clear",
        "export",
        "import",
    ):
        helped = run(command, "--help")
        assert helped.returncode == 0, command
        assert "Examples:" in helped.stdout, command
