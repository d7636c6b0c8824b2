"""What the remote tier did for one pipeline step, as its event reports it."""

from __future__ import annotations

from typing import Literal

from styxcache.manifest import Manifest

__all__ = ["Fetched", "RemoteOutcome", "merge_outcomes"]

RemoteOutcome = Literal[
    "", "hit", "miss", "uploaded", "present", "damaged", "error", "offline"
]
"""What the remote tier did for one execution (`CacheEvent.remote`):

* `hit`: the entry was downloaded, verified and served;
* `miss`: the remote had no entry (and nothing was uploaded);
* `uploaded`: the result was uploaded after the run;
* `present`: another writer had stored the entry first;
* `damaged`: the remote entry failed verification and was not served;
* `error`: the remote failed (network, credentials, timeout);
* `offline`: skipped, the remote failed a moment ago;
* empty: no remote tier, or it was not needed (a local hit).
"""

_RANK: dict[str, int] = {
    "": 0,
    "miss": 1,
    "present": 2,
    "uploaded": 3,
    "hit": 3,
    "offline": 4,
    "error": 5,
    "damaged": 6,
}


def merge_outcomes(first: str, second: str) -> str:
    """Return the outcome an event reports when two steps each had one.

    Args:
        first: The lookup's outcome.
        second: The upload's outcome.

    Returns:
        The more telling of the two (damage and failures win).
    """
    return first if _RANK.get(first, 0) >= _RANK.get(second, 0) else second


class Fetched:
    """The result of a lookup for a pipeline step.

    Attributes:
        manifest: The manifest of the entry now in the local cache, or None.
        outcome: See `RemoteOutcome`.
    """

    __slots__ = ("manifest", "outcome")

    def __init__(self, manifest: Manifest | None, outcome: str) -> None:
        self.manifest = manifest
        self.outcome = outcome
