"""A canonical, process-independent JSON encoding of tool parameters.

Two equal parameter values must encode to the same bytes in any process, on
any machine, whatever the insertion order of sets and dicts. Types JSON lacks
get a tagged form (`{"$set": [...]}`, `{"$bytes": "..."}`...).

Only lossless encodings are used. A `repr` is never a key: numpy prints
arrays truncated and rounded, and a class may print the same text for
different values, so two calls would share one result. A value of a type
this module does not know is refused, naming the param, unless the caller
registered an encoder for its type with `register_encoder`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import json
import math
import os
import re
import types
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from blake3 import blake3

from styxcache.errors import ParamEncodingError

__all__ = [
    "ParamEncodingError",
    "canonical_json",
    "encode_params",
    "register_encoder",
]

JSON = Any
"""A JSON-native value: None, bool, int, float, str, list or dict with str keys."""


Encoder = Callable[[Any], Any]
"""Turns a value of a registered type into plain values that encode losslessly."""

_ENCODERS: dict[type, Encoder] = {}

_MAX_DEPTH = 200
"""Nesting deeper than this is refused: no tool takes such params, and Python's
own recursion limit would otherwise fail with an error naming nothing."""

_BIG_INT_BITS = 4096
"""Ints this large are written in hex: `json` refuses to print ints of more than
4,300 decimal digits, and hex has no such limit."""

_INLINE_ARRAY_BYTES = 256
"""Arrays up to this size keep their bytes in the key (readable in `explain`);
larger ones are keyed by the blake3 digest of their bytes."""


def register_encoder(cls: type, encoder: Encoder) -> None:
    """Teach the key how to encode values of a type of your own.

    The encoder returns plain values (numbers, str, lists, dicts, other
    encodable values) that identify the value losslessly: two values must
    encode alike only if a tool given either would compute the same result.
    It applies to subclasses too; the class's qualified name is part of the
    encoding, so two classes never share a key.

    Args:
        cls: The type.
        encoder: `value -> plain value`.

    Raises:
        TypeError: If `cls` is not a class or `encoder` is not callable.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_encoder needs a class, got {cls!r}")
    if not callable(encoder):
        raise TypeError(f"register_encoder needs a callable encoder, got {encoder!r}")
    _ENCODERS[cls] = encoder


def _registered(value: object) -> Encoder | None:
    if not _ENCODERS:
        return None
    for cls in type(value).__mro__:
        found = _ENCODERS.get(cls)
        if found is not None:
            return found
    return None


def _where(name: str) -> str:
    """The param's path as users write it: `params`, `params.opts.levels[1]`."""
    if not name:
        return "params"
    return f"params{name}" if name.startswith(("[", "{")) else f"params.{name}"


def canonical_json(
    value: JSON,
    *,
    default: Callable[[Any], Any] | None = None,
    ensure_ascii: bool = False,
) -> str:
    """Serialise an already-encoded value with sorted keys and no whitespace.

    Args:
        value: A JSON-native value.
        default: Turns a value JSON lacks into one it has (as `json.dumps`);
            None refuses such values.
        ensure_ascii: Escape non-ASCII characters (keys made that way before
            must stay the same).

    Returns:
        The canonical JSON text.
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=ensure_ascii,
        default=default,
    )


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
    """Encode a parameter tree canonically and losslessly.

    Args:
        value: The value to encode (usually the params dict).
        name: The value's name in messages (`opt`, `opts.threshold`, `files[2]`).
        substitute: Called first on every str and path value with its name; a
            non-None result replaces the value (used to put input content
            digests in place of input paths).

    Returns:
        A JSON-native value.

    Raises:
        ParamEncodingError: If a value has no stable, lossless encoding (an
            unknown type, a structure that contains itself, nesting deeper
            than 200 levels); the message names the param's path.
    """
    return _Encoding(substitute).encode(value, name, 0)


class _Encoding:
    """One call of `encode_params`: the substitute and the containers being encoded."""

    def __init__(self, substitute: Callable[[Any, str], JSON | None] | None) -> None:
        self.substitute = substitute
        # ids of the containers on the path from the root to the current value:
        # meeting one again means the structure contains itself.
        self.open: set[int] = set()

    def encode(self, value: Any, name: str, depth: int) -> JSON:
        if self.substitute is not None and isinstance(value, (str, os.PathLike)):
            replaced = self.substitute(value, name)
            if replaced is not None:
                return replaced
        scalar = _scalar(value, name)
        if scalar is not _NOT_SCALAR:
            return scalar
        if depth >= _MAX_DEPTH:
            raise ParamEncodingError(
                f"param `{_where(name)}` is nested more than {_MAX_DEPTH} levels "
                "deep; a cache key is not built from such a structure"
            )
        marker = id(value)
        if marker in self.open:
            raise ParamEncodingError(
                f"param `{_where(name)}` contains itself (a recursive structure); "
                "a cache key cannot be built from it"
            )
        self.open.add(marker)
        try:
            return self._container(value, name, depth + 1)
        finally:
            self.open.discard(marker)

    def _container(self, value: Any, name: str, depth: int) -> JSON:
        if isinstance(value, enum.Enum):
            return {
                "$enum": f"{_qualified(value)}.{value.name}",
                "value": self.encode(value.value, _child(name, "value"), depth),
            }
        if isinstance(value, Mapping):
            return self._mapping(value, name, depth)
        if isinstance(value, (list, tuple)):
            return self._sequence(value, name, depth)
        if isinstance(value, (set, frozenset)):
            encoded = [self.encode(item, f"{name}{{}}", depth) for item in value]
            return {"$set": sorted(encoded, key=canonical_json)}
        return self._object(value, name, depth)

    def _sequence(
        self, value: list[Any] | tuple[Any, ...], name: str, depth: int
    ) -> JSON:
        items = [
            self.encode(item, f"{name}[{i}]", depth) for i, item in enumerate(value)
        ]
        if isinstance(value, list):
            return items
        fields = getattr(value, "_fields", None)
        if fields is not None:  # a NamedTuple: keep its field names
            return {"$tuple": items, "fields": list(fields)}
        return {"$tuple": items}

    def _object(self, value: Any, name: str, depth: int) -> JSON:
        """A dataclass, a value of a registered type, or a numpy value."""
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                "$dataclass": _qualified(value),
                "fields": {
                    f.name: self.encode(
                        getattr(value, f.name), _child(name, f.name), depth
                    )
                    for f in dataclasses.fields(value)
                },
            }
        encoder = _registered(value)
        if encoder is not None:
            return {
                "$encoded": _qualified(value),
                "value": self.encode(encoder(value), name, depth),
            }
        if _is_numpy(value):
            return self._numpy(value, name, depth)
        return _refuse(value, name)

    def _mapping(self, value: Mapping[Any, Any], name: str, depth: int) -> JSON:
        # A str key starting with "$" could make a plain dict read as a tagged
        # value ({"$set": [1, 2]} vs {1, 2}); such dicts take the pairs form.
        if all(type(key) is str and not key.startswith("$") for key in value):
            return {
                key: self.encode(item, _child(name, key), depth)
                for key, item in value.items()
            }
        pairs = [
            [
                self.encode(key, f"{name or 'params'} key {key!r}", depth),
                self.encode(item, _child(name, repr(key)), depth),
            ]
            for key, item in value.items()
        ]
        return {"$dict": sorted(pairs, key=lambda pair: canonical_json(pair[0]))}

    def _numpy(self, value: Any, name: str, depth: int) -> JSON:
        dtype = str(value.dtype.str)
        if getattr(value, "ndim", None) is None or not hasattr(value, "tobytes"):
            return _refuse(value, name)
        if value.dtype.hasobject:
            # Object arrays hold pointers: encode the Python objects themselves.
            return {
                "$ndarray": dtype,
                "shape": list(value.shape),
                "items": self.encode(value.tolist(), name, depth),
            }
        if value.ndim == 0 and type(value).__name__ != "ndarray":
            # A numpy scalar (np.int64(3)): its dtype and exact bytes.
            return {"$numpy": dtype, "bytes": value.tobytes().hex()}
        data = value.tobytes(order="C")
        body = (
            data.hex()
            if len(data) <= _INLINE_ARRAY_BYTES
            else "blake3:" + str(blake3(data).hexdigest())
        )
        return {"$ndarray": dtype, "shape": list(value.shape), "bytes": body}


_NOT_SCALAR = object()


def _regex(value: re.Pattern[Any]) -> JSON:
    pattern = value.pattern
    text = pattern.hex() if isinstance(pattern, bytes) else pattern
    return {"$regex": text, "flags": int(value.flags)}


_TAGGED: tuple[tuple[type | tuple[type, ...], Callable[[Any], JSON]], ...] = (
    ((bytes, bytearray, memoryview), lambda v: {"$bytes": bytes(v).hex()}),
    # datetime before date: a datetime is also a date.
    (dt.datetime, lambda v: {"$datetime": v.isoformat()}),
    (dt.date, lambda v: {"$date": v.isoformat()}),
    (dt.time, lambda v: {"$time": v.isoformat()}),
    (dt.timedelta, lambda v: {"$timedelta": [v.days, v.seconds, v.microseconds]}),
    (decimal.Decimal, lambda v: {"$decimal": str(v)}),
    (fractions.Fraction, lambda v: {"$fraction": [v.numerator, v.denominator]}),
    (complex, lambda v: {"$complex": [_float(v.real), _float(v.imag)]}),
    (uuid.UUID, lambda v: {"$uuid": str(v)}),
    (range, lambda v: {"$range": [v.start, v.stop, v.step]}),
    (re.Pattern, _regex),
    # A builtin is named by its module and name in every process.
    (
        types.BuiltinFunctionType,
        lambda v: {"$builtin": f"{v.__module__}.{v.__qualname__}"},
    ),
)
"""Types JSON lacks that hold no other values, in the order they are tried,
each with its tagged, lossless form."""


def _scalar(value: Any, name: str) -> Any:
    """Encode a value that holds no other values, or return `_NOT_SCALAR`."""
    if isinstance(value, enum.Enum):
        return _NOT_SCALAR  # encoded with its class, as a container
    # The common types first: this runs for every value of every call's params.
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if value.bit_length() > _BIG_INT_BITS:
            return {"$int": format(value, "x")}
        return int(value)
    if isinstance(value, float):
        return _float(float(value))
    if isinstance(value, os.PathLike):
        return {"$path": os.fspath(value)}
    for kinds, encode in _TAGGED:
        if isinstance(value, kinds):
            return encode(value)
    return _NOT_SCALAR


def _is_numpy(value: object) -> bool:
    # numpy is never imported here: a caller that passes arrays has it loaded.
    module = type(value).__module__
    return (module == "numpy" or module.startswith("numpy.")) and hasattr(
        value, "dtype"
    )


def _refuse(value: object, name: str) -> JSON:
    cls = type(value)
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    address = (
        " (its only representation is its memory address)"
        if " at 0x" in text or cls.__repr__ is object.__repr__
        else ""
    )
    raise ParamEncodingError(
        f"param `{_where(name)}` is a {cls.__module__}.{cls.__qualname__}{address}: "
        f"{text}. A cache key is built only from values it can encode losslessly "
        "(str, numbers, lists, dicts, paths, dataclasses, numpy arrays...). Pass "
        "a plain value, or register an encoder for the class with "
        "styxcache.register_encoder(cls, fn)."
    )


def _qualified(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _child(name: str, key: str) -> str:
    return f"{name}.{key}" if name else key
