"""The remote tier: a cache on object storage (S3, GCS, Azure) behind the local one.

`CachingRunner(base, cache_dir, remote="s3://bucket/prefix")` looks a key up
remotely on a local miss and uploads each entry it commits; `styxcache push`
and `styxcache pull` move entries in bulk. See docs/how-to/remote-cache.md.

Modules: `connect` (URLs, credentials, the obstore client), `errors` (client
errors mapped to `RemoteError`), `envelope` (an entry's remote form),
`blobs` (file transfers, multipart and ranged; filling a staged entry),
`tier` (`RemoteTier`: look-ups, downloads, uploads), `health` (the pause
after a failure), `outcomes` (what a step's event reports), `sync` (push
and pull).
"""

from __future__ import annotations

from styxcache.remote.connect import ENV_REMOTE, ENV_REMOTE_WRITE, check_url
from styxcache.remote.errors import (
    DamagedEntryError,
    RemoteConfigError,
    RemoteError,
)
from styxcache.remote.outcomes import Fetched, RemoteOutcome, merge_outcomes
from styxcache.remote.tier import RemoteTier

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
