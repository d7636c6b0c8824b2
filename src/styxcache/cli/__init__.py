"""The `styxcache` command line: cache commands, `demo`, `worker` and `schedule`."""

from __future__ import annotations

from styxcache.cli.app import main

__all__ = ["main"]
