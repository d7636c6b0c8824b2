"""A thread-safe, time-limited memo shared by all digest resolvers."""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

logger = logging.getLogger("styxcache.backends")

#: Default number of seconds a resolved digest is reused before asking again.
DEFAULT_TTL = 60.0

Clock = Callable[[], float]


class CachedDigestResolver(ABC):
    """Resolve ``tag -> digest`` and reuse each answer for ``ttl`` seconds.

    Answers are kept only briefly, so a long-running process notices when an
    image tag is moved to a different image; a ``ttl`` of 0 asks every time.
    Failures are never memoised: the next call asks the runtime again.
    Concurrent calls for the same tag share one lookup, while different tags
    resolve in parallel.

    Subclasses implement :meth:`_resolve`.
    """

    #: Short runtime name used in messages (``"docker"``, ``"podman"`` ...).
    runtime: str = "container"

    def __init__(
        self, ttl: float = DEFAULT_TTL, *, clock: Clock = time.monotonic
    ) -> None:
        """Create a resolver.

        Args:
            ttl: Seconds a resolved digest is reused; 0 disables the memo.
            clock: Monotonic time source in seconds (injectable for tests).

        Raises:
            ValueError: If ``ttl`` is negative, NaN or infinite.
        """
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
            raise TypeError(f"ttl must be a number of seconds, got {ttl!r}")
        if not math.isfinite(ttl) or ttl < 0:
            raise ValueError(
                f"ttl must be a finite number of seconds >= 0, got {ttl!r}"
            )
        self._ttl = float(ttl)
        self._clock = clock
        self._init_process_state()

    def _init_process_state(self) -> None:
        """Create the locks and memos, which belong to one process.

        Subclasses with more such state extend this and :attr:`_process_state`.
        """
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[float, str]] = {}
        self._inflight: dict[str, threading.Lock] = {}

    #: Attributes left out when pickling; :meth:`_init_process_state` makes
    #: fresh ones. Policies travel to worker processes, and locks cannot.
    _process_state: tuple[str, ...] = ("_lock", "_memo", "_inflight")

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        for name in self._process_state:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ttl={self._ttl!r})"

    @property
    def ttl(self) -> float:
        """Seconds a resolved digest is reused."""
        return self._ttl

    def __call__(self, tag: str) -> str:
        """Return the immutable identity of the image currently named ``tag``.

        Args:
            tag: Image reference as the runner will use it.

        Returns:
            A string that changes whenever the tag points at different content.

        Raises:
            ValueError: If ``tag`` is empty or not a string.
            DigestResolutionError: If the runtime cannot resolve the tag.
        """
        if not isinstance(tag, str) or not tag.strip():
            raise ValueError(f"image tag must be a non-empty string, got {tag!r}")
        fresh = self._fresh(tag)
        if fresh is not None:
            return fresh
        with self._lock:
            flight = self._inflight.setdefault(tag, threading.Lock())
        with flight:
            # Another thread may have finished the same lookup while we waited.
            fresh = self._fresh(tag)
            if fresh is not None:
                return fresh
            # Expiry counts from when we asked, so a slow lookup never extends
            # how long a possibly-moved tag is trusted.
            asked_at = self._clock()
            digest = self._resolve(tag)
            logger.debug("%s image %s resolved to %s", self.runtime, tag, digest)
            if self._ttl > 0:
                with self._lock:
                    self._prune(asked_at)
                    self._memo[tag] = (asked_at + self._ttl, digest)
            return digest

    def invalidate(self, tag: str | None = None) -> None:
        """Forget the memoised digest of ``tag``, or of every tag when None."""
        with self._lock:
            if tag is None:
                self._memo.clear()
            else:
                self._memo.pop(tag, None)

    def _fresh(self, tag: str) -> str | None:
        now = self._clock()
        with self._lock:
            entry = self._memo.get(tag)
        if entry is not None and now < entry[0]:
            return entry[1]
        return None

    def _prune(self, now: float) -> None:
        # Called with the lock held; keeps the memo bounded by live tags.
        for stale in [t for t, (expires, _) in self._memo.items() if expires <= now]:
            del self._memo[stale]

    @abstractmethod
    def _resolve(self, tag: str) -> str:
        """Ask the runtime for the identity of ``tag`` (no memo)."""
