"""Leases: one run for concurrent identical executions, across hosts.

A lease is a small JSON file `<root>/.locks/<key>.lock` created with
`O_CREAT | O_EXCL` (atomic on local filesystems and on NFSv3+, unlike
`flock`, which NFS clients may emulate or ignore). It names its owner (host,
pid, process start time, a random token) and is renewed while the tool runs
by bumping its modification time from a background thread.

A lease is stale, and may be taken over, when its owner is a dead process on
this host (checked at once), or when it has not been renewed for
`lease_seconds` (an owner on another host that died or hung). Takeover is
itself serialised by an `O_EXCL` breaker file, so two waiters never both
delete the lock and both run.

Guarantees and limits are in docs/design/locks.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from styxcache._system import HOST, local_process_dead, process_start

__all__ = [
    "Lease",
    "LeaseOwner",
    "LeaseState",
    "acquire",
    "judge_lease",
    "owner_is_dead",
    "read_lease",
]

_log = logging.getLogger("styxcache.lease")

_MAX_POLL = 0.2
"""Longest pause between a waiter's checks: a finished twin is noticed within it."""


@functools.lru_cache(maxsize=8)
def _start_of(pid: int) -> str:
    """A process's start time, read from /proc once per pid.

    Asked for this process's own pid only (about 30 us a miss saved); a
    forked child has its own pid, so it reads its own.
    """
    return process_start(pid)


@dataclasses.dataclass(frozen=True)
class LeaseOwner:
    """Who holds a lease.

    Attributes:
        host: Host name.
        pid: Process id.
        start: Process start time (Linux clock ticks), to tell a reused pid.
        token: Random; identifies this one acquisition.
        created: Unix time of acquisition.
    """

    host: str
    pid: int
    start: str
    token: str
    created: float

    def to_json(self) -> str:
        """Return the record as a lease file holds it (one JSON object)."""
        # A dict literal: `dataclasses.asdict` deep-copies, a few us a miss.
        return json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "start": self.start,
                "token": self.token,
                "created": self.created,
            }
        )

    @classmethod
    def me(cls) -> LeaseOwner:
        """Return an owner record for the calling process."""
        pid = os.getpid()
        return cls(HOST, pid, _start_of(pid), uuid.uuid4().hex, time.time())


def owner_is_dead(owner: LeaseOwner) -> bool:
    """Return True when the owner is a process of this host that no longer runs.

    An owner on another host is never declared dead here: only the lease's
    renewal time can tell.

    Args:
        owner: The lease owner.
    """
    return local_process_dead(owner.host, owner.pid, owner.start)


def _read_owner(path: Path) -> LeaseOwner | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return LeaseOwner(**json.loads(os.read(fd, 4096)))
    except (OSError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class LeaseState:
    """A lease file as read now.

    Attributes:
        owner: Its holder, or None while it is being written or unreadable.
        age_s: Seconds since it was created or last renewed.
    """

    owner: LeaseOwner | None
    age_s: float


def read_lease(path: Path) -> LeaseState | None:
    """Read a lease file; None when there is none.

    Args:
        path: `<root>/.locks/<key>.lock`.
    """
    try:
        modified = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    owner = _read_owner(path)
    if owner is None and not os.path.lexists(path):
        return None
    return LeaseState(owner, time.time() - modified)


def judge_lease(state: LeaseState, stale_after: float) -> str:
    """The one rule for a lease's staleness: why it is stale, or "" if live.

    A lease is stale when its holder is a process of this host that no longer
    runs (known at once), or when it has not been renewed for `stale_after`
    seconds (a holder on another host that died or hung). A waiting execution
    passes its policy's `lease_seconds`; `gc`, which does not know the
    pipelines' periods, passes a far longer bound.

    Args:
        state: The lease as read by `read_lease`.
        stale_after: Seconds without renewal after which it is stale.
    """
    owner = state.owner
    if owner is not None and owner_is_dead(owner):
        return f"holder pid {owner.pid} on {owner.host} is gone"
    if state.age_s > stale_after:
        who = f"pid {owner.pid} on {owner.host}" if owner else "unknown holder"
        return f"holder {who} stopped renewing {state.age_s:.0f}s ago"
    return ""


class _Renewer:
    """One daemon thread per process that renews every lease the process holds.

    Starting a thread per lease cost about a millisecond per miss; one shared
    thread keeps a miss cheap however many tools run at once.
    """

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._leases: dict[int, tuple[Lease, float, float]] = {}
        self._thread: threading.Thread | None = None
        self._pid = -1
        # When the thread sleeps, until when (inf: until notified); -inf
        # while it is awake (it then looks at the leases before sleeping).
        self._sleeping_until = -math.inf

    def add(self, lease: Lease, every: float) -> None:
        with self._wake:
            due = time.monotonic() + every
            self._leases[id(lease)] = (lease, every, due)
            if self._thread is None or self._pid != os.getpid():
                # A forked child inherits no threads: start its own.
                self._pid = os.getpid()
                self._sleeping_until = -math.inf
                self._thread = threading.Thread(
                    target=self._loop, name="styxcache-lease-renewer", daemon=True
                )
                self._thread.start()
            if due < self._sleeping_until:
                # Waking the thread on every miss cost a thread switch each
                # (milliseconds on a busy machine): only when it would
                # otherwise renew this lease too late.
                self._wake.notify()

    def remove(self, lease: Lease) -> None:
        with self._wake:
            self._leases.pop(id(lease), None)

    def _loop(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [
                    (lease, every)
                    for lease, every, at in self._leases.values()
                    if at <= now
                ]
                for lease, every in due:
                    self._leases[id(lease)] = (lease, every, now + every)
            for lease, _ in due:
                if not lease.renew():
                    self.remove(lease)
            with self._wake:
                # Look again: leases added while renewing were not notified.
                now = time.monotonic()
                pending = [at for _, _, at in self._leases.values()]
                delay = min(pending) - now if pending else None
                if delay is None:
                    self._sleeping_until = math.inf
                    self._wake.wait()
                elif delay > 0:
                    self._sleeping_until = now + delay
                    self._wake.wait(delay)
                self._sleeping_until = -math.inf


_RENEWER = _Renewer()


class Lease:
    """A held lease; renewed in the background until released."""

    def __init__(self, path: Path, owner: LeaseOwner, lease_seconds: float) -> None:
        self.path = path
        self.owner = owner
        self._lost = False
        self._released = False
        _RENEWER.add(self, max(0.05, lease_seconds / 4))

    @property
    def lost(self) -> bool:
        """True if another process took the lease over while we held it."""
        return self._lost

    def _still_mine(self) -> bool:
        current = _read_owner(self.path)
        return current is not None and current.token == self.owner.token

    def renew(self) -> bool:
        """Bump the lease's mtime if it is still ours.

        Returns:
            False once the lease was taken over (renewal then stops).
        """
        if self._released:
            return False
        if not self._still_mine():
            if self._released:  # released while we looked: not a takeover
                return False
            self._lost = True
            _log.warning(
                "lease %s was taken over by another process; "
                "the result will still be committed atomically",
                self.path.name,
            )
            return False
        with contextlib.suppress(OSError):
            os.utime(self.path)
        return True

    def release(self) -> None:
        """Stop renewing and remove the lease file if it is still ours."""
        self._released = True
        _RENEWER.remove(self)
        if self._still_mine():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


_CREATE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC


def _try_create(path: Path, owner: LeaseOwner) -> bool:
    try:
        fd = os.open(path, _CREATE, 0o644)
    except FileExistsError:
        return False
    except FileNotFoundError:
        # The first lease of this cache, or a concurrent `gc` or `clear`
        # removed the locks folder: make it, then try once more.
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, _CREATE, 0o644)
        except FileExistsError:
            return False
    try:
        # One write: a reader sees the whole record or an empty file.
        os.write(fd, owner.to_json().encode())
    finally:
        os.close(fd)
    return True


def _stale(path: Path, lease_seconds: float) -> tuple[bool, str]:
    """Return (stale, why) for the lease file at `path`."""
    state = read_lease(path)
    if state is None:
        return False, ""
    why = judge_lease(state, lease_seconds)
    return bool(why), why


def _break(path: Path, lease_seconds: float) -> bool:
    """Remove a stale lease, serialised by a breaker file. True if removed."""
    breaker = path.with_suffix(".break")
    if not _try_create(breaker, LeaseOwner.me()):
        # Someone else is breaking it; a breaker left by a crash expires too.
        try:
            if time.time() - breaker.stat().st_mtime > lease_seconds:
                breaker.unlink()
        except FileNotFoundError:
            pass
        return False
    try:
        stale, why = _stale(path, lease_seconds)  # re-check under the breaker
        if stale:
            _log.warning("taking over lease %s: %s", path.name, why)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return True
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            breaker.unlink()


@contextlib.contextmanager
def acquire(
    locks_dir: Path,
    key: str,
    *,
    lease_seconds: float,
    timeout: float,
    done: Callable[[], bool],
    poll: float = 0.05,
) -> Iterator[Lease | None]:
    """Hold the lease for `key`, or learn that a twin finished.

    Waits while another live process holds the lease, checking `done()` (the
    twin committed) between polls with a backoff up to half a second.

    Args:
        locks_dir: `<root>/.locks`.
        key: The cache key.
        lease_seconds: Validity of an unrenewed lease.
        timeout: Give up waiting after this many seconds.
        done: Returns True when the result has appeared meanwhile.
        poll: First polling interval.

    Yields:
        The held `Lease`; or None when `done()` became true or the wait timed
        out (the caller tells which by calling `done()` again).
    """
    path = locks_dir / f"{key}.lock"  # the folder is made on first use
    owner = LeaseOwner.me()
    deadline = time.monotonic() + timeout
    delay = poll
    lease: Lease | None = None
    while True:
        if _try_create(path, owner):
            lease = Lease(path, owner, lease_seconds)
            break
        if done():
            break
        stale, _ = _stale(path, lease_seconds)
        if stale and _break(path, lease_seconds):
            continue
        if time.monotonic() >= deadline:
            holder = _read_owner(path)
            _log.warning(
                "waited %.0fs for a concurrent identical run (%s) of %s; "
                "running without it",
                timeout,
                f"pid {holder.pid} on {holder.host}" if holder else "unknown holder",
                key[:12],
            )
            break
        time.sleep(delay)
        delay = min(delay * 1.5, _MAX_POLL)
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()
