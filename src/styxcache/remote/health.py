"""Whether a remote tier may be asked now: one warning per outage, then a pause.

Pipeline steps never fail because of the remote: after a failure it is left
alone for `COOL_DOWN_S` (no request, no wait), the first failure of an outage
is a warning and the later ones are debug messages, and the first success
after it says the remote is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["COOL_DOWN_S", "RemoteHealth"]

_log = logging.getLogger("styxcache.remote")

COOL_DOWN_S = 60.0
"""After a failure the remote is left alone this long (no request, no wait)."""


class RemoteHealth:
    """The outage state of one remote.

    Args:
        url: The remote, for messages.
        clock: Monotonic seconds (tests inject a fake one).
    """

    def __init__(self, url: str, clock: Callable[[], float]) -> None:
        self.url = url
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._warned = False

    def after_fork(self) -> None:
        """Replace the lock, which a forked child may have inherited held."""
        self._lock = threading.Lock()

    def available(self) -> bool:
        """Return False while the pause after a failure lasts."""
        with self._lock:
            return self._clock() >= self._down_until

    def failed(self, what: str, exc: BaseException) -> None:
        """Note a failure of the remote (network, credentials, timeout).

        Args:
            what: What was being done (`lookup`, `upload`).
            exc: The error.
        """
        with self._lock:
            self._down_until = self._clock() + COOL_DOWN_S
            first = not self._warned
            self._warned = True
        detail = str(exc)
        if first:
            _log.warning(
                "remote cache %s failed (%s: %s); continuing with the local cache "
                "only, retrying in %.0fs",
                self.url,
                what,
                detail,
                COOL_DOWN_S,
            )
        else:
            _log.debug("remote cache %s failed again (%s: %s)", self.url, what, detail)

    def succeeded(self) -> None:
        """Note a request that worked (ends an outage)."""
        with self._lock:
            recovered = self._warned
            self._warned = False
        if recovered:
            _log.info("remote cache %s is reachable again", self.url)

    @staticmethod
    def unexpected(doing: str, exc: BaseException) -> None:
        """Warn about an error that is not the remote's (a local disk, a bug).

        Args:
            doing: What failed, e.g. "cannot upload entry 0a1b2c to s3://...".
            exc: The error.
        """
        _log.warning("%s (%s: %s)", doing, type(exc).__name__, exc)
