"""Explanations: which key fields differ between a miss and an earlier entry."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from styxcache.canonical import canonical_json
from styxcache.store import CacheStore

__all__ = ["describe_differences", "nearest_entry"]

_MAX_SHOWN = 60


def _short(value: Any) -> str:
    kind = type(value)
    text: str
    if kind is str:
        text = value
    elif kind is int or (kind is float and math.isfinite(value)):
        text = repr(value)  # what JSON writes, without its encoder's set-up
    else:
        text = canonical_json(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _image(value: Any) -> str:
    """An image identity short enough to read, long enough to tell apart."""
    if not value:
        return "(no image)"
    text = str(value)
    algorithm, sep, digest = text.partition(":")
    if sep and len(digest) > 16:
        return f"{algorithm}:{digest[:16]}"
    return _short(text)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and not any(k.startswith("$") for k in value):
        for key in sorted(value):
            yield from _flatten(value[key], f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, value


def _flat(params: Any) -> dict[str, Any]:
    return dict(_flatten(params))


def _params(
    old: Any,
    new: Any,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> list[str]:
    if before is None:
        before = _flat(old)
    if after is None:
        after = _flat(new)
    out: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            out.append(f"param `{name}` added: {_short(after[name])}")
        elif name not in after:
            out.append(f"param `{name}` removed (was {_short(before[name])})")
        elif before[name] != after[name]:
            a, b = before[name], after[name]
            if _same_reference(a, b):
                continue  # the input and path-param records tell what changed
            out.append(f"param `{name}` {_short(a)} -> {_short(b)}")
    return out


def _same_reference(a: Any, b: Any) -> bool:
    return any(
        isinstance(a, dict) and isinstance(b, dict) and tag in a and tag in b
        for tag in ("$input", "$path_param")
    )


def _inputs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for index in range(max(len(old), len(new))):
        if index >= len(old):
            out.append(f"input `{new[index].get('param') or new[index]['name']}` added")
            continue
        if index >= len(new):
            out.append(
                f"input `{old[index].get('param') or old[index]['name']}` removed"
            )
            continue
        a, b = old[index], new[index]
        label = b.get("param") or b["name"]
        if a["name"] != b["name"]:
            out.append(f"input `{label}` file name {a['name']} -> {b['name']}")
        if a["digest"] != b["digest"]:
            what = "folder content" if b.get("resolve_parent") else "content"
            out.append(f"input `{label}` {what} changed")
        for flag in ("resolve_parent", "mutable"):
            if a.get(flag) != b.get(flag):
                out.append(f"input `{label}` {flag} {a.get(flag)} -> {b.get(flag)}")
    return out


def _env(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if a is None:
            out.append(f"env {name} added")
        elif b is None:
            out.append(f"env {name} removed")
        else:
            out.append(f"env {name} {_short(a)} -> {_short(b)}")
    return out


def describe_differences(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    old_params: dict[str, Any] | None = None,
    new_params: dict[str, Any] | None = None,
) -> list[str]:
    """List, as short sentences, the key fields that differ between two payloads.

    Args:
        old: The payload of an earlier entry.
        new: The payload of the execution that missed.
        old_params: `old`'s params already flattened (a miss compares its
            payload with several entries: flattening each once halves the
            cost of explaining it).
        new_params: `new`'s params already flattened.

    Returns:
        Sentences such as "param `fractional_intensity` 0.5 -> 0.4",
        "input `infile` content changed", "image digest changed:
        sha256:0a1b... -> sha256:9f8e...",
        "env FSLOUTPUTTYPE added"; empty when the payloads are equal.
    """
    out: list[str] = []
    if old.get("format") != new.get("format"):
        out.append("cache key format changed (styxcache upgrade)")
    if old.get("tool") != new.get("tool"):
        out.append(
            f"tool metadata {_short(old.get('tool'))} -> {_short(new.get('tool'))}"
        )
    if old.get("image") != new.get("image"):
        out.append(
            f"image digest changed: {_image(old.get('image'))} -> "
            f"{_image(new.get('image'))}"
        )
    out += _env(old.get("env") or {}, new.get("env") or {})
    out += _inputs(list(old.get("inputs") or []), list(new.get("inputs") or []))
    out += _params(old.get("params"), new.get("params"), old_params, new_params)
    old_paths, new_paths = old.get("path_params") or {}, new.get("path_params") or {}
    for name in sorted(old_paths.keys() | new_paths.keys()):
        if old_paths.get(name) != new_paths.get(name):
            out.append(f"path param `{name}` content changed")
    if old.get("extra") != new.get("extra"):
        out.append(
            f"policy extra {_short(old.get('extra'))} -> {_short(new.get('extra'))}"
        )
    return out


def nearest_entry(
    store: CacheStore,
    tool: str,
    payload: Mapping[str, Any],
    *,
    limit: int,
    skip_key: str | None = None,
    created_before: float | None = None,
) -> tuple[str, list[str]] | None:
    """Find the recorded entry of a tool whose key payload is closest to `payload`.

    Args:
        store: The cache.
        tool: `package/id`.
        payload: The key payload of the execution that missed.
        limit: How many of the tool's newest entries to compare.
        skip_key: An entry never to pick (the miss's own, once committed).
        created_before: Only entries committed before this Unix time.

    Returns:
        `(key, differences)` with the fewest differences (the newest among
        equals), or None when the tool has no readable earlier entry.
    """
    best: tuple[tuple[int, float], str, list[str]] | None = None
    new_params = _flat(payload.get("params"))
    for key in store.recent_keys(tool, limit):
        if key == skip_key:
            continue
        try:
            old = store.manifests.read(store.entry_dir(key) / store.MANIFEST)
        except (ValueError, OSError):
            continue
        if created_before is not None and old.created >= created_before:
            continue
        differences = describe_differences(
            old.payload,
            payload,
            old_params=_flat_of(key, old.payload),
            new_params=new_params,
        )
        rank = (len(differences), -old.created)
        if best is None or rank < best[0]:
            best = (rank, key, differences)
        if len(differences) <= 1:
            # Another entry differs in at least one field (its key differs),
            # and the ones after this are older: none can rank better.
            break
    return None if best is None else (best[1], best[2])


_FLAT_CACHE: dict[str, tuple[Mapping[str, Any], dict[str, Any]]] = {}
_FLAT_CACHE_SIZE = 4096


def _flat_of(key: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's params flattened, remembered while its parsed payload is.

    The store's `ManifestCache` hands back the same parsed manifest while the file is
    unchanged, so the payload object itself tells whether the entry is the
    one flattened before (it is kept referenced here, so its id is never
    reused).
    """
    known = _FLAT_CACHE.get(key)
    if known is not None and known[0] is payload:
        return known[1]
    flat = _flat(payload.get("params"))
    if len(_FLAT_CACHE) >= _FLAT_CACHE_SIZE:
        _FLAT_CACHE.clear()  # a bound, not an LRU: refilled by the next misses
    _FLAT_CACHE[key] = (payload, flat)
    return flat
