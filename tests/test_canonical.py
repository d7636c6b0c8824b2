"""Canonical encoding of params: equal values give equal bytes, anywhere.

Unit tests per type, plus hypothesis properties: a value rebuilt with other
insertion orders encodes to the same JSON; values of different types never
collide.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import random
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from styxcache import ParamEncodingError
from styxcache.canonical import canonical_json, encode_params


def enc(value: Any) -> str:
    return canonical_json(encode_params(value))


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Smoothing:
    fwhm: float
    kernel: str = "gauss"


class Labelled:
    """A class whose repr looks deterministic: still refused unless registered."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"Labelled({self.label!r})"


class Opaque:
    pass


# Per type ------------------------------------------------------------------------


def test_json_natives_pass_through() -> None:
    value = {"b": [1, 2.5, None, True, "x"], "a": {"nested": False}}
    assert encode_params(value) == value
    assert enc(value) == '{"a":{"nested":false},"b":[1,2.5,null,true,"x"]}'


def test_canonical_json_is_compact_sorted_and_keeps_unicode() -> None:
    assert canonical_json({"é": 1, "a": [1, {"z": 0, "y": 1}]}) == (
        '{"a":[1,{"y":1,"z":0}],"é":1}'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ((1, "a"), {"$tuple": [1, "a"]}),
        (Point(1, 2), {"$tuple": [1, 2], "fields": ["x", "y"]}),
        ({3, 1, 2}, {"$set": [1, 2, 3]}),
        (frozenset({"b", "a"}), {"$set": ["a", "b"]}),
        (b"\x00\xff", {"$bytes": "00ff"}),
        (bytearray(b"ab"), {"$bytes": "6162"}),
        (memoryview(b"ab"), {"$bytes": "6162"}),
        (dt.datetime(2024, 5, 1, 12, 30), {"$datetime": "2024-05-01T12:30:00"}),
        (
            dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
            {"$datetime": "2024-05-01T12:30:00+00:00"},
        ),
        (dt.date(2024, 5, 1), {"$date": "2024-05-01"}),
        (dt.time(7, 5), {"$time": "07:05:00"}),
        (dt.timedelta(days=1, seconds=2), {"$timedelta": [1, 2, 0]}),
        (decimal.Decimal("0.10"), {"$decimal": "0.10"}),
        (complex(1, -2), {"$complex": [1.0, -2.0]}),
        (
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            {"$uuid": "12345678-1234-5678-1234-567812345678"},
        ),
        (PurePosixPath("/data/t1.nii"), {"$path": "/data/t1.nii"}),
        (math.inf, {"$float": "inf"}),
        (-math.inf, {"$float": "-inf"}),
    ],
)
def test_tagged_forms(value: Any, expected: Any) -> None:
    assert encode_params(value) == expected


def test_nan_is_encoded_not_rejected() -> None:
    assert encode_params(math.nan) == {"$float": "nan"}
    assert enc([math.nan]) == enc([math.nan])
    json.loads(enc({"x": math.nan}))  # still strict JSON


def test_enums_keep_their_class_and_are_not_plain_values() -> None:
    assert encode_params(Color.RED) == {
        "$enum": f"{__name__}.Color.RED",
        "value": "red",
    }
    assert enc(Color.RED) != enc("red")
    assert enc(Level.HIGH) != enc(2)
    assert encode_params(Level.HIGH)["$enum"].endswith("Level.HIGH")


def test_dataclass_fields() -> None:
    assert encode_params(Smoothing(4.0)) == {
        "$dataclass": f"{__name__}.Smoothing",
        "fields": {"fwhm": 4.0, "kernel": "gauss"},
    }


def test_dict_with_non_str_keys_is_ordered_by_key_encoding() -> None:
    one = {3: "c", 1: "a", (2, "x"): "b"}
    two = {(2, "x"): "b", 1: "a", 3: "c"}
    assert enc(one) == enc(two)
    assert encode_params({1: "a"}) == {"$dict": [[1, "a"]]}
    assert enc({1: "a"}) != enc({"1": "a"})
    # A str subclass key is not a plain str key.
    assert "$dict" in encode_params({Color.RED: 1})


def test_dicts_with_tag_like_keys_are_not_tagged_values() -> None:
    assert enc({"$set": [1, 2]}) != enc({1, 2})
    assert enc({"$bytes": "00"}) != enc(b"\x00")
    assert enc({"$input": 0}) != canonical_json({"$input": 0})
    assert encode_params({"$set": [1]}) == {"$dict": [["$set", [1]]]}
    assert encode_params({"@type": "fsl/bet"}) == {"@type": "fsl/bet"}


def test_types_do_not_collide() -> None:
    variants = [
        [1, 2],
        (1, 2),
        {1, 2},
        "1",
        1,
        1.0,
        True,
        None,
        b"1",
        {"$set": [1, 2]},
        {"$tuple": [1, 2]},
        Color.RED,
        "red",
        decimal.Decimal("1"),
        dt.date(2024, 1, 1),
        "2024-01-01",
        PurePosixPath("/a"),
        "/a",
        {1: "a"},
        {"1": "a"},
        Point(1, 2),
        math.inf,
        "inf",
    ]
    encodings = [enc(v) for v in variants]
    assert len(set(encodings)) == len(variants)


def test_path_objects_of_any_flavour_encode_the_same() -> None:
    assert enc(Path("/data/x.nii")) == enc(PurePosixPath("/data/x.nii"))


# Refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (Opaque(), "params"),
        ({"handle": Opaque()}, "handle"),
        ({"opts": {"levels": [0, Opaque()]}}, "opts.levels[1]"),
        ({"fn": lambda: 1}, "fn"),
        ({"fn": print}, None),  # a builtin is named by module and name: see below
        ({"label": Labelled("x")}, "label"),  # a repr is never a key
        ({"cfg": Smoothing(1.0, kernel=Opaque())}, "cfg.kernel"),  # type: ignore[arg-type]
        ({"pair": (1, Opaque())}, "pair[1]"),
        ({"e": Color.RED, "o": {Opaque()}}, "o{}"),
        ({"m": {1: Opaque()}}, "m.1"),
    ],
)
def test_memory_address_reprs_are_refused_naming_the_param(
    value: Any, where: str | None
) -> None:
    if where is None:
        # `print` is accepted: builtins are named the same in every process.
        assert encode_params(value) == {"fn": {"$builtin": "builtins.print"}}
        return
    with pytest.raises(ParamEncodingError) as info:
        encode_params(value)
    assert isinstance(info.value, TypeError)
    path = "params" if where == "params" else f"params.{where}"
    assert f"`{path}`" in str(info.value)
    assert "register_encoder" in str(info.value)


def test_object_as_dict_key_is_refused() -> None:
    with pytest.raises(ParamEncodingError, match="key"):
        encode_params({Opaque(): 1})


# Substitution ----------------------------------------------------------------------


def test_substitute_sees_strings_and_paths_with_their_names() -> None:
    seen: list[tuple[str, str]] = []

    def substitute(value: Any, name: str) -> Any:
        seen.append((str(value), name))
        return {"$input": 0} if str(value) == "/in.nii" else None

    encoded = encode_params(
        {"a": "/in.nii", "b": [Path("/in.nii"), "x"], "c": 3}, substitute=substitute
    )
    assert encoded == {"a": {"$input": 0}, "b": [{"$input": 0}, "x"], "c": 3}
    assert ("/in.nii", "a") in seen
    assert ("/in.nii", "b[0]") in seen
    assert ("x", "b[1]") in seen


# Properties ------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.sampled_from(list(Color)),
)
hashables = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4),
    max_leaves=8,
)
# Keys that look like the encoding's own tags must not fool it.
keys = st.text(max_size=6) | st.sampled_from(
    ["$set", "$tuple", "$bytes", "$dict", "$enum", "$input", "fields", "value"]
)
values = st.recursive(
    scalars | hashables,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=4),
        st.dictionaries(st.integers() | st.tuples(st.integers()), inner, max_size=4),
        st.sets(hashables, max_size=5),
    ),
    max_leaves=20,
)


def rebuilt(value: Any, rng: random.Random) -> Any:
    """An equal copy of `value` whose sets and dicts were filled in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: rebuilt(v, rng) for k, v in items}
    if isinstance(value, (set, frozenset)):
        items = list(value)
        rng.shuffle(items)
        out = set()
        for item in items:
            out.add(rebuilt(item, rng))
        return frozenset(out) if isinstance(value, frozenset) else out
    if isinstance(value, list):
        return [rebuilt(v, rng) for v in value]
    if isinstance(value, tuple):
        return tuple(rebuilt(v, rng) for v in value)
    return value


@settings(max_examples=200, deadline=None)
@given(values, st.randoms(use_true_random=False))
def test_equal_values_encode_to_equal_json(value: Any, rng: random.Random) -> None:
    copy = rebuilt(value, rng)
    assert copy == value
    text = enc(value)
    assert enc(copy) == text
    json.loads(text)  # always valid JSON


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), unique=True, max_size=12)
)
def test_set_insertion_order_is_irrelevant(items: list[Any]) -> None:
    forward: set[Any] = set()
    for item in items:
        forward.add(item)
    backward: set[Any] = set()
    for item in reversed(items):
        backward.add(item)
    assert enc(forward) == enc(backward)
    assert enc(frozenset(items)) == enc(forward)


@settings(max_examples=200, deadline=None)
@given(values, values)
def test_different_values_encode_differently(one: Any, two: Any) -> None:
    if _strictly_equal(one, two):
        assert enc(one) == enc(two)
    else:
        assert enc(one) != enc(two)


def _strictly_equal(one: Any, two: Any) -> bool:
    """Equality that also compares types (so 1 != 1.0 != True, [] != ())."""
    if type(one) is not type(two):
        return False
    if isinstance(one, dict):
        return (
            one.keys() == two.keys()
            and all(_strictly_equal(v, two[k]) for k, v in one.items())
            and all(_strictly_equal(k, _same_key(two, k)) for k in one)
        )
    if isinstance(one, (list, tuple)):
        return len(one) == len(two) and all(
            _strictly_equal(a, b) for a, b in zip(one, two, strict=True)
        )
    if isinstance(one, (set, frozenset)):
        if len(one) != len(two):
            return False
        return sorted(enc(x) for x in one) == sorted(enc(x) for x in two)
    if isinstance(one, decimal.Decimal):
        return str(one) == str(two)
    if isinstance(one, float):
        return repr(one) == repr(two)
    return bool(one == two)


def _same_key(mapping: dict[Any, Any], key: Any) -> Any:
    for candidate in mapping:
        if candidate == key:
            return candidate
    return None
