"""A canonical, process-independent JSON encoding of tool parameters.

Two equal parameter values must encode to the same bytes in any process, on
any machine, whatever the insertion order of sets and dicts. Types JSON lacks
get a tagged form (`{"$set": [...]}`, `{"$bytes": "..."}`...). An object
whose only representation is its memory address is refused: keying on an
address would hand one call's result to another call that reused it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ParamEncodingError", "canonical_json", "encode_params"]

JSON = Any
"""A JSON-native value: None, bool, int, float, str, list or dict with str keys."""


class ParamEncodingError(TypeError):
    """A parameter value has no stable encoding."""


def canonical_json(value: JSON) -> str:
    """Serialise an already-encoded value with sorted keys and no whitespace.

    Args:
        value: A JSON-native value.

    Returns:
        The canonical JSON text.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _float(value: float) -> JSON:
    if math.isfinite(value):
        return value
    return {"$float": repr(value)}


def encode_params(
    value: Any,
    *,
    name: str = "",
    substitute: Callable[[Any, str], JSON | None] | None = None,
) -> JSON:
    """Encode a parameter tree canonically.

    Args:
        value: The value to encode (usually the params dict).
        name: The value's name in messages (`opt`, `opts.threshold`, `files[2]`).
        substitute: Called first on every str and path value with its name; a
            non-None result replaces the value (used to put input content
            digests in place of input paths).

    Returns:
        A JSON-native value.

    Raises:
        ParamEncodingError: If a value has no stable encoding; the message
            names the parameter.
    """
    if substitute is not None and isinstance(value, (str, os.PathLike)):
        replaced = substitute(value, name)
        if replaced is not None:
            return replaced
    # Enum members that subclass int or str are encoded as enums, below.
    if (value is None or isinstance(value, (bool, int, str))) and not isinstance(
        value, enum.Enum
    ):
        return value
    if isinstance(value, enum.Enum):
        enum_cls = type(value)
        return {
            "$enum": f"{enum_cls.__module__}.{enum_cls.__qualname__}.{value.name}",
            "value": encode_params(value.value, name=_child(name, "value")),
        }
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, os.PathLike):
        return {"$path": os.fspath(value)}
    if isinstance(value, Mapping):
        return _encode_mapping(value, name, substitute)
    if isinstance(value, list):
        return [
            encode_params(item, name=f"{name}[{i}]", substitute=substitute)
            for i, item in enumerate(value)
        ]
    if isinstance(value, tuple):
        items = [
            encode_params(item, name=f"{name}[{i}]", substitute=substitute)
            for i, item in enumerate(value)
        ]
        fields = getattr(value, "_fields", None)
        if fields is not None:  # a NamedTuple: keep its field names
            return {"$tuple": items, "fields": list(fields)}
        return {"$tuple": items}
    if isinstance(value, (set, frozenset)):
        items = [
            encode_params(item, name=f"{name}{{}}", substitute=substitute)
            for item in value
        ]
        return {"$set": sorted(items, key=canonical_json)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, complex):
        return {"$complex": [_float(value.real), _float(value.imag)]}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            "$dataclass": f"{cls.__module__}.{cls.__qualname__}",
            "fields": {
                f.name: encode_params(
                    getattr(value, f.name),
                    name=_child(name, f.name),
                    substitute=substitute,
                )
                for f in dataclasses.fields(value)
            },
        }
    return _encode_by_repr(value, name)


def _encode_mapping(
    value: Mapping[Any, Any],
    name: str,
    substitute: Callable[[Any, str], JSON | None] | None,
) -> JSON:
    # A str key starting with "$" could make a plain dict read as a tagged
    # value ({"$set": [1, 2]} vs {1, 2}); such dicts take the pairs form.
    if all(type(key) is str and not key.startswith("$") for key in value):
        return {
            key: encode_params(item, name=_child(name, key), substitute=substitute)
            for key, item in value.items()
        }
    pairs = [
        [
            encode_params(key, name=f"{name or 'params'} key {key!r}"),
            encode_params(item, name=_child(name, repr(key)), substitute=substitute),
        ]
        for key, item in value.items()
    ]
    return {"$dict": sorted(pairs, key=lambda pair: canonical_json(pair[0]))}


def _child(name: str, key: str) -> str:
    return f"{name}.{key}" if name else key


def _encode_by_repr(value: object, name: str) -> JSON:
    cls = type(value)
    text = repr(value)
    if " at 0x" in text or cls.__repr__ is object.__repr__:
        raise ParamEncodingError(
            f"param `{name or 'params'}` is a {cls.__module__}.{cls.__qualname__}"
            f" whose only representation is its memory address ({text}); a cache "
            "key cannot be built from it. Pass a plain value (str, number, list, "
            "dict, path) or give the class a deterministic __repr__."
        )
    return {"$repr": f"{cls.__module__}.{cls.__qualname__}", "value": text}
