"""Content-addressed caching middleware for Styx runners.

Wrap any Styx runner and repeated tool calls with the same inputs are served
from a cache directory instead of running again:

```python
from styxdefs import LocalRunner, set_global_runner
from styxcache import CachingRunner

set_global_runner(CachingRunner(LocalRunner(), "/tmp/styx-cache"))
```
"""

from __future__ import annotations

from styxcache.canonical import ParamEncodingError, register_encoder
from styxcache.events import CacheEvent, CacheStats, collect_events
from styxcache.execution import CacheReadOnlyError
from styxcache.hashing import ContentHasher, InputHasher, UnkeyableInputError
from styxcache.lease import LeaseOwner
from styxcache.manifest import Manifest, OutputRecord, OutsideRecord
from styxcache.modes import (
    CacheMode,
    bypass,
    cache_mode,
    current_mode,
    enabled,
    is_bypassed,
    refresh,
)
from styxcache.policy import CachePolicy, ImageDigestResolver, parse_size, trust_tag
from styxcache.remote import RemoteConfigError, RemoteTier
from styxcache.runner import CacheDirectoryError, CachingRunner, use_cache
from styxcache.store import CacheStore
from styxcache.trust import UntrustedEntryError, prepare_shared_cache

__all__ = [
    "CacheDirectoryError",
    "CacheEvent",
    "CacheMode",
    "CachePolicy",
    "CacheReadOnlyError",
    "CacheStats",
    "CacheStore",
    "CachingRunner",
    "ContentHasher",
    "ImageDigestResolver",
    "InputHasher",
    "LeaseOwner",
    "Manifest",
    "OutputRecord",
    "OutsideRecord",
    "ParamEncodingError",
    "RemoteConfigError",
    "RemoteTier",
    "UnkeyableInputError",
    "UntrustedEntryError",
    "bypass",
    "cache_mode",
    "collect_events",
    "current_mode",
    "enabled",
    "is_bypassed",
    "parse_size",
    "prepare_shared_cache",
    "refresh",
    "register_encoder",
    "trust_tag",
    "use_cache",
]
