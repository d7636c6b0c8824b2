"""Scoped cache modes: `bypass()`, `enabled()` and `refresh()`.

The mode lives in a `contextvars.ContextVar`, so each thread and each asyncio
task sees the mode of the block it runs in: a `bypass()` in one task never
leaks into another. Blocks nest, and the innermost block always wins:

* `bypass()`: the cache is neither read nor written; the base runner runs.
* `refresh()`: the tool runs again and its entry is replaced atomically.
* `enabled()`: normal caching, even inside an outer `bypass()` or `refresh()`.

Outside any block the mode is `CacheMode.NORMAL`.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from collections.abc import Iterator

__all__ = [
    "CacheMode",
    "bypass",
    "cache_mode",
    "current_mode",
    "enabled",
    "is_bypassed",
    "is_refreshing",
    "refresh",
]


class CacheMode(str, enum.Enum):
    """How the caching runner treats executions started in the current context."""

    NORMAL = "normal"
    """Serve hits, run and store misses."""
    REFRESH = "refresh"
    """Always run, then replace the stored entry."""
    BYPASS = "bypass"
    """Neither read nor write the cache."""


_MODE: contextvars.ContextVar[CacheMode] = contextvars.ContextVar(
    "styxcache_mode", default=CacheMode.NORMAL
)


def current_mode() -> CacheMode:
    """Return the cache mode of the calling context.

    Returns:
        The mode set by the innermost active block, or `CacheMode.NORMAL`.
    """
    return _MODE.get()


@contextlib.contextmanager
def cache_mode(mode: CacheMode | str) -> Iterator[CacheMode]:
    """Run a block in the given cache mode.

    Args:
        mode: A `CacheMode` or its value (`"normal"`, `"refresh"`, `"bypass"`).

    Yields:
        The mode now in force.

    Raises:
        ValueError: If `mode` names no mode.
    """
    try:
        resolved = CacheMode(mode)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in CacheMode)
        raise ValueError(
            f"unknown cache mode {mode!r}; expected one of {valid}"
        ) from None
    token = _MODE.set(resolved)
    try:
        yield resolved
    finally:
        _MODE.reset(token)


@contextlib.contextmanager
def bypass() -> Iterator[None]:
    """Neither read nor write the cache inside the block."""
    with cache_mode(CacheMode.BYPASS):
        yield


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Cache normally inside the block, even within an outer `bypass()`."""
    with cache_mode(CacheMode.NORMAL):
        yield


@contextlib.contextmanager
def refresh() -> Iterator[None]:
    """Run tools again inside the block and replace their cached entries."""
    with cache_mode(CacheMode.REFRESH):
        yield


def is_bypassed() -> bool:
    """Return True when the calling context is inside a `bypass()` block."""
    return _MODE.get() is CacheMode.BYPASS


def is_refreshing() -> bool:
    """Return True when the calling context is inside a `refresh()` block."""
    return _MODE.get() is CacheMode.REFRESH
