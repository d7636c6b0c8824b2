"""The run ledger: one SQLite row per fire, shared safely between processes.

The primary key of `runs` is the run key, and a fire is dispatched only by
the process whose `INSERT` created that row, so a key runs at most once
across restarts and across schedulers sharing the file. WAL mode lets
readers (`schedule history`) work while a scheduler writes.

The `entries` table holds, per schedule, the trigger signature it last ran
with, when it was first seen enabled, and the watermark: the newest nominal
fire already handled. After a restart the scheduler resumes from the
watermark, so downtime shows up as late fires instead of vanishing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time
import typing
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "RUN_STATES",
    "EntryState",
    "Ledger",
    "LedgerError",
    "RunRecord",
    "RunState",
    "RunStore",
    "run_key",
]

_log = logging.getLogger("styxcache.scheduler.ledger")

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
FINAL_STATES = frozenset(
    {"ok", "failed", "skipped", "coalesced", "missed", "interrupted"}
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    entry TEXT NOT NULL,
    nominal REAL NOT NULL,
    item TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    due REAL,
    started REAL,
    ended REAL,
    lateness REAL,
    error TEXT NOT NULL DEFAULT '',
    hits INTEGER,
    misses INTEGER,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_by_entry ON runs (entry, nominal);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY,
    signature TEXT NOT NULL,
    since REAL NOT NULL,
    watermark REAL NOT NULL,
    enabled INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS paused (
    name TEXT PRIMARY KEY,
    since REAL NOT NULL
);
"""


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
    """One row of the ledger.

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


@dataclasses.dataclass(frozen=True)
class EntryState:
    """What the ledger remembers of one schedule.

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


@runtime_checkable
class RunStore(Protocol):
    """Where a scheduler records runs and claims fires (swappable).

    `Ledger` (SQLite) is the implementation here; a shared store for
    distributed workers only has to honour the same contract: `claim` creates
    each key at most once across everyone sharing the store.
    """

    owner: str
    """Identifies the claiming scheduler in stored rows."""

    def sync_entries(
        self,
        entries: Iterable[tuple[str, str, bool, float]],
        restart: Iterable[str] = (),
    ) -> dict[str, EntryState]:
        """Record schedules; return their stored watermarks (see `Ledger`)."""
        ...

    def claim(
        self, records: Sequence[RunRecord], watermarks: dict[str, float] | None = None
    ) -> list[bool]:
        """Create runs; True for each key this call created."""
        ...

    def update(self, records: Sequence[RunRecord]) -> None:
        """Write the mutable fields of owned runs."""
        ...

    def get(self, key: str) -> RunRecord | None:
        """Return one run by key."""
        ...

    def history(
        self,
        *,
        entry: str | None = None,
        state: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Return runs, newest first."""
        ...

    def count_by_state(self, entry: str | None = None) -> dict[str, int]:
        """Count runs per state."""
        ...

    def recover_orphans(self, now: float) -> int:
        """Mark runs of ended schedulers interrupted; return how many."""
        ...

    def set_paused(self, name: str, paused: bool, now: float) -> None:
        """Pause or resume a schedule for every scheduler sharing the store."""
        ...

    def paused_entries(self) -> dict[str, float]:
        """Return the paused schedules and since when (Unix seconds)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


_FIELDS = [f.name for f in dataclasses.fields(RunRecord)]


class LedgerError(RuntimeError):
    """The ledger file exists but cannot be used; the message says how to recover."""


def _unreadable(path: Path | None, exc: BaseException) -> str:
    if path is None:
        return f"cannot open the in-memory ledger: {exc}"
    return (
        f"the ledger {path} cannot be read ({exc}). The scheduler will not "
        "guess at its runs. To recover: stop every scheduler using it, then "
        f"either `sqlite3 {path} .recover | sqlite3 {path}.recovered` and move "
        f"the result into place, or move {path} aside to start a new ledger "
        "(catch-up rules then decide which missed fires run again)"
    )


def _create_or_check(path: Path) -> None:
    """Create a new ledger whole, or refuse an existing empty file.

    SQLite takes an empty file for a new database, so a ledger truncated to
    zero bytes would silently lose every run and watermark. A new ledger is
    therefore built under a temporary name and linked into place complete:
    a zero-byte ledger is never one of ours, and is refused.

    Raises:
        LedgerError: The file exists and is empty.
    """
    try:
        if path.stat().st_size == 0:
            raise LedgerError(
                f"the ledger {path} is an empty file (0 bytes): it is not a "
                "ledger this scheduler created, and opening it would start "
                "history from nothing. If that is what you want, delete it; "
                "otherwise restore it from a backup"
            )
        return
    except FileNotFoundError:
        pass
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    os.close(fd)
    try:
        conn = sqlite3.connect(temp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        finally:
            conn.close()
        os.chmod(temp, 0o644)
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # a twin created it first
        except OSError:
            # No hard links on this filesystem: a rename is the next best.
            if not path.exists():
                os.rename(temp, path)
    finally:
        for leftover in (temp, f"{temp}-wal", f"{temp}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


class Ledger:
    """SQLite store of runs and schedule watermarks.

    Safe to share between threads (one connection behind a lock) and between
    processes (SQLite locking; claims use `BEGIN IMMEDIATE`).
    """

    def __init__(self, path: str | Path) -> None:
        """Open (and create) the ledger.

        Args:
            path: The SQLite file, or `":memory:"`.

        Raises:
            OSError: If the folder cannot be created.
        """
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _create_or_check(self.path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise LedgerError(_unreadable(self.path, exc)) from None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def _setup(self) -> None:
        # Switching to WAL needs a moment of exclusive access and SQLite does
        # not always apply the busy timeout to it, so two schedulers opening
        # a new ledger together retry briefly instead of failing.
        for attempt in range(100):
            try:
                if self.path is not None:
                    self._conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL survives a process crash; only an OS crash can
                # lose the last commits, which then show up as late fires.
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                transient = "locked" in str(exc) or "busy" in str(exc)
                if not transient or attempt == 99:
                    raise
                time.sleep(0.01 * (1 + attempt % 10))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def sync_entries(
        self,
        entries: Iterable[tuple[str, str, bool, float]],
        restart: Iterable[str] = (),
    ) -> dict[str, EntryState]:
        """Record schedules and return their stored state.

        A new schedule, a schedule whose trigger signature changed, and a
        schedule that was disabled and is now enabled all get their
        watermark moved to `now`: none of them catches up on the past.

        Args:
            entries: `(name, signature, enabled, now)`: `now` is when the
                scheduler learned of this version of the entry.
            restart: Names to start from `now` even if stored (entries
                added by a reload that existed once before).

        Returns:
            The state of each named schedule after the update.
        """
        fresh = set(restart)
        wanted = list(entries)
        result: dict[str, EntryState] = {}
        inserts: list[tuple[str, str, float, float, int]] = []
        updates: list[tuple[str, float, float, int, str]] = []
        with self._transaction() as conn:
            # One read of every stored row: registering thousands of entries
            # must not cost a query each.
            stored = {row["name"]: row for row in conn.execute("SELECT * FROM entries")}
            for name, signature, enabled, now in wanted:
                row = stored.get(name)
                if row is None:
                    state = EntryState(name, signature, now, now, enabled)
                    inserts.append((name, signature, now, now, int(enabled)))
                else:
                    watermark = float(row["watermark"])
                    since = float(row["since"])
                    again = name in fresh or (enabled and not row["enabled"])
                    if again or row["signature"] != signature:
                        watermark = max(watermark, now)
                        since = max(since, now) if again else since
                    state = EntryState(name, signature, since, watermark, enabled)
                    updates.append((signature, since, watermark, int(enabled), name))
                result[name] = state
            conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", inserts)
            conn.executemany(
                "UPDATE entries SET signature = ?, since = ?, watermark = ?,"
                " enabled = ? WHERE name = ?",
                updates,
            )
        return result

    def entry_states(self) -> dict[str, EntryState]:
        """Return every stored schedule state."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM entries").fetchall()
        return {
            r["name"]: EntryState(
                r["name"],
                r["signature"],
                r["since"],
                r["watermark"],
                bool(r["enabled"]),
            )
            for r in rows
        }

    def claim(
        self, records: Sequence[RunRecord], watermarks: dict[str, float] | None = None
    ) -> list[bool]:
        """Insert new runs; a key that already exists is not claimed.

        Args:
            records: Rows to insert (their `owner` is set to this ledger's).
            watermarks: Schedules whose watermark to raise in the same
                transaction.

        Returns:
            For each record, whether this call created it (and so owns it).
        """
        placeholders = ", ".join("?" for _ in _FIELDS)
        sql = (
            f"INSERT OR IGNORE INTO runs ({', '.join(_FIELDS)}) VALUES ({placeholders})"
        )
        for record in records:
            record.owner = self.owner
        rows = [[getattr(r, f) for f in _FIELDS] for r in records]
        with self._transaction() as conn:
            inserted = conn.executemany(sql, rows).rowcount
            if inserted == len(records):
                claimed = [True] * len(records)
            else:
                # Some keys were there already: ours are the rows we own now.
                # (A key is never claimed twice by one ledger.)
                claimed = [
                    conn.execute(
                        "SELECT 1 FROM runs WHERE key = ? AND owner = ?",
                        (r.key, self.owner),
                    ).fetchone()
                    is not None
                    for r in records
                ]
            conn.executemany(
                "UPDATE entries SET watermark = MAX(watermark, ?) WHERE name = ?",
                [(mark, name) for name, mark in (watermarks or {}).items()],
            )
        return claimed

    def update(self, records: Sequence[RunRecord]) -> None:
        """Write the mutable fields of runs this process owns.

        Args:
            records: Rows to update, matched by key.
        """
        if not records:
            return
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE runs SET state = ?, reason = ?, started = ?, ended = ?,"
                " lateness = ?,"
                " error = ?, hits = ?, misses = ? WHERE key = ?",
                [
                    (
                        r.state,
                        r.reason,
                        r.started,
                        r.ended,
                        r.lateness,
                        r.error,
                        r.hits,
                        r.misses,
                        r.key,
                    )
                    for r in records
                ],
            )

    def get(self, key: str) -> RunRecord | None:
        """Return one run by key.

        Args:
            key: Run key.

        Returns:
            The record, or None.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM runs WHERE key = ?", (key,)
            ).fetchone()
        return RunRecord(**dict(row)) if row is not None else None

    def history(
        self,
        *,
        entry: str | None = None,
        state: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Return runs, newest nominal time first.

        Args:
            entry: Only this schedule.
            state: Only this state.
            limit: At most this many rows (None for all).

        Returns:
            The records.
        """
        clauses, params = [], []
        if entry is not None:
            clauses.append("entry = ?")
            params.append(entry)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM runs {where} ORDER BY nominal DESC, key DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [RunRecord(**dict(r)) for r in rows]

    def count_by_state(self, entry: str | None = None) -> dict[str, int]:
        """Return how many runs are in each state.

        Args:
            entry: Only this schedule.

        Returns:
            State to count (states with no rows are left out).
        """
        sql = "SELECT state, COUNT(*) AS n FROM runs"
        params: list[str] = []
        if entry is not None:
            sql += " WHERE entry = ?"
            params.append(entry)
        with self._lock:
            rows = self._conn.execute(sql + " GROUP BY state", params).fetchall()
        return {r["state"]: int(r["n"]) for r in rows}

    def set_paused(self, name: str, paused: bool, now: float) -> None:
        """Pause or resume a schedule; running schedulers see it on their next wake.

        Args:
            name: Schedule name (need not be known to the ledger yet).
            paused: True to pause, False to resume.
            now: When (Unix seconds), kept as the start of the pause.
        """
        with self._transaction() as conn:
            if paused:
                conn.execute(
                    "INSERT OR IGNORE INTO paused (name, since) VALUES (?, ?)",
                    (name, now),
                )
            else:
                conn.execute("DELETE FROM paused WHERE name = ?", (name,))

    def paused_entries(self) -> dict[str, float]:
        """Return the paused schedules and since when.

        Returns:
            Schedule name to the Unix time it was paused.
        """
        with self._lock:
            rows = self._conn.execute("SELECT name, since FROM paused").fetchall()
        return {str(r["name"]): float(r["since"]) for r in rows}

    def recover_orphans(self, now: float) -> int:
        """Mark running/planned runs of dead processes on this host interrupted.

        Args:
            now: Current Unix time, stored as the end time.

        Returns:
            How many runs were marked.
        """
        host = socket.gethostname()
        marked = 0
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT key, owner FROM runs WHERE state IN ('running', 'planned')"
            ).fetchall()
            for row in rows:
                owner_host, _, rest = str(row["owner"]).partition(":")
                pid_text = rest.partition(":")[0]
                if owner_host != host or not pid_text.isdigit():
                    continue
                if _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
                    continue
                if str(row["owner"]) == self.owner:
                    continue
                conn.execute(
                    "UPDATE runs SET state = 'interrupted', ended = ?, reason = ?"
                    " WHERE key = ?",
                    (now, "the scheduler process that ran it ended first", row["key"]),
                )
                marked += 1
        if marked:
            _log.warning(
                "marked %d run(s) of ended scheduler processes as interrupted", marked
            )
        return marked


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
