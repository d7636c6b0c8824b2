"""`styxcache demo` reports honest numbers (issue 13, item 9)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from styxcache.cli import main
from styxcache.demo.command import summarize
from styxcache.demo.report import PipelineReport, StepReport


def _report(*steps: tuple[str, float]) -> PipelineReport:
    made = tuple(
        StepReport(
            subject="sub-01",
            step=f"s{i}",
            outcome=outcome,  # type: ignore[arg-type]
            event="hit" if outcome == "hit" else "miss",
            seconds=seconds,
            outputs={},
            stdout=(),
        )
        for i, (outcome, seconds) in enumerate(steps)
    )
    return PipelineReport(steps=made, seconds=sum(s for _, s in steps))


def test_speedup_compares_only_the_steps_that_ran() -> None:
    first = _report(("ran", 0.4), ("hit", 0.01))
    second = _report(("hit", 0.02), ("hit", 0.01))
    text = summarize(first, second)
    assert "2/2 steps served from the cache" in text
    assert "already had 1 step(s) from the cache" in text
    assert "0.400 s of tool time then and 0.020 s now: 20x less" in text


def test_a_first_run_served_from_the_cache_is_said_so() -> None:
    first = _report(("hit", 0.01), ("hit", 0.01))
    text = summarize(first, _report(("hit", 0.01), ("hit", 0.01)))
    assert "already served from the cache" in text and "x less" not in text


def test_kept_cache_dir_says_the_first_run_was_cached(tmp_path: Path) -> None:
    args = ["demo", "--builtin", "--subjects", "1", "--cache-dir", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "already served from the cache" in " ".join(again.output.split())
    report = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    assert report["first_hits"] == 4
    assert report["first_tool_seconds"] == sum(s["seconds"] for s in report["first"])
