"""Planning a call: settle its key and decide where its result comes from.

The plan is made once per execution, when its key is settled (the first
`output_file()`, `mutable_copy()` or `run()`): the key payload, whether the
entry is served from the main cache, a read-only tier or the remote tier,
replaced (refresh, `max_age`), computed (a miss, with the nearest earlier
entry of the tool and what differs from it), or left to the base runner
(`where="base"`: bypassed, unkeyable, untrusted, read-only cache).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Literal

from styxdefs import Metadata

from styxcache.canonical import ParamEncodingError
from styxcache.errors import CacheReadOnlyError
from styxcache.events import EventKind
from styxcache.explain import nearest_entry
from styxcache.fingerprint import describe_fingerprint_change
from styxcache.hashing import UnkeyableInputError
from styxcache.key import KeyPayload, RegisteredInput, build_payload
from styxcache.manifest import Manifest
from styxcache.modes import CacheMode
from styxcache.services import ExecutionServices

__all__ = ["Plan", "Request", "Where", "check_stored", "make_plan"]

_log = logging.getLogger("styxcache")

Where = Literal["cache", "tier", "base"]
"""Where the result lives: the main cache's entry, a read-only tier's entry,
or nowhere (the call runs uncached, as the base runner would run it)."""

EXPLAIN_CANDIDATES = 4
"""Newest entries of a tool compared on a miss: enough to find the sibling run
that differs in one param, few enough to keep a miss cheap (each costs a
manifest read and a comparison; `styxcache explain` compares 256)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an execution decided when its key was settled.

    Attributes:
        where: See `Where`.
        key: The cache key ("" when none could be built).
        payload: The key payload.
        manifest: The entry to serve (a provisional hit), if any.
        entry: The entry folder output paths point into.
        replace: The tool runs and replaces an existing entry.
        kind: The event this call produces unless it changes its mind.
        reason: Why it is a miss, refresh or bypass, in one sentence.
        signatures: Quick-check stat signatures of the inputs, in order.
        digests: Content digests of the inputs, in order (as in the key).
        remote: What the remote tier did (`remote.RemoteOutcome`).
        nearest: For a miss, the nearest earlier entry's key ("" for none).
        differences: What differs from it, as short sentences.
    """

    where: Where
    key: str = ""
    payload: KeyPayload | None = None
    manifest: Manifest | None = None
    entry: Path | None = None
    replace: bool = False
    kind: EventKind = "miss"
    reason: str = ""
    signatures: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    remote: str = ""
    nearest: str = ""
    differences: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Request:
    """What the execution knows about the call when its key is settled.

    Attributes:
        metadata: The tool's metadata.
        tool: `package/id`.
        mode: The cache mode in force when the execution started.
        params: The params given to `params()`, if any.
        inputs: The registered inputs, in order.
        container_tag: The base execution's image tag, if it runs one.
        redirectable: Whether the base execution's output folder can be
            pointed into the cache.
        inner_type: The base execution's class name, for messages.
    """

    metadata: Metadata
    tool: str
    mode: CacheMode
    params: dict[str, Any] | None
    inputs: tuple[RegisteredInput, ...]
    container_tag: str | None
    redirectable: bool
    inner_type: str


def make_plan(services: ExecutionServices, request: Request) -> Plan:
    """Settle a call's key and decide where its result comes from.

    Args:
        services: The runner's services.
        request: The call.

    Returns:
        The plan.

    Raises:
        ParamEncodingError: A param has no lossless encoding, under
            `unkeyable_params="error"`.
        UnkeyableInputError: Likewise for an input.
        FileNotFoundError: An input vanished before it could be digested.
        CacheReadOnlyError: A miss on a read-only cache, under
            `read_only_miss="error"`.
    """
    if request.mode is CacheMode.BYPASS:
        return Plan("base", kind="bypass", reason="bypassed")
    if not request.redirectable:
        _log.warning(
            "%s: the base execution (%s) has no output_dir to redirect; "
            "running uncached",
            request.tool,
            request.inner_type,
        )
        return Plan("base", kind="bypass", reason="base runner cannot be redirected")
    try:
        plan = _keyed(services, request)
    except (ParamEncodingError, UnkeyableInputError) as exc:
        # Transparency: a call whose key cannot be built losslessly still
        # runs, exactly as the base runner would, just without the cache.
        if services.policy.unkeyable_params == "error":
            raise
        if services.warn_once(f"unkeyable:{request.tool}"):
            _log.warning(
                "%s: not cached (runs as the base runner would): %s",
                request.tool,
                exc,
            )
        return Plan("base", kind="bypass", reason=f"not keyable: {exc}")
    if request.mode is CacheMode.REFRESH:
        plan = dataclasses.replace(
            plan, replace=True, kind="refresh", reason="refresh() requested"
        )
    else:
        plan = _look_up(services, request, plan)
        if plan.manifest is not None or plan.where == "base":
            return plan
    if not services.writable:
        return _read_only_miss(services, request, plan)
    return plan


def _keyed(services: ExecutionServices, request: Request) -> Plan:
    """Digest the inputs and build the key payload: a plan to compute it."""
    policy = services.policy
    signatures: list[str] = []
    digests: list[str] = []

    def digest_of(path: Path) -> str:
        value, signature = services.digest(path)
        signatures.append(signature)
        return value

    for registered in request.inputs:
        try:
            digests.append(digest_of(registered.hashed_path))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{request.tool}: input not found: {registered.hashed_path}"
            ) from None
    tag = request.container_tag
    payload = build_payload(
        metadata=request.metadata,
        image=policy.image_digest(tag) if tag else None,
        env=policy.env_for_key(),
        params=request.params,
        inputs=list(zip(request.inputs, digests, strict=True)),
        extra=policy.extra,
        path_params=policy.path_params,
        hash_path=digest_of,
    )
    key = payload.key()
    return Plan(
        "cache",
        key=key,
        payload=payload,
        entry=services.store.entry_dir(key),
        signatures=tuple(signatures),
        digests=tuple(digests),
    )


def _look_up(services: ExecutionServices, request: Request, plan: Plan) -> Plan:
    """Find the key's entry: main cache, read-only tiers, remote tier; or explain."""
    store = services.store
    found = services.lookup(store, plan.key, quarantine=services.writable)
    if found.untrusted:
        # Not ours to replace or delete: the result stays with the base
        # runner (trust.py warned once, naming the culprit).
        return Plan("base", key=plan.key, payload=plan.payload, reason=found.reason)
    if found.manifest is not None:
        max_age = services.policy.max_age_s
        if max_age is not None and time.time() - found.manifest.created > max_age:
            return dataclasses.replace(
                plan,
                replace=True,
                kind="refresh",
                reason=f"entry older than max_age ({max_age:.0f}s)",
            )
        return dataclasses.replace(plan, manifest=found.manifest)
    served = _from_tier(services, plan)
    if served is not None:
        return served
    fetched = services.fetch_remote(plan.key)
    if fetched is not None:
        plan = dataclasses.replace(plan, remote=fetched.outcome)
        if fetched.manifest is not None:
            return dataclasses.replace(plan, manifest=fetched.manifest)
    if found.damaged:
        return dataclasses.replace(plan, reason=found.reason)
    assert plan.payload is not None
    return _explained(services, request.tool, plan, plan.payload)


def _from_tier(services: ExecutionServices, plan: Plan) -> Plan | None:
    """A plan serving the key from a read-only tier (copied in if possible)."""
    tier = services.find_in_tiers(plan.key)
    if tier is None:
        return None
    tier_store, manifest = tier
    if services.writable and services.store.import_entry(tier_store, plan.key):
        copied = services.lookup(services.store, plan.key, quarantine=True)
        if copied.manifest is not None:
            return dataclasses.replace(plan, manifest=copied.manifest)
    return dataclasses.replace(
        plan, where="tier", entry=tier_store.entry_dir(plan.key), manifest=manifest
    )


def _explained(
    services: ExecutionServices, tool: str, plan: Plan, payload: KeyPayload
) -> Plan:
    """Name the nearest earlier entry of this tool and what differs from it."""
    found = nearest_entry(
        services.store, tool, payload.to_json(), limit=EXPLAIN_CANDIDATES
    )
    if found is None:
        return dataclasses.replace(plan, reason="no earlier entry of this tool")
    key, differences = found
    return dataclasses.replace(
        plan,
        reason=f"nearest entry {key[:12]}: "
        + "; ".join(differences or ["identical key"]),
        nearest=key,
        differences=tuple(differences),
    )


def _read_only_miss(services: ExecutionServices, request: Request, plan: Plan) -> Plan:
    """A miss the read-only main cache cannot store: run uncached, or refuse."""
    root = services.store.root
    if services.policy.read_only_miss == "error":
        raise CacheReadOnlyError(
            f"{request.tool}: cache miss, and the cache directory "
            f"{root} is read-only (CachePolicy(read_only_miss='error'))"
        )
    _log.warning(
        "%s: cache miss and %s is read-only; running uncached", request.tool, root
    )
    return Plan(
        "base",
        key=plan.key,
        payload=plan.payload,
        kind="miss",
        reason="read-only cache",
    )


def check_stored(
    plan: Plan,
    stored: Manifest,
    fingerprint: tuple[str, dict[str, str]],
    *,
    outside: str,
    tool: str,
    check_command: bool,
) -> Plan:
    """At `run()`, turn a provisional hit into a refresh if the stored run differs.

    The tool runs again when its outside outputs changed, or (with
    `check_command`) when its command line or executable did.

    Args:
        plan: The plan, with the entry to serve.
        stored: That entry's manifest.
        fingerprint: This call's run-time fingerprint and its parts.
        outside: Why the outside outputs do not match ("" when they do).
        tool: `package/id`.
        check_command: `CachePolicy.check_command`.

    Returns:
        The plan to follow.
    """
    current, parts = fingerprint
    if outside and plan.where == "cache":
        return dataclasses.replace(plan, replace=True, kind="refresh", reason=outside)
    if stored.fingerprint == current:
        return plan
    change = describe_fingerprint_change(stored.fingerprint_parts, parts)
    if plan.where == "tier":
        # A read-only tier is only served when the main cache cannot take a
        # copy, so there is nowhere to store a rerun either.
        _log.warning(
            "%s: the read-only cache entry %s was made by another command "
            "line or executable (%s); serving it as it is",
            tool,
            plan.key[:12],
            change,
        )
        return plan
    if check_command:
        return dataclasses.replace(plan, replace=True, kind="refresh", reason=change)
    return plan
