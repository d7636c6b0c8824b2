"""Seeds 002/003: publish entries hand goals and tasks to other services over NATS.

A plain nats-py subscriber stands in for the consuming service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dist_helpers import NATS_KEY, wait_for
from nats_security import Spy

from styxcache.scheduler import (
    ConfigError,
    FakeClock,
    NatsSettings,
    Scheduler,
    load_config,
)
from styxcache.scheduler.signing import MessageAuth

HOUR = 3600

SEED_FILE = """\
state_dir: state
nats: {{url: "{url}", subject_prefix: lab, name: sched, key_file: nats.key}}
schedules:
  - name: morning-brief
    interval_seconds: 3600
    dispatch_type: goal
    goal_config:
      instruction: "Summarise yesterday's sessions"
      context: {{source: scheduler, session_id: none}}
      priority: high
  - name: per-session-goal
    interval_seconds: 3600
    dispatch_type: goal
    goal_config:
      instruction: "Review one session"
      context: {{source: scheduler, session_id: none}}
    expand_from: dist_jobs.two_sessions
  - name: per-session-task
    interval_seconds: 3600
    dispatch_type: task
    task_config:
      worker_type: summarizer
      payload: {{style: short, session_id: none}}
      model_tier: local
    expand_from: dist_jobs.two_sessions
{extra}"""


def received(spy: Spy, auth: MessageAuth, prefix: str) -> list[dict[str, Any]]:
    out = []
    for subject, body, headers in spy.received(prefix):
        message = json.loads(body)
        # Signed like every other styxcache message, bound to its run key.
        auth.check(subject, body, headers, run=message["metadata"]["run_key"])
        out.append(message)
    return sorted(
        out,
        key=lambda m: (
            m["metadata"]["scheduled_by"],
            json.dumps(m.get("context", m.get("payload")), sort_keys=True),
        ),
    )


def test_publish_entries_send_goals_and_tasks_with_expand_from_merged(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    nats_url: str,
) -> None:
    config = tmp_path / "schedule.yaml"
    config.write_text(SEED_FILE.format(url=nats_url, extra=""))
    settings = NatsSettings(url=nats_url, subject_prefix="lab", name="sched")
    spy = Spy(settings, ("lab.goals.incoming", "lab.tasks.incoming"))
    auth = MessageAuth(NATS_KEY.encode())
    scheduler = Scheduler.from_yaml(config, clock=clock)
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        wait_for(lambda: len(spy.received("lab.")) >= 5, "five messages")

        goals = received(spy, auth, "lab.goals.incoming")
        assert [(g["metadata"]["scheduled_by"], g["context"]) for g in goals] == [
            ("morning-brief", {"source": "scheduler", "session_id": "none"}),
            ("per-session-goal", {"source": "scheduler", "session_id": "s1"}),
            ("per-session-goal", {"source": "scheduler", "session_id": "s2"}),
        ]
        brief = goals[0]
        assert (brief["instruction"], brief["priority"]) == (
            "Summarise yesterday's sessions",
            "high",
        )
        assert goals[1]["priority"] == "normal"  # the seeds' default

        tasks = received(spy, auth, "lab.tasks.incoming")
        assert [t["payload"] for t in tasks] == [
            {"style": "short", "session_id": "s1"},
            {"style": "short", "session_id": "s2"},
        ]
        assert {(t["worker_type"], t["model_tier"], t["priority"]) for t in tasks} == {
            ("summarizer", "local", "normal")
        }
        assert len({m.get("goal_id") or m["task_id"] for m in goals + tasks}) == 5
        # Each message is a run in the ledger, like any other.
        rows = [r for r in scheduler.ledger.history() if r.item != "*"]
        assert sorted(r.state for r in rows) == ["ok"] * 5

        # Health check on <prefix>.scheduler.<name>, signed both ways.
        body = b"{}"
        answer = spy.request(
            "lab.scheduler.sched", body, auth.sign("lab.scheduler.sched", body)
        )
        assert answer is not None
        auth.check(answer[2], answer[0], answer[1], run="")
        health = json.loads(answer[0])
        assert health["ok"] is True and health["name"] == "sched"
        assert sorted(health["schedules"]) == [
            "morning-brief",
            "per-session-goal",
            "per-session-task",
        ]

        # A reload broadcast on <prefix>.control.reload re-reads the file.
        extra = (
            "  - name: hourly-check\n"
            "    interval_seconds: 60\n"
            "    dispatch_type: task\n"
            "    task_config: {worker_type: checker}\n"
        )
        config.write_text(SEED_FILE.format(url=nats_url, extra=extra))
        spy.publish("lab.control.reload", body, auth.sign("lab.control.reload", body))
        wait_for(lambda: "hourly-check" in scheduler.jobs, "the reload")
    finally:
        spy.close()
        scheduler.close()


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("dispatch_type: goal\n    task_config: {worker_type: x}", "task_config"),
        (
            "dispatch_type: task\n    task_config: {payload: {}}",
            "task_config.worker_type",
        ),
        (
            "dispatch_type: task\n    task_config: {worker_type: x, payload: [1]}",
            "task_config.payload",
        ),
        (
            "dispatch_type: goal\n    goal_config: {instructions: x}",
            "goal_config.instructions",
        ),
        ("dispatch_type: email", "dispatch_type"),
        ("goal_config: {instruction: x}", "goal_config"),
        ("dispatch_type: goal\n    target: dist_jobs:run_item", "target"),
        ("dispatch_type: goal\n    executor: threads", "executor"),
    ],
)
def test_bad_publish_entries_name_the_field(
    tmp_path: Path, dist_env: dict[str, Path], entry: str, field: str
) -> None:
    config = tmp_path / "schedule.yaml"
    config.write_text(
        f"schedules:\n  - name: bad\n    interval_seconds: 60\n    {entry}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert f"schedule 'bad', field '{field}'" in str(caught.value)
