"""Parsing and formatting of durations, times and sizes on the command line."""

from __future__ import annotations

import datetime as dt

import pytest

from styxcache.cli._units import (
    human_duration,
    human_size,
    parse_duration,
    parse_when,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 1209600),
        ("600", 600),
        ("1.5h", 5400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5d", "5 days", "d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_parse_when() -> None:
    assert parse_when("2h", now=10_000.0) == 10_000.0 - 7200
    utc = dt.datetime(2026, 11, 22, 18, 0, tzinfo=dt.timezone.utc).timestamp()
    assert parse_when("2026-11-22T18:00:00Z") == utc
    assert parse_when("2026-11-22T18:00:00+00:00") == utc
    with pytest.raises(ValueError, match="not a time"):
        parse_when("yesterday")


def test_human_formats() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(50 * 1024**3) == "50.0 GiB"
    assert human_duration(0.5) == "0.50 s"
    assert human_duration(75) == "1 min 15 s"
    assert human_duration(3 * 3600 + 120) == "3 h 02 min"
    assert human_duration(3 * 86400) == "3 d 0 h"
