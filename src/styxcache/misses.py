"""Why did it run again: explanations of recent misses from the event files.

A miss's event records, at the time, the nearest earlier entry of its tool
and the key fields that differed. When the missed execution's own entry is
still in the cache, the comparison is made again from the manifests, against
the nearest entry of the same tool created before it, so the answer stays
right after later runs.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from styxcache.events import CacheEvent, read_events
from styxcache.explain import nearest_entry
from styxcache.manifest import Manifest, ManifestError
from styxcache.store import CacheStore

__all__ = ["MissExplanation", "explain_misses"]

_CANDIDATES = 256
"""How many recent entries of a tool are compared with a miss."""


@dataclasses.dataclass(frozen=True)
class MissExplanation:
    """One miss (or refresh) and what differed from the nearest earlier entry.

    Attributes:
        time: When the miss happened (Unix time).
        kind: `"miss"` or `"refresh"`.
        tool: `package/id`.
        key: The missed key.
        recorded: The reason recorded in the event at the time.
        nearest: Key of the nearest earlier entry of the tool ("" for none).
        differences: Key fields that differ from it, as short sentences.
        recomputed: True when `nearest`/`differences` come from the manifests
            now in the cache; False when taken from the recorded reason.
        absent: Declared outputs the run did not write, when it was committed
            (they are served absent too; docs/design/transparency.md).
    """

    time: float
    kind: str
    tool: str
    key: str
    recorded: str
    nearest: str
    differences: tuple[str, ...]
    recomputed: bool
    absent: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """Return the explanation as a JSON-ready dictionary."""
        return {
            **dataclasses.asdict(self),
            "differences": list(self.differences),
            "absent": list(self.absent),
        }


def _matches(tool: str, pattern: str | None) -> bool:
    return pattern is None or tool == pattern or fnmatch.fnmatchcase(tool, pattern)


def _read(store: CacheStore, key: str) -> Manifest | None:
    try:
        return store.manifests.read(store.entry_dir(key) / store.MANIFEST)
    except (ManifestError, ValueError):
        return None


def _explain_one(store: CacheStore, event: CacheEvent) -> MissExplanation:
    # The facts recorded at the time, unless the manifests tell them again.
    nearest, differences, recomputed = event.nearest[:12], event.differences, False
    new = _read(store, event.key)
    found = None
    if new is not None:
        found = nearest_entry(
            store,
            event.tool,
            new.payload,
            limit=_CANDIDATES,
            skip_key=event.key,
            # The event is written when the run ends; the miss happened when
            # the call started. An entry committed after that (by another
            # process while this tool ran) is not what it missed against.
            created_before=min(event.time - event.duration_s, new.created),
        )
    if found is not None:
        nearest, recomputed = found[0], True
        differences = tuple(found[1])
    return MissExplanation(
        event.time,
        event.kind,
        event.tool,
        event.key,
        event.reason,
        nearest,
        differences,
        recomputed,
    )


def explain_misses(
    store: CacheStore,
    *,
    last: int = 10,
    tool: str | None = None,
    since: float | None = None,
) -> list[MissExplanation]:
    """Explain the most recent misses and refreshes, newest first.

    Args:
        store: The cache.
        last: At most this many.
        tool: Only this tool (`package/id`, or a shell-style glob).
        since: Only misses at or after this Unix time.

    Returns:
        The explanations.
    """
    events = [
        e
        for e in read_events(store.root, since=since)
        if e.kind in ("miss", "refresh") and e.key and _matches(e.tool, tool)
    ]
    events.sort(key=lambda e: e.time, reverse=True)
    return [_with_absent(store, _explain_one(store, e)) for e in events[: max(0, last)]]


def _with_absent(store: CacheStore, item: MissExplanation) -> MissExplanation:
    made = _read(store, item.key)
    if made is None or not made.absent:
        return item
    return dataclasses.replace(item, absent=made.absent)
