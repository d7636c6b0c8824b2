"""Removing from a cache in use: claim by a rename, respect live leases.

Every deletion claims its target by renaming it into `.trash/` first, so
two collectors never delete the same tree and readers see a whole entry or
nothing; a `.trash` that is a planted link is never renamed into.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from styxcache.lease import judge_lease, read_lease
from styxcache.store import CacheStore, remove_tree
from styxcache.walk import housekeeping_dir

__all__ = ["LOCK_STALE_S", "claim", "delete_claimed", "lease_is_live"]

_log = logging.getLogger("styxcache.gc")

LOCK_STALE_S = 3600.0
"""A lease not renewed for this long no longer protects its entry from gc.

Far longer than any lease period: gc does not know the `lease_seconds` of the
pipelines, and keeping an entry a little too long is harmless."""


def lease_is_live(
    store: CacheStore, key: str, *, stale_after: float = LOCK_STALE_S
) -> bool:
    """Return True when a running execution may hold the lease of `key`.

    Args:
        store: The cache.
        key: The key.
        stale_after: A lease older than this many seconds is not live.
    """
    state = read_lease(store.root / store.LOCKS_DIR / f"{key}.lock")
    return state is not None and not judge_lease(state, stale_after)


def claim(store: CacheStore, path: Path) -> Path | None:
    """Rename `path` into the trash; None if someone else took it first.

    Also None when `.trash` is a link (checked right before each rename): an
    entry is never moved, nor deleted, through a planted link.
    """
    trash = housekeeping_dir(store.root, store.TRASH_DIR, create=True)
    if trash is None:
        return None
    target = trash / f"gc-{uuid.uuid4().hex}"
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    return target


def delete_claimed(claimed: Path) -> None:
    """Delete an item claimed by `claim`; a failure is logged, not raised.

    Args:
        claimed: The item, renamed into the trash.
    """
    # The item is ours alone once renamed; a failure here leaves a leftover
    # for a later sweep and must not stop the collection.
    try:
        remove_tree(claimed)
    except OSError as exc:
        _log.warning("cannot delete %s (a later gc retries): %s", claimed, exc)
