"""Content-addressed caching middleware for Styx runners."""

from __future__ import annotations

from styxcache.modes import bypass, enabled, is_bypassed, refresh

__all__ = ["bypass", "enabled", "is_bypassed", "refresh"]
