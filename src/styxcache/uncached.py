"""Calls that run uncached, exactly as the base runner would run them.

A bypassed call, one whose key cannot be built, one on a read-only cache, or
one with an output that leaves its folder (`../x`) runs in the base runner's
own folder. When paths inside the entry were handed out already, the folder's
files are moved there afterwards, marked uncommitted: never served.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from styxcache.calls import Call, Host
from styxcache.planning import Plan
from styxcache.store import CacheStore

__all__ = ["run_in_base_folder", "run_uncached"]

_log = logging.getLogger("styxcache")


def run_uncached(host: Host, plan: Plan, call: Call) -> None:
    """Run the call with the base execution and emit its event.

    Args:
        host: The caching execution.
        plan: The call's plan (the event's kind and reason).
        call: The `run()` call.
    """
    ok = False
    try:
        host.base.run(
            host.real_cargs(call.cargs),
            handle_stdout=call.handle_stdout,
            handle_stderr=call.handle_stderr,
        )
        ok = True
    finally:
        host.emit_run(plan, call, ok=ok)


def run_in_base_folder(
    host: Host, store: CacheStore, base_dir: Path | None, plan: Plan, call: Call
) -> None:
    """Run uncached in the base runner's own folder, after paths were handed out.

    Used when the output folder cannot be redirected for this call (an output
    name like `../x` lands where the base runner said only if the tool runs
    there; or the cache cannot stage a run). Paths inside the entry were
    handed out already: the folder's files are moved there afterwards, marked
    uncommitted (never served). The base folder itself stays, since
    `<folder>/../x` only resolves while it exists.

    Args:
        host: The caching execution.
        store: The main cache.
        base_dir: The base execution's output folder.
        plan: The plan (its key's entry paths were handed out).
        call: The `run()` call.
    """
    run_uncached(host, plan, call)
    if not host.outputs or base_dir is None:
        return
    try:
        if store.is_hit(plan.key):
            return  # the entry paths handed out hold a committed result
        store.drop_uncommitted(plan.key)
        try:
            target, staged = store.stage(plan.key), True
        except OSError:  # no usable staging folder: straight into place
            target, staged = store.entry_dir(plan.key), False
            target.mkdir(parents=True)
        for item in os.scandir(base_dir):
            shutil.move(item.path, target / item.name)
        if staged:
            store.place_uncommitted(target, plan.key, plan.reason)
        else:
            (target / store.UNCOMMITTED).write_text(plan.reason + "\n")
    except OSError as exc:
        _log.warning(
            "%s: cannot move outputs from %s to %s: %s",
            host.tool,
            base_dir,
            plan.entry,
            exc,
        )
