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
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from styxcache._system import HOST, owner_label, parse_owner_label, pid_alive
from styxcache.errors import LedgerError

# The contract types are defined in `runstore`; they stay importable from
# here, where they were defined before the split.
from styxcache.scheduler.runstore import (
    MUTABLE_FIELDS,
    RUN_FIELDS,
    RUN_STATES,
    EntryState,
    RunRecord,
    RunState,
    RunStore,
    history_filters,
    next_entry_state,
    record_from_row,
    run_key,
)

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
        self.owner = owner_label()

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
        """Record schedules; return their stored state (see `RunStore.sync_entries`)."""
        fresh = set(restart)
        wanted = list(entries)
        result: dict[str, EntryState] = {}
        inserts: list[tuple[str, str, float, float, int]] = []
        updates: list[tuple[str, float, float, int, str]] = []
        with self._transaction() as conn:
            # One read of every stored row: registering thousands of entries
            # must not cost a query each.
            stored = {
                row["name"]: _entry_state(row)
                for row in conn.execute("SELECT * FROM entries")
            }
            for want in wanted:
                name = want[0]
                old = stored.get(name)
                state = next_entry_state(want, old, name in fresh)
                row = (state.signature, state.since, state.watermark, state.enabled)
                if old is None:
                    inserts.append((name, *row[:3], int(state.enabled)))
                else:
                    updates.append((*row[:3], int(state.enabled), name))
                result[name] = state
            conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", inserts)
            conn.executemany(
                "UPDATE entries SET signature = ?, since = ?, watermark = ?,"
                " enabled = ? WHERE name = ?",
                updates,
            )
        return result

    def claim(
        self, records: Sequence[RunRecord], watermarks: dict[str, float] | None = None
    ) -> list[bool]:
        """Insert new runs; True for each key this call created (see `RunStore`)."""
        placeholders = ", ".join("?" for _ in RUN_FIELDS)
        sql = (
            f"INSERT OR IGNORE INTO runs ({', '.join(RUN_FIELDS)})"
            f" VALUES ({placeholders})"
        )
        for record in records:
            record.owner = self.owner
        rows = [[getattr(r, f) for f in RUN_FIELDS] for r in records]
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
        sets = ", ".join(f"{name} = ?" for name in MUTABLE_FIELDS)
        with self._transaction() as conn:
            conn.executemany(
                f"UPDATE runs SET {sets} WHERE key = ?",
                [[*(getattr(r, f) for f in MUTABLE_FIELDS), r.key] for r in records],
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
        return record_from_row(row) if row is not None else None

    def history(
        self,
        *,
        entry: str | None = None,
        state: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Return runs, newest nominal time first (see `RunStore.history`)."""
        columns, params = history_filters(entry, state)
        clauses = " AND ".join(f"{column} = ?" for column in columns)
        where = f"WHERE {clauses}" if clauses else ""
        sql = f"SELECT * FROM runs {where} ORDER BY nominal DESC, key DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [record_from_row(r) for r in rows]

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
        marked = 0
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT key, owner FROM runs WHERE state IN ('running', 'planned')"
            ).fetchall()
            for row in rows:
                owner = str(row["owner"])
                parsed = parse_owner_label(owner)
                if parsed is None or parsed[0] != HOST or owner == self.owner:
                    continue
                # Another ledger of this very process that was closed counts
                # as ended too.
                if parsed[1] != os.getpid() and pid_alive(parsed[1]):
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


def _entry_state(row: sqlite3.Row) -> EntryState:
    return EntryState(
        row["name"],
        row["signature"],
        float(row["since"]),
        float(row["watermark"]),
        bool(row["enabled"]),
    )
