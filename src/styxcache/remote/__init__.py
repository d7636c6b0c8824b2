"""The remote tier: a cache on object storage (S3, GCS, Azure) behind the local one.

`CachingRunner(base, cache_dir, remote="s3://bucket/prefix")` looks a key up
remotely on a local miss and uploads each entry it commits; `styxcache push`
and `styxcache pull` move entries in bulk. See docs/how-to/remote-cache.md.
"""

from __future__ import annotations

from styxcache.remote.connect import ENV_REMOTE, ENV_REMOTE_WRITE, check_url
from styxcache.remote.errors import (
    DamagedEntryError,
    RemoteConfigError,
    RemoteError,
)
from styxcache.remote.tier import Fetched, RemoteOutcome, RemoteTier, merge_outcomes

__all__ = [
    "ENV_REMOTE",
    "ENV_REMOTE_WRITE",
    "DamagedEntryError",
    "Fetched",
    "RemoteConfigError",
    "RemoteError",
    "RemoteOutcome",
    "RemoteTier",
    "check_url",
    "merge_outcomes",
]
