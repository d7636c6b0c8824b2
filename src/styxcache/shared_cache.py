"""Laying out a cache folder that several Unix users share.

Its own module, above both the store (which names the cache's folders) and the
trust model (which the store consults on every hit), so neither imports the
other. The rules the layout serves are in `styxcache.trust`.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

from styxcache.catalog import CATALOG_DIR
from styxcache.events import EVENTS_DIR
from styxcache.store import CacheStore

__all__ = ["prepare_shared_cache"]


def prepare_shared_cache(root: Path | str, group: str | int | None = None) -> Path:
    """Lay out a cache folder for several users, as its owner.

    Creates the cache folder, its 256 shard folders and its working folders
    (`.incoming`, `.locks`, ...) owned by you, group-writable, setgid and
    sticky (mode 3775, like `/tmp` for a group): every member can add entries;
    only you (the cache owner) and root can move another member's aside, and
    only root can delete them. Run it once, as the account that owns the cache; trim the
    cache with `gc` run by root (sealed entries can be deleted only by their
    committer and root).

    Args:
        root: The cache folder (created if needed; may exist).
        group: The group sharing it (name or gid); None keeps the folder's.

    Returns:
        The cache folder.

    Raises:
        ValueError: If the group does not exist.
    """
    path = Path(root)
    gid = -1
    if isinstance(group, str):
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group: {group!r}") from None
    elif isinstance(group, int):
        gid = group
    names = [f"{i:02x}" for i in range(256)]
    names += [*CacheStore.WORK_DIRS, EVENTS_DIR, CATALOG_DIR]
    # Leases, the tool index and event files are taken over, pruned and
    # shared by every member: losing them costs a rerun, never a wrong hit,
    # so those folders are not sticky (a sticky one would stop a member
    # breaking a dead colleague's lease). Only the shards and the staging
    # folder, where entries live and are built, are sticky.
    cooperative = set(names[256:]) - {CacheStore.STAGING_DIR}
    path.mkdir(parents=True, exist_ok=True)
    for folder in (path, *(path / name for name in names)):
        folder.mkdir(exist_ok=True)
        if gid >= 0:
            os.chown(folder, -1, gid)
        os.chmod(folder, 0o2775 if folder.name in cooperative else 0o3775)
    return path
