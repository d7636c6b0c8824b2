"""`styxcache demo`: the command lives with the demo pipelines, in `styxcache.demo`."""

from __future__ import annotations

from styxcache.demo.command import demo

__all__ = ["demo"]
