"""Next-fire answers are remembered in an explicit `NextFireMemo`, shared only
by the triggers given the same memo (the entries of one file), never through
module state."""

from __future__ import annotations

import datetime as dt
import pickle
import textwrap
from pathlib import Path

from styxcache.scheduler import CronTrigger, load_config
from styxcache.scheduler.entry_build import build_entry
from styxcache.scheduler.triggers import NextFireMemo

AFTER = dt.datetime(2024, 3, 30, 12, tzinfo=dt.timezone.utc).timestamp()
BERLIN_NIGHTLY = ("0 2 * * *", "Europe/Berlin")  # DST zone: the memoised path


def test_triggers_share_answers_only_through_a_memo_they_are_given() -> None:
    memo = NextFireMemo()
    first = CronTrigger(*BERLIN_NIGHTLY, memo=memo)
    second = CronTrigger(*BERLIN_NIGHTLY, memo=memo)
    alone = CronTrigger(*BERLIN_NIGHTLY)
    answer = first.next_after(AFTER)
    assert len(memo) == 1
    assert second.next_after(AFTER) == answer  # from the memo
    assert len(memo) == 1
    assert alone.next_after(AFTER) == answer
    assert len(memo) == 1  # the lone trigger kept its answer to itself
    # 2024-03-31 02:00 does not exist in Berlin: the first instant after the gap.
    assert answer == dt.datetime(2024, 3, 31, 1, tzinfo=dt.timezone.utc).timestamp()


def test_the_memo_is_bounded_oldest_first() -> None:
    memo = NextFireMemo(size=2)
    trigger = CronTrigger(*BERLIN_NIGHTLY, memo=memo)
    for day in range(3):
        trigger.next_after(AFTER + day * 86_400)
    assert len(memo) == 2
    assert memo.get((trigger.expression, trigger.timezone, AFTER)) == (False, None)


def test_a_trigger_with_a_memo_pickles_without_its_answers() -> None:
    trigger = CronTrigger(*BERLIN_NIGHTLY, memo=NextFireMemo())
    answer = trigger.next_after(AFTER)
    copy = pickle.loads(pickle.dumps(trigger))
    assert copy.next_after(AFTER) == answer


def test_the_entries_of_one_file_share_one_memo(tmp_path: Path) -> None:
    path = tmp_path / "herd.yaml"
    entries = "".join(
        f"""
          - name: e{n}
            cron: "0 2 * * *"
            timezone: Europe/Berlin
            target: os:getcwd
        """
        for n in range(3)
    )
    path.write_text(textwrap.dedent("runner: none\nschedules:") + entries)
    config = load_config(path)
    memos = {id(entry.trigger._memo) for entry in config.entries}  # type: ignore[attr-defined]
    assert len(memos) == 1
    again = load_config(path)
    assert id(again.entries[0].trigger._memo) not in memos  # type: ignore[attr-defined]
    # Entries built one by one get their own memo unless given one.
    raw = {"name": "x", "cron": "0 2 * * *", "target": "os:getcwd"}
    one, two = build_entry(raw), build_entry(raw)
    assert one.trigger._memo is not two.trigger._memo  # type: ignore[attr-defined]
