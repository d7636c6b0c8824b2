"""Operator controls: trigger now, pause and resume (persisted in the ledger)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import sched_jobs
from click.testing import CliRunner

from styxcache.cli.app import main
from styxcache.scheduler import FakeClock, InlineExecutor, Scheduler


def test_trigger_runs_now_and_is_recorded(clock: FakeClock, tmp_path: Path) -> None:
    scheduler = Scheduler(clock=clock, executor=InlineExecutor(), state_dir=tmp_path)
    ran: list[int] = []
    scheduler.register_task("nightly", "0 2 * * *", lambda: ran.append(1))
    records = scheduler.trigger("nightly")
    assert ran == [1]
    (row,) = scheduler.ledger.history(entry="nightly")
    assert row.state == "ok" and row.reason == "triggered by hand"
    assert row.key == records[0].key and row.nominal == clock.time()
    scheduler.close()


def test_trigger_with_items_runs_one_run_each(clock: FakeClock, tmp_path: Path) -> None:
    scheduler = Scheduler(clock=clock, executor=InlineExecutor(), state_dir=tmp_path)
    seen: list[str] = []
    scheduler.register_task(
        "subjects",
        3600,
        lambda ctx: seen.append(ctx["subject"]),
        pass_context=True,
        expand_from=lambda: [{"subject": "s1"}, {"subject": "s2"}],
    )
    scheduler.trigger("subjects", items=[{"subject": "s9"}])
    assert seen == ["s9"]
    scheduler.trigger("subjects")  # expand_from as a fire would
    assert seen == ["s9", "s1", "s2"]
    scheduler.close()


def test_pause_is_honoured_by_a_running_scheduler_and_persisted(
    clock: FakeClock, tmp_path: Path
) -> None:
    ran: list[int] = []
    running = Scheduler(clock=clock, executor=InlineExecutor(), state_dir=tmp_path)
    running.register_task("tick", 60, lambda: ran.append(1))
    running.run_pending()
    clock.advance(60)
    running.run_pending()
    assert ran == [1]
    # Another process (the CLI) pauses it through the shared ledger file.
    operator = Scheduler(clock=clock, executor=InlineExecutor(), state_dir=tmp_path)
    operator.register_task("tick", 60, lambda: None)
    operator.pause("tick")
    operator.close()
    clock.advance(60)
    running.run_pending()
    assert ran == [1]
    (skipped,) = running.ledger.history(entry="tick", state="skipped")
    assert "paused by an operator" in skipped.reason
    running.resume("tick")
    clock.advance(60)
    running.run_pending()
    assert ran == [1, 1]
    running.close()


def test_cli_trigger_pause_resume(
    write_yaml: Callable[[str], Path], tmp_path: Path
) -> None:
    sched_jobs.CALLS.clear()
    path = write_yaml(
        f"""\
        state_dir: {tmp_path / "state"}
        runner: none
        schedules:
          - {{name: nightly, cron: "0 2 * * *", target: "sched_jobs:record"}}
        """
    )
    cli = CliRunner()
    result = cli.invoke(main, ["schedule", "trigger", str(path), "nightly", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [r["state"] for r in doc["runs"]] == ["ok"]
    assert len(sched_jobs.CALLS) == 1
    result = cli.invoke(
        main,
        ["schedule", "trigger", str(path), "nightly", "--item", '{"subject": "x"}'],
    )
    assert result.exit_code == 0, result.output
    assert sched_jobs.CALLS[-1].item == {"subject": "x"}
    history = cli.invoke(main, ["schedule", "history", str(path), "--json"])
    assert history.exit_code == 0, history.output
    runs = json.loads(history.output)["runs"]
    assert {r["reason"] for r in runs} == {"triggered by hand"}
    assert all(r["started_iso"] and r["ended_iso"] for r in runs)
    for command in ("pause", "resume"):
        result = cli.invoke(main, ["schedule", command, str(path), "nightly", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["paused"] is (command == "pause")
    missing = cli.invoke(main, ["schedule", "pause", str(path), "nope"])
    assert missing.exit_code != 0 and "nope" in missing.output
    assert threading.active_count() >= 1
