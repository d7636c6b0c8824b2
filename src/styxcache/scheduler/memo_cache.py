"""Value caches around a zero-argument source function.

`CacheMemory` keeps the value in memory; `Cache` also keeps it in a file so a
restarted process can reuse it. Both refresh when the value is older than
`expire`, or on `fresh=True` (for `Cache`, only if older than
`tolerance_seconds`). Many threads asking at once cause one call of the
source function: the others wait and take its result.

Warning:
    The default `Cache` format is pickle. Unpickling runs code chosen by
    whoever wrote the file, so `pickle_reader` refuses, like ssh does with
    keys, a file that another user owns or that group or others may write
    (`UnsafeCacheFileError`); `Cache` then logs why and calls the source
    function instead. Prefer `json_saver`/`json_reader` in shared folders.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from styxcache._system import atomic_write
from styxcache.errors import UnsafeCacheFileError
from styxcache.scheduler.clock import Clock, SystemClock

__all__ = [
    "Cache",
    "CacheMemory",
    "UnsafeCacheFileError",
    "json_reader",
    "json_saver",
    "pickle_reader",
    "pickle_saver",
]

T = TypeVar("T")

_default_log = logging.getLogger("styxcache.scheduler.memo")


def pickle_saver(obj: Any, path: Path) -> None:
    """Save with pickle, atomically.

    Args:
        obj: The value.
        path: The file.
    """
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write(path, data, make_parents=True, permissions=0o600)


def pickle_reader(path: Path) -> Any:
    """Load a pickle file that only you could have written.

    The checks run on the opened file (not on its name), so swapping the file
    between the check and the read does not get past them.

    Args:
        path: The file.

    Returns:
        The value.

    Raises:
        UnsafeCacheFileError: If the file belongs to another user or group or
            others may write to it.
    """
    with path.open("rb") as handle:
        st = os.fstat(handle.fileno())
        if st.st_uid != os.geteuid():
            raise UnsafeCacheFileError(
                f"refusing to unpickle {path}: it belongs to uid {st.st_uid}, "
                f"not to you (uid {os.geteuid()}); unpickling runs its author's "
                "code. Delete it, or use json_saver/json_reader"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeCacheFileError(
                f"refusing to unpickle {path}: others may write to it "
                f"({stat.filemode(st.st_mode)}); unpickling runs its author's "
                f"code. Check it, then `chmod go-w {path}`, or delete it"
            )
        return pickle.load(handle)


def json_saver(obj: Any, path: Path) -> None:
    """Save as JSON, atomically.

    Args:
        obj: A JSON-serialisable value.
        path: The file.
    """
    text = json.dumps(obj, sort_keys=True)
    atomic_write(path, text, make_parents=True, permissions=0o600)


def json_reader(path: Path) -> Any:
    """Load a JSON file.

    Args:
        path: The file.

    Returns:
        The value.
    """
    return json.loads(path.read_text(encoding="utf-8"))


class CacheMemory(Generic[T]):
    """An in-memory value refreshed from `source_func` when too old.

    Example:
        >>> calls = []
        >>> source = lambda: calls.append(1) or len(calls)
        >>> cache = CacheMemory(source, dt.timedelta(minutes=5))
        >>> cache(), cache()
        (1, 1)
        >>> cache(fresh=True)
        2
    """

    def __init__(
        self,
        source_func: Callable[[], T],
        expire: dt.timedelta,
        logger: logging.Logger | None = None,
        name: str | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        """Create the cache; nothing is computed yet.

        Args:
            source_func: Produces the value.
            expire: Age after which the value is recomputed.
            logger: Where refreshes are logged.
            name: Label in logs (defaults to the function's name).
            clock: Time source (a `FakeClock` in tests).

        Raises:
            ValueError: If `expire` is negative.
        """
        if expire < dt.timedelta(0):
            raise ValueError(f"expire must not be negative, got {expire}")
        self.source_func = source_func
        self.expire = expire
        self.logger = logger or _default_log
        self.name = name or getattr(source_func, "__name__", "cache")
        self.clock: Clock = clock or SystemClock()
        self.cache: T | None = None
        self.last_cache: float | None = None
        """Wall time (Unix seconds) of the cached value."""
        self._filled = False
        self._lock = threading.Lock()
        self._arrivals = 0
        self._fill_started_at_arrival = -1

    @property
    def age(self) -> dt.timedelta:
        """Age of the cached value (infinite-ish if nothing is cached)."""
        if self.last_cache is None:
            return dt.timedelta.max
        return dt.timedelta(seconds=self.clock.time() - self.last_cache)

    def _needs_refresh(self, fresh: bool, tolerance_seconds: float) -> bool:
        del (
            tolerance_seconds
        )  # accepted for parity with Cache; fresh is unconditional here
        return not self._filled or fresh or self.age > self.expire

    def __call__(self, fresh: bool = False, tolerance_seconds: float = 1.0) -> T:
        """Return the cached value, refreshing it if needed.

        Args:
            fresh: Recompute now (unless another caller's recomputation
                started after this call did).
            tolerance_seconds: Accepted for API parity; see `Cache`.

        Returns:
            The value.
        """
        with self._lock:
            self._arrivals += 1
            arrival = self._arrivals
        with self._lock:
            if self._fill_started_at_arrival >= arrival and self._filled:
                # Someone recomputed after we arrived: their value is fresh enough.
                return self.cache  # type: ignore[return-value]
            if self._needs_refresh(fresh, tolerance_seconds):
                self._refresh(arrival_mark=self._arrivals, reason=self._why(fresh))
            return self.cache  # type: ignore[return-value]

    def _why(self, fresh: bool) -> str:
        if not self._filled:
            return "first access"
        if fresh:
            return "fresh=True"
        return f"age {self.age} > expire {self.expire}"

    def _refresh(self, *, arrival_mark: int, reason: str) -> None:
        self.logger.info("cache %s: updating (%s)", self.name, reason)
        self._fill_started_at_arrival = arrival_mark
        value = self.source_func()
        self.cache = value
        self.last_cache = self.clock.time()
        self._filled = True

    @classmethod
    def as_decorator(
        cls,
        expire: dt.timedelta,
        logger: logging.Logger | None = None,
        name: str | None = None,
    ) -> Callable[[Callable[[], T]], CacheMemory[T]]:
        """Decorate a zero-argument function into a `CacheMemory`.

        The arguments are the constructor's.

        Returns:
            A decorator returning the cache wrapper (call it to get the value).
        """

        def decorate(func: Callable[[], T]) -> CacheMemory[T]:
            return cls(func, expire, logger, name)

        return decorate


class Cache(CacheMemory[T]):
    """Like `CacheMemory`, but the value also lives in a file.

    On first access an existing file young enough is read instead of calling
    `source_func`; a file the reader cannot load is regenerated and rewritten.
    `fresh=True` recomputes only if the value is older than
    `tolerance_seconds`. Writes are atomic (temporary file + rename).
    """

    def __init__(
        self,
        source_func: Callable[[], T],
        expire: dt.timedelta,
        logger: logging.Logger | None = None,
        path: str | Path | None = None,
        saver: Callable[[T, Path], None] | None = None,
        reader: Callable[[Path], T] | None = None,
        name: str | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        """Create the cache; nothing is read or computed yet.

        The arguments are `CacheMemory`'s (`name` defaults to the file's
        name), plus `path`, the cache file; `saver(value, path)`, which
        defaults to `pickle_saver`; and `reader(path) -> value`, which
        defaults to `pickle_reader`.

        Raises:
            ValueError: If `path` is missing or `expire` is negative.
        """
        if path is None:
            raise ValueError("Cache needs a path; use CacheMemory for memory only")
        self.path = Path(path)
        super().__init__(
            source_func, expire, logger, name or self.path.name, clock=clock
        )
        self.saver: Callable[[T, Path], None] = saver or pickle_saver
        self.reader: Callable[[Path], T] = reader or pickle_reader

    def _needs_refresh(self, fresh: bool, tolerance_seconds: float) -> bool:
        if not self._filled and self._load_file(fresh, tolerance_seconds):
            return False
        if not self._filled:
            return True
        age = self.age.total_seconds()
        return age > self.expire.total_seconds() or (fresh and age > tolerance_seconds)

    def _load_file(self, fresh: bool, tolerance_seconds: float) -> bool:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        age = self.clock.time() - mtime
        if age > self.expire.total_seconds() or (fresh and age > tolerance_seconds):
            return False
        try:
            value = self.reader(self.path)
        except UnsafeCacheFileError as exc:
            self.logger.error(
                "cache %s: %s; calling the source instead", self.name, exc
            )
            return False
        except Exception as exc:
            self.logger.warning(
                "cache %s: cannot read %s (%s: %s); regenerating",
                self.name,
                self.path,
                type(exc).__name__,
                exc,
            )
            return False
        self.cache = value
        self.last_cache = mtime
        self._filled = True
        self.logger.info("cache %s: reusing %s (age %.1fs)", self.name, self.path, age)
        return True

    def _refresh(self, *, arrival_mark: int, reason: str) -> None:
        super()._refresh(arrival_mark=arrival_mark, reason=reason)
        try:
            self.saver(self.cache, self.path)  # type: ignore[arg-type]
        except Exception as exc:
            # The value is still good in memory; a failed save only costs reuse.
            self.logger.warning(
                "cache %s: cannot save %s (%s: %s)",
                self.name,
                self.path,
                type(exc).__name__,
                exc,
            )
            return
        try:
            # The file's age must match the value's age on our clock.
            stamp = self.last_cache or self.clock.time()
            os.utime(self.path, (stamp, stamp))
        except OSError:
            pass

    @classmethod
    def as_decorator(  # type: ignore[override]
        cls,
        expire: dt.timedelta,
        logger: logging.Logger | None = None,
        path: str | Path | None = None,
        saver: Callable[[Any, Path], None] | None = None,
        reader: Callable[[Path], Any] | None = None,
        name: str | None = None,
    ) -> Callable[[Callable[[], T]], Cache[T]]:
        """Decorate a zero-argument function into a `Cache`.

        The arguments are the constructor's.

        Returns:
            A decorator returning the cache wrapper.
        """

        def decorate(func: Callable[[], T]) -> Cache[T]:
            return cls(func, expire, logger, path, saver, reader, name)

        return decorate
