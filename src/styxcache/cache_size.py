"""A running estimate of a cache's total size, kept by its runner between commits.

`gc_trim.trim_after_commit` scans every entry only now and then; between
scans it adds each commit's size to the last total. The estimate is state of
one runner (held by its `ExecutionServices`), never of the module: two
runners on one cache each keep their own, and a test can start afresh.
"""

from __future__ import annotations

import threading

__all__ = ["CacheSizeEstimate"]


class CacheSizeEstimate:
    """The last scan's total of a cache, plus what was committed since.

    Thread-safe: the executions of one runner commit from many threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total: int | None = None
        self._scanned = 0.0

    def current(self, now: float, rescan_after: float) -> int | None:
        """Return the estimate, or None when a scan is due (none yet, or too old).

        Args:
            now: Unix time.
            rescan_after: Seconds after a scan when the next one is due.
        """
        with self._lock:
            if self._total is None or now - self._scanned >= rescan_after:
                return None
            return self._total

    def add(self, size: int) -> None:
        """Count a commit of `size` bytes since the last scan.

        Args:
            size: Bytes.
        """
        with self._lock:
            if self._total is not None:
                self._total += size

    def scanned(self, total: int, when: float) -> None:
        """Restart from a scan's total.

        Args:
            total: Bytes found.
            when: Unix time of the scan.
        """
        with self._lock:
            self._total, self._scanned = total, when
