"""Content-addressed caching middleware for Styx runners.

Wrap any Styx runner and repeated tool calls with the same inputs are served
from a cache directory instead of running again:

```python
from styxdefs import LocalRunner, set_global_runner
from styxcache import CachingRunner

set_global_runner(CachingRunner(LocalRunner(), "/tmp/styx-cache"))
```

`__all__` lists what a program needs from the cache; `styxcache.remote`,
`styxcache.backends` and `styxcache.scheduler` export their own, and other
modules are internal. Every error styxcache raises derives from
`StyxcacheError`.

The names are imported on first use (PEP 562): a program, or a command such
as `styxcache ls`, that needs only part of the package does not pay for
importing the rest.
"""

from __future__ import annotations

import importlib
import typing
import warnings

if typing.TYPE_CHECKING:
    from styxcache.canonical import register_encoder
    from styxcache.errors import (
        CacheDirectoryError,
        CacheReadOnlyError,
        ParamEncodingError,
        RemoteConfigError,
        StyxcacheError,
        UnkeyableInputError,
        UntrustedEntryError,
    )
    from styxcache.events import CacheEvent, CacheStats, collect_events
    from styxcache.hashing import ContentHasher, InputHasher
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
    from styxcache.remote import RemoteTier
    from styxcache.runner import CachingRunner, use_cache
    from styxcache.shared_cache import prepare_shared_cache
    from styxcache.store import CacheStore

_HOMES: dict[str, str] = {
    "register_encoder": "styxcache.canonical",
    "CacheDirectoryError": "styxcache.errors",
    "CacheReadOnlyError": "styxcache.errors",
    "ParamEncodingError": "styxcache.errors",
    "RemoteConfigError": "styxcache.errors",
    "StyxcacheError": "styxcache.errors",
    "UnkeyableInputError": "styxcache.errors",
    "UntrustedEntryError": "styxcache.errors",
    "CacheEvent": "styxcache.events",
    "CacheStats": "styxcache.events",
    "collect_events": "styxcache.events",
    "ContentHasher": "styxcache.hashing",
    "InputHasher": "styxcache.hashing",
    "Manifest": "styxcache.manifest",
    "OutputRecord": "styxcache.manifest",
    "OutsideRecord": "styxcache.manifest",
    "bypass": "styxcache.modes",
    "cache_mode": "styxcache.modes",
    "CacheMode": "styxcache.modes",
    "current_mode": "styxcache.modes",
    "enabled": "styxcache.modes",
    "is_bypassed": "styxcache.modes",
    "refresh": "styxcache.modes",
    "CachePolicy": "styxcache.policy",
    "ImageDigestResolver": "styxcache.policy",
    "parse_size": "styxcache.policy",
    "trust_tag": "styxcache.policy",
    "RemoteTier": "styxcache.remote",
    "CachingRunner": "styxcache.runner",
    "use_cache": "styxcache.runner",
    "prepare_shared_cache": "styxcache.shared_cache",
    "CacheStore": "styxcache.store",
}
"""Each public name and the module it is imported from (errors from
`styxcache.errors`, the cheapest)."""

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
    "Manifest",
    "OutputRecord",
    "OutsideRecord",
    "ParamEncodingError",
    "RemoteConfigError",
    "RemoteTier",
    "StyxcacheError",
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

# Exported by 1.0's development releases, internal since: still served, with a
# DeprecationWarning naming its home, for one more release.
_DEPRECATED = {"LeaseOwner": "styxcache.lease"}

if not typing.TYPE_CHECKING:  # mypy sees the imports above, not a catch-all

    def __getattr__(name: str) -> object:
        """Import a public name, or a submodule, on first use."""
        home = _HOMES.get(name)
        if home is not None:
            value = getattr(importlib.import_module(home), name)
            globals()[name] = value  # later lookups skip this function
            return value
        if name in _DEPRECATED:
            warnings.warn(
                f"{__name__}.{name} is internal and no longer exported; import "
                f"it from {_DEPRECATED[name]} (this alias will be removed)",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(_DEPRECATED[name]), name)
        if not name.startswith("_"):
            # `import styxcache; styxcache.store.CacheStore` worked when this
            # module imported everything: keep it working.
            try:
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
