"""`Scheduler(settings=SchedulerSettings(...))` next to the old keywords."""

from __future__ import annotations

from pathlib import Path

import pytest

from styxcache.scheduler import (
    FakeClock,
    InlineExecutor,
    Ledger,
    Scheduler,
    SchedulerSettings,
)


def test_settings_object_and_keywords_build_the_same_scheduler(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    seen: list[str] = []
    settings = SchedulerSettings(
        clock=clock,
        executor=InlineExecutor(),
        state_dir=tmp_path,
        on_run=lambda record: seen.append(record.state),
    )
    # A keyword given next to `settings` wins over its field.
    scheduler = Scheduler(settings=settings, max_sleep_seconds=5.0)
    try:
        assert scheduler.max_sleep_seconds == 5.0
        assert scheduler.clock is clock
        scheduler.register_task("tick", 60.0, lambda: None)
        scheduler.run_pending()
        clock.advance(60.0)
        scheduler.run_pending()
        assert seen == ["ok"]
        assert (tmp_path / "ledger.sqlite3").exists()
    finally:
        scheduler.close()


def test_bad_settings_are_named() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*bogus"):
        Scheduler(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="store= or ledger="):
        Scheduler(
            settings=SchedulerSettings(store=Ledger(":memory:")),
            ledger=Ledger(":memory:"),
        )
    with pytest.raises(ValueError, match="max_sleep_seconds"):
        SchedulerSettings(max_sleep_seconds=0)
