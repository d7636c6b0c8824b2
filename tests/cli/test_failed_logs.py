"""`styxcache failed` and `styxcache logs` on a real cache (issue 13, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from styxdefs import LocalRunner, Metadata, StyxRuntimeError

from styxcache import CachingRunner
from styxcache.cli import main

TOOL = Metadata(id="talk", name="Talk", package="coreutils")


def _run(runner: CachingRunner, word: str, status: int) -> None:
    execution = runner.start_execution(TOOL)
    execution.params({"word": word, "status": status})
    execution.output_file(".")
    execution.run(
        ["sh", "-c", f"echo out-{word}; echo err-{word} >&2; exit {status}"],
        handle_stdout=lambda _line: None,
        handle_stderr=lambda _line: None,
    )


def test_failed_lists_and_cleans_and_logs_print(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "styx"), cache)
    _run(runner, "ok", 0)
    with pytest.raises(StyxRuntimeError):
        _run(runner, "bad", 3)
    cli = CliRunner()

    listed = cli.invoke(main, ["failed", "--cache-dir", str(cache), "--json"])
    assert listed.exit_code == 0, listed.output
    (run,) = json.loads(listed.output)["failed"]
    assert run["bytes"] > 0

    failed_logs = cli.invoke(main, ["logs", run["name"], "--cache-dir", str(cache)])
    assert failed_logs.exit_code == 0, failed_logs.stderr
    assert failed_logs.stdout.splitlines() == ["out-bad"]
    assert failed_logs.stderr.splitlines() == ["err-bad"]

    (key,) = [
        e["key"]
        for e in json.loads(
            cli.invoke(main, ["ls", "--cache-dir", str(cache), "--json"]).output
        )["entries"]
    ]
    entry_logs = cli.invoke(
        main, ["logs", key[:10], "--cache-dir", str(cache), "--json"]
    )
    assert entry_logs.exit_code == 0, entry_logs.output
    doc = json.loads(entry_logs.output)
    assert (doc["stdout"], doc["stderr"]) == (["out-ok"], ["err-ok"])

    kept = cli.invoke(
        main, ["failed", "--clean", "--older-than", "1", "--cache-dir", str(cache)]
    )
    assert kept.exit_code == 0 and "removed 0" in kept.output
    cleaned = cli.invoke(main, ["failed", "--clean", "--cache-dir", str(cache)])
    assert cleaned.exit_code == 0 and "removed 1" in cleaned.output
    empty = cli.invoke(main, ["failed", "--cache-dir", str(cache)])
    assert "no failed runs" in empty.output


def test_logs_of_an_unknown_key_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    result = CliRunner().invoke(
        main, ["logs", "abcdef12", "--cache-dir", str(tmp_path / "cache")]
    )
    assert result.exit_code == 2
