"""The run-store contract: records, the `RunStore` protocol and the shared rules.

Everything a store implementation needs and that does not depend on where
rows are kept lives here, so the SQLite `Ledger` and the `PostgresStore`
differ only in how they talk to their database: the rule that decides what
an entry's watermark becomes when a schedule is (re)registered, the filter
of `history`, and the mapping between rows and `RunRecord`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "MUTABLE_FIELDS",
    "RUN_FIELDS",
    "RUN_STATES",
    "EntryState",
    "RunRecord",
    "RunState",
    "RunStore",
    "history_filters",
    "next_entry_state",
    "record_from_row",
    "run_key",
]

RunState = Literal[
    "planned",
    "running",
    "ok",
    "failed",
    "skipped",
    "coalesced",
    "missed",
    "interrupted",
]
RUN_STATES: tuple[str, ...] = typing.get_args(RunState)


def run_key(entry: str, nominal: float, item: str = "") -> str:
    """Build the identity of one fire (or one fan-out item of it).

    Args:
        entry: Schedule name.
        nominal: Nominal fire instant, Unix seconds.
        item: Fan-out item key; `""` for a plain run, `"*"` for the fire
            that expands into items.

    Returns:
        `entry@<nominal with microseconds>` plus `#item` when given.
    """
    base = f"{entry}@{nominal:.6f}"
    return f"{base}#{item}" if item else base


@dataclasses.dataclass(slots=True)
class RunRecord:
    """One stored run.

    Attributes:
        key: Run key (see `run_key`).
        entry: Schedule name.
        nominal: Nominal fire instant (Unix seconds).
        item: Fan-out item key (`""` if none, `"*"` for the expanding fire).
        state: One of `RUN_STATES`.
        reason: Why it was skipped, coalesced, missed or interrupted.
        due: Nominal time plus jitter: when it was meant to start.
        started: When it started (Unix seconds).
        ended: When it ended.
        lateness: `started - due`, seconds.
        error: The exception text of a failed run.
        hits: Cache hits the run made.
        misses: Cache misses the run made.
        owner: Which scheduler process claimed it.
    """

    key: str
    entry: str
    nominal: float
    item: str = ""
    state: str = "planned"
    reason: str = ""
    due: float | None = None
    started: float | None = None
    ended: float | None = None
    lateness: float | None = None
    error: str = ""
    hits: int | None = None
    misses: int | None = None
    owner: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a plain dictionary."""
        return dataclasses.asdict(self)


RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunRecord))
"""The columns of a stored run, in `RunRecord` order."""

MUTABLE_FIELDS: tuple[str, ...] = (
    "state",
    "reason",
    "started",
    "ended",
    "lateness",
    "error",
    "hits",
    "misses",
)
"""The columns `RunStore.update` writes; the rest are fixed by the claim."""


def record_from_row(row: Mapping[str, Any]) -> RunRecord:
    """Build a record from a row that has (at least) every run column.

    Args:
        row: A database row as a mapping.

    Returns:
        The record.
    """
    return RunRecord(**{name: row[name] for name in RUN_FIELDS})


@dataclasses.dataclass(frozen=True)
class EntryState:
    """What a run store remembers of one schedule.

    Attributes:
        name: Schedule name.
        signature: Trigger signature last used.
        since: When it was first seen enabled (no catch-up before this).
        watermark: Newest nominal instant already handled.
        enabled: Whether it was enabled when last synced.
    """

    name: str
    signature: str
    since: float
    watermark: float
    enabled: bool


def next_entry_state(
    wanted: tuple[str, str, bool, float],
    stored: EntryState | None,
    restart: bool,
) -> EntryState:
    """Apply the sync rule of `RunStore.sync_entries` to one schedule.

    A new schedule, one whose trigger signature changed, and one that was
    disabled and is now enabled all get their watermark moved to `now`:
    none of them catches up on the past. A changed trigger keeps `since`
    (its history stays), the other two start it again at `now`.

    Args:
        wanted: `(name, signature, enabled, now)` as the scheduler has it.
        stored: What the store holds for that name, or None.
        restart: Start from `now` even if stored (re-added by a reload).

    Returns:
        The state to store and hand back.
    """
    name, signature, enabled, now = wanted
    if stored is None:
        return EntryState(name, signature, now, now, enabled)
    watermark, since = stored.watermark, stored.since
    again = restart or (enabled and not stored.enabled)
    if again or stored.signature != signature:
        watermark = max(watermark, now)
        since = max(since, now) if again else since
    return EntryState(name, signature, since, watermark, enabled)


def history_filters(
    entry: str | None, state: str | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Turn the filters of `RunStore.history` into column/value pairs.

    Args:
        entry: Only this schedule, or None.
        state: Only this state, or None.

    Returns:
        `(columns, values)`: each column must equal its value.
    """
    pairs = [(c, v) for c, v in (("entry", entry), ("state", state)) if v is not None]
    return tuple(c for c, _ in pairs), tuple(v for _, v in pairs)


@runtime_checkable
class RunStore(Protocol):
    """Where a scheduler records runs and claims fires (swappable).

    `Ledger` (SQLite, one host) and `PostgresStore` (many hosts) implement
    it, and one contract test suite runs against both. The central promise:
    `claim` creates each key at most once across everyone sharing the store.
    """

    owner: str
    """Identifies the claiming scheduler in stored rows."""

    def sync_entries(
        self,
        entries: Iterable[tuple[str, str, bool, float]],
        restart: Iterable[str] = (),
    ) -> dict[str, EntryState]:
        """Record schedules and return their stored state.

        Args:
            entries: `(name, signature, enabled, now)`: `now` is when the
                scheduler learned of this version of the entry.
            restart: Names to start from `now` even if stored (entries
                added by a reload that existed once before).

        Returns:
            The state of each named schedule after the update (the rule is
            `next_entry_state`).
        """
        ...

    def claim(
        self, records: Sequence[RunRecord], watermarks: dict[str, float] | None = None
    ) -> list[bool]:
        """Insert new runs; a key that already exists is not claimed.

        Args:
            records: Rows to insert (their `owner` is set to the store's).
            watermarks: Schedules whose watermark to raise (never lower) in
                the same transaction.

        Returns:
            For each record, whether this call created it (and so owns it).
        """
        ...

    def update(self, records: Sequence[RunRecord]) -> None:
        """Write the `MUTABLE_FIELDS` of owned runs, matched by key."""
        ...

    def get(self, key: str) -> RunRecord | None:
        """Return one run by key, or None."""
        ...

    def history(
        self,
        *,
        entry: str | None = None,
        state: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Return runs, newest nominal time first (ties: key, descending).

        Args:
            entry: Only this schedule.
            state: Only this state.
            limit: At most this many rows (None for all).

        Returns:
            The records.
        """
        ...

    def count_by_state(self, entry: str | None = None) -> dict[str, int]:
        """Count runs per state (states without runs are left out)."""
        ...

    def recover_orphans(self, now: float) -> int:
        """Mark runs of ended schedulers interrupted; return how many."""
        ...

    def set_paused(self, name: str, paused: bool, now: float) -> None:
        """Pause or resume a schedule for every scheduler sharing the store.

        Args:
            name: Schedule name (need not be known to the store yet).
            paused: True to pause, False to resume.
            now: When; pausing an already paused schedule keeps the first.
        """
        ...

    def paused_entries(self) -> dict[str, float]:
        """Return the paused schedules and since when (Unix seconds)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
