"""YAML validation (errors name entry and field) and rule 7 (reload as a diff)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import sched_jobs

from styxcache.scheduler import (
    ConfigError,
    FakeClock,
    InlineExecutor,
    Scheduler,
    load_config,
)

BASE = """
state_dir: state
executor: inline
schedules:
  - name: hourly
    interval_seconds: 3600
    target: sched_jobs:record
  - name: nightly
    cron: "0 2 * * *"
    timezone: Europe/Berlin
    target: sched_jobs:record
    expand_from: sched_jobs:list_subjects
    cache: refresh
    catchup: all
    overlap: queue
    jitter_seconds: 30
    enabled: true
"""


@pytest.fixture(autouse=True)
def _reset() -> None:
    sched_jobs.CALLS.clear()
    sched_jobs.ITEMS[:] = [{"subject": "s1"}, {"subject": "s2"}]


def test_valid_file_loads(write_yaml: Callable[[str], Path]) -> None:
    config = load_config(write_yaml(BASE))
    names = [e.name for e in config.entries]
    assert names == ["hourly", "nightly"]
    nightly = config.entries[1]
    assert nightly.trigger.describe() == "cron '0 2 * * *' in Europe/Berlin"
    assert (nightly.cache.value, nightly.catchup, nightly.overlap) == (
        "refresh",
        "all",
        "queue",
    )
    assert config.state_dir.name == "state" and config.state_dir.is_absolute()
    assert config.executor.kind == "inline"


@pytest.mark.parametrize(
    ("fragment", "entry", "field", "message"),
    [
        ("    colour: blue\n", "hourly", "colour", "unknown key"),
        ("    catchup: sometimes\n", "hourly", "catchup", "one of latest, all, none"),
        ("    overlap: maybe\n", "hourly", "overlap", "one of forbid, allow, queue"),
        ("    cache: cold\n", "hourly", "cache", "normal, refresh, bypass"),
        ("    jitter_seconds: -1\n", "hourly", "jitter_seconds", ">= 0"),
        ("    max_fanout: 0\n", "hourly", "max_fanout", ">= 1"),
        ("    enabled: yes please\n", "hourly", "enabled", "true or false"),
        ("    timezone: Mars/Base\n", "hourly", "timezone", None),
        ("    cron: '* * * * *'\n", "hourly", "cron", "exactly one of"),
        ("    expand_from: nomodule_xyz:f\n", "hourly", "expand_from", "cannot import"),
        ("    expand_from: sched_jobs:nope\n", "hourly", "expand_from", "no attribute"),
        ("    expand_from: not a ref\n", "hourly", "expand_from", "module:function"),
    ],
)
def test_invalid_values_name_entry_and_field(
    write_yaml: Callable[[str], Path],
    fragment: str,
    entry: str,
    field: str,
    message: str | None,
) -> None:
    text = BASE.replace(
        "    target: sched_jobs:record\n",
        "    target: sched_jobs:record\n" + fragment,
        1,
    )
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(text))
    assert info.value.entry == entry
    assert info.value.field == field
    assert f"schedule '{entry}', field '{field}'" in str(info.value)
    if message:
        assert message in str(info.value)


def test_timezone_error_for_cron_entry(write_yaml: Callable[[str], Path]) -> None:
    with pytest.raises(
        ConfigError, match=r"schedule 'nightly', field 'timezone': unknown time zone"
    ):
        load_config(write_yaml(BASE.replace("Europe/Berlin", "Europe/Atlantis")))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("schedules: [", "not valid YAML"),
        ("- just a list", "mapping with a 'schedules' list"),
        ("schedules: {}", "field 'schedules': must be a list"),
        ("schedules: []\nextra: 1", "unknown top-level key"),
        ("schedules: [{name: a, interval_seconds: 5}]", "field 'target': is required"),
        (
            "schedules: [{name: 'a b', interval_seconds: 5, target: 'sched_jobs:record'}]",
            "field 'name'",
        ),
        (
            "schedules: [{interval_seconds: 5, target: 'sched_jobs:record'}]",
            "schedule '#1'",
        ),
        (
            "schedules:\n- {name: a, interval_seconds: 5, target: 'sched_jobs:record'}\n"
            "- {name: a, interval_seconds: 6, target: 'sched_jobs:record'}",
            "schedule 'a', field 'name': duplicate",
        ),
        ("executor: {kind: gpu}\nschedules: []", "field 'kind'"),
        ("defaults: {target: x}\nschedules: []", "cannot set 'target'"),
        (
            "schedules: [{name: a, interval_seconds: '5', target: 'sched_jobs:record'}]",
            "field 'interval_seconds'",
        ),
        (
            "schedules: [{name: a, interval_seconds: 5, anchor: 'noon', target: 'sched_jobs:record'}]",
            "field 'anchor'",
        ),
    ],
)
def test_invalid_files(
    write_yaml: Callable[[str], Path], text: str, message: str
) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
    ):
        load_config(write_yaml(text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_invalid_file_writes_nothing(
    write_yaml: Callable[[str], Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError):
        Scheduler.from_yaml(
            write_yaml(BASE.replace("catchup: all", "catchup: sometimes"))
        )
    assert not (tmp_path / "state").exists()


def test_defaults_apply(write_yaml: Callable[[str], Path]) -> None:
    config = load_config(
        write_yaml(
            "defaults: {timezone: America/New_York, overlap: allow}\n"
            "schedules: [{name: a, cron: '0 1 * * *', target: 'sched_jobs:record'}]"
        )
    )
    (entry,) = config.entries
    assert entry.overlap == "allow" and "America/New_York" in entry.trigger.describe()


def make_from(path: Path, clock: FakeClock) -> Scheduler:
    return Scheduler.from_yaml(path, clock=clock, executor=InlineExecutor())


def test_reload_applies_a_diff(
    write_yaml: Callable[[str], Path],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_yaml(BASE)
    scheduler = make_from(path, clock)
    scheduler.run_pending()
    clock.advance(3600)
    scheduler.run_pending()
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 1}
    # Change the hourly trigger, add an entry, remove nightly.
    write_yaml(
        """
        state_dir: state
        executor: inline
        schedules:
          - name: hourly
            interval_seconds: 1800
            target: sched_jobs:record
          - name: fresh
            interval_seconds: 600
            target: sched_jobs:record
            catchup: all
        """
    )
    with caplog.at_level(logging.INFO):
        assert scheduler.reload()
    assert "1 added, 1 changed, 1 removed, 0 unchanged" in caplog.text
    assert set(scheduler.jobs) == {"hourly", "fresh"}
    scheduler.run_pending()
    # History kept, and the current period is not rerun.
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 1}
    assert scheduler.ledger.count_by_state("fresh") == {}
    clock.advance(1800)
    scheduler.run_pending()
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 2}
    assert scheduler.ledger.count_by_state("fresh") == {"ok": 3}
    scheduler.close()


def test_unchanged_entries_keep_state(
    write_yaml: Callable[[str], Path], clock: FakeClock
) -> None:
    path = write_yaml(BASE)
    scheduler = make_from(path, clock)
    scheduler.run_pending()
    clock.advance(3600)
    scheduler.run_pending()
    before = scheduler.next_fire_times(1)
    assert scheduler.reload()
    assert scheduler.next_fire_times(1) == before
    scheduler.run_pending()
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 1}
    scheduler.close()


def test_invalid_reload_keeps_old_config(
    write_yaml: Callable[[str], Path],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_yaml(BASE)
    scheduler = make_from(path, clock)
    write_yaml(BASE.replace("interval_seconds: 3600", "interval_seconds: -3"))
    with caplog.at_level(logging.ERROR):
        assert not scheduler.reload()
    assert "keeping the old schedules" in caplog.text
    assert "field 'interval_seconds'" in caplog.text
    assert set(scheduler.jobs) == {"hourly", "nightly"}
    path.write_text("schedules: [", encoding="utf-8")
    assert not scheduler.reload()
    assert set(scheduler.jobs) == {"hourly", "nightly"}
    scheduler.close()


def test_reload_needs_a_file(make_scheduler: Callable[..., Scheduler]) -> None:
    with pytest.raises(RuntimeError, match="from_yaml"):
        make_scheduler().reload()


def test_removed_entry_lets_running_work_finish(
    write_yaml: Callable[[str], Path], clock: FakeClock
) -> None:
    path = write_yaml(BASE)
    scheduler = make_from(path, clock)
    scheduler.run_pending()

    def remove_while_running(ctx: object) -> None:
        write_yaml(
            BASE.split("  - name: nightly", maxsplit=1)[0].replace(
                "name: hourly", "name: other"
            )
        )
        assert scheduler.reload()
        sched_jobs.CALLS.append(ctx)

    scheduler.register_task(
        "hourly", 3600, remove_while_running, replace=True, pass_context=True
    )
    clock.advance(3600)
    scheduler.run_pending()
    assert "hourly" not in scheduler.jobs
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 1}
    scheduler.close()


def test_sighup_reloads(write_yaml: Callable[[str], Path], clock: FakeClock) -> None:
    path = write_yaml(BASE)
    scheduler = make_from(path, clock)

    def routine(s: Scheduler) -> None:
        if s.cycle == 0:
            write_yaml(BASE.replace("name: hourly", "name: renamed"))
            os.kill(os.getpid(), signal.SIGHUP)

    scheduler.routine = routine
    scheduler.wait_ms = 1000
    scheduler.run(max_cycles=2, handle_signals=True)
    assert "renamed" in scheduler.jobs and "hourly" not in scheduler.jobs
    scheduler.close()


def test_disable_then_enable_by_reload_starts_from_enable_time(
    write_yaml: Callable[[str], Path], clock: FakeClock
) -> None:
    path = write_yaml(
        BASE.replace("interval_seconds: 3600", "interval_seconds: 60\n    catchup: all")
    )
    scheduler = make_from(path, clock)
    scheduler.run_pending()
    clock.advance(60)
    scheduler.run_pending()
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 1}
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace("catchup: all", "catchup: all\n    enabled: false"),
        encoding="utf-8",
    )
    assert scheduler.reload()
    scheduler.run_pending()
    clock.advance(600)  # ten fires while disabled
    scheduler.run_pending()
    path.write_text(text, encoding="utf-8")
    assert scheduler.reload()
    scheduler.run_pending()
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 1}
    clock.advance(60)
    scheduler.run_pending()
    assert scheduler.ledger.count_by_state("hourly") == {"ok": 2}
    scheduler.close()


def test_disabled_state_survives_a_restart(
    write_yaml: Callable[[str], Path], clock: FakeClock
) -> None:
    on = BASE.replace(
        "interval_seconds: 3600", "interval_seconds: 60\n    catchup: all"
    )
    off = on.replace("catchup: all", "catchup: all\n    enabled: false")
    path = write_yaml(on)
    first = make_from(path, clock)
    first.run_pending()
    first.close()
    write_yaml(off)
    second = make_from(path, clock)
    second.run_pending()
    second.close()
    clock.advance(600)
    write_yaml(on)
    third = make_from(path, clock)
    third.run_pending()
    assert third.ledger.count_by_state("hourly") == {}  # nothing from the disabled time
    third.close()


def test_reload_warns_about_settings_that_need_a_restart(
    write_yaml: Callable[[str], Path],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_yaml(BASE)
    scheduler = make_from(path, clock)
    write_yaml(
        BASE.replace("executor: inline", "executor: {kind: threads, max_workers: 3}")
    )
    with caplog.at_level(logging.WARNING):
        assert scheduler.reload()
    assert "reload: executor changed" in caplog.text
    assert "applies after a restart" in caplog.text
    scheduler.close()
