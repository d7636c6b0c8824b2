"""`styxcache demo`: the main job, a small real pipeline run twice."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Run a small pipeline twice through the cache and show hits."""
