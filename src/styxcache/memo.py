"""A persisted memo of content digests, so an unchanged file is never read twice.

A file's digest is remembered under its `(device, inode, size, mtime_ns,
ctime_ns)`. Any write changes the ctime (and a file swapped in by rename has
another inode), so a match means the bytes are the ones that were hashed. A
folder's digest is remembered under a fingerprint of every entry's name and
stat record, so a hit on a 10,000-file folder costs one walk and one lookup.

The memo is SQLite in WAL mode on local disk (never inside a shared cache
directory: NFS breaks SQLite's locking), safe for many concurrent processes.
Values younger than the settle window are not remembered, because a file
written in the last moments may still change within one timestamp tick.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["SETTLE_SECONDS", "DigestMemo", "file_memo_key", "filesystem_type"]

_log = logging.getLogger("styxcache.memo")

SETTLE_SECONDS = 2.0
"""Files modified more recently than this are hashed but not remembered."""

_SCHEMA_VERSION = 1

_ROW_BYTES = 200
"""About what one file's row takes in the database (key, digest, b-tree)."""

_RECENT_LIMIT = 4096
"""Digests also kept in memory, for repeated hits within one process."""

_NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
    }
)
"""Filesystems on which SQLite's file locks cannot be trusted."""


_OCTAL = re.compile(r"\\([0-7]{3})")


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """Return the type of the filesystem holding `path` (Linux), or "".

    Args:
        path: Any path; the nearest existing ancestor decides.
        mounts: The text of `/proc/self/mounts` (read when None).

    Returns:
        The type, such as `ext4` or `nfs4`, or "" when unknown.
    """
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text(encoding="utf-8")
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # The kernel escapes blanks in mount points as octal (\040).
        point = _OCTAL.sub(lambda m: chr(int(m[1], 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def file_memo_key(st: os.stat_result) -> str:
    """Return the memo key of a file from its stat record.

    Args:
        st: The file's `os.stat` result.

    Returns:
        A string naming exactly this version of this file.
    """
    return f"f:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def is_settled(st: os.stat_result, now: float | None = None) -> bool:
    """Return True when the file was last changed outside the settle window.

    Args:
        st: The file's stat record.
        now: The current time (for tests); defaults to `time.time()`.

    Returns:
        Whether a digest of this version may be remembered.
    """
    newest = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    current = time.time() if now is None else now
    return current - newest >= SETTLE_SECONDS


class DigestMemo:
    """Digests remembered by stat identity, in a local SQLite database.

    Each thread uses its own connection. Every failure to open or write the
    database is logged once and turns the memo into a no-op: the memo speeds
    things up and must never break a pipeline.
    """

    def __init__(
        self,
        folder: Path,
        *,
        max_rows: int = 1_000_000,
        max_bytes: int | None = None,
    ) -> None:
        """Open (creating if needed) the memo in `folder`.

        Args:
            folder: Where `digests.sqlite3` lives.
            max_rows: About how many digests to keep; past the matching
                database size the oldest tenth is dropped.
            max_bytes: The database size that triggers trimming (default:
                `max_rows` times a typical row's size on disk).
        """
        self.path = folder / "digests.sqlite3"
        self._max_bytes = max_bytes if max_bytes is not None else max_rows * _ROW_BYTES
        self._local = threading.local()
        self._disabled = False
        self._recent: dict[str, str] = {}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._connection()
        except (OSError, sqlite3.Error) as exc:
            self._disable(exc)
            return
        kind = filesystem_type(folder)
        if kind in _NETWORK_FILESYSTEMS:
            _log.warning(
                "digest memo %s is on a %s filesystem, where SQLite's locks are "
                "unreliable; point CachePolicy(memo_dir=...) at a local folder",
                self.path,
                kind,
            )

    def _disable(self, exc: BaseException) -> None:
        if not self._disabled:
            _log.warning(
                "digest memo at %s unavailable (%s); hashing without it", self.path, exc
            )
        self._disabled = True

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS memo ("
            " k TEXT PRIMARY KEY, digest TEXT NOT NULL, added REAL NOT NULL"
            ") WITHOUT ROWID"
        )
        # Written only once: every write takes the database lock, and many
        # processes open the memo at the same time.
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version != _SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def get(self, key: str) -> str | None:
        """Return the remembered digest for `key`, or None.

        Args:
            key: A memo key (see `file_memo_key`).

        Returns:
            The digest, or None when unknown or the memo is off.
        """
        if self._disabled:
            return None
        known = self._recent.get(key)
        if known is not None:
            return known
        try:
            row = (
                self._connection()
                .execute("SELECT digest FROM memo WHERE k = ?", (key,))
                .fetchone()
            )
        except sqlite3.Error as exc:
            self._disable(exc)
            return None
        if row is None:
            return None
        self._remember([(key, str(row[0]))])
        return str(row[0])

    def _remember(self, items: list[tuple[str, str]]) -> None:
        # A key names one version of one file, so a remembered pair never
        # goes stale; the copy in memory only spares repeated hits in this
        # process the SQLite query. Cleared wholesale to stay bounded.
        if len(self._recent) + len(items) > _RECENT_LIMIT:
            self._recent = {}
        self._recent.update(items)

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """Return the remembered digests of several keys at once.

        Args:
            keys: Memo keys.

        Returns:
            The keys that are known, with their digests.
        """
        if self._disabled or not keys:
            return {}
        found: dict[str, str] = {}
        try:
            conn = self._connection()
            # SQLite limits bound parameters per statement; 500 is safely below.
            for start in range(0, len(keys), 500):
                batch = keys[start : start + 500]
                marks = ",".join("?" * len(batch))
                rows = conn.execute(
                    f"SELECT k, digest FROM memo WHERE k IN ({marks})", batch
                ).fetchall()
                found.update((str(k), str(d)) for k, d in rows)
        except sqlite3.Error as exc:
            self._disable(exc)
            return {}
        return found

    def put(self, key: str, digest: str) -> None:
        """Remember a digest.

        Args:
            key: A memo key.
            digest: Its digest.
        """
        self.put_many([(key, digest)])

    def put_many(self, items: list[tuple[str, str]]) -> None:
        """Remember several digests in one transaction.

        Args:
            items: `(key, digest)` pairs.
        """
        if self._disabled or not items:
            return
        now = time.time()
        try:
            conn = self._connection()
            # One transaction, not one per row: a folder's first hash adds
            # thousands of rows. IMMEDIATE takes the write lock up front, so
            # a busy database is waited for instead of failing mid-way.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO memo (k, digest, added) VALUES (?, ?, ?)",
                    [(k, d, now) for k, d in items],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if len(items) <= _RECENT_LIMIT // 4:
                self._remember(items)
            if self._used_bytes(conn) > self._max_bytes:
                self._trim(conn)
        except sqlite3.Error as exc:
            self._disable(exc)

    @staticmethod
    def _used_bytes(conn: sqlite3.Connection) -> int:
        # Both pragmas read the database header: constant time, unlike
        # COUNT(*), so the bound is checked on every write.
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def _trim(self, conn: sqlite3.Connection) -> None:
        """Drop the oldest tenth of the rows (freed pages are reused, not returned)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have trimmed while this one waited.
            if self._used_bytes(conn) <= self._max_bytes:
                conn.execute("COMMIT")
                return
            (rows,) = conn.execute("SELECT COUNT(*) FROM memo").fetchone()
            drop = max(1, int(rows) // 10)
            conn.execute(
                "DELETE FROM memo WHERE k IN "
                "(SELECT k FROM memo ORDER BY added LIMIT ?)",
                (drop,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        _log.debug("digest memo %s trimmed by %d rows", self.path, drop)

    def __len__(self) -> int:
        """Return the number of remembered digests."""
        if self._disabled:
            return 0
        (rows,) = self._connection().execute("SELECT COUNT(*) FROM memo").fetchone()
        return int(rows)
