"""Seed 001's `orchestrator.scheduler`: styxcache's scheduler."""

from __future__ import annotations

from styxcache.scheduler import Scheduler

__all__ = ["Scheduler"]
