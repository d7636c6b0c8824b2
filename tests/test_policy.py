"""CachePolicy validation and parse_size.

A bad policy must fail when it is built, with a message naming the field, so
a typo never surfaces hours into a pipeline run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from styxdefs import LocalRunner, Metadata

from styxcache import CachePolicy, CachingRunner, ContentHasher, parse_size, trust_tag

BET = Metadata(id="bet", name="Brain extraction", package="fsl")


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("path_params", "hash-it", ValueError),
        ("path_params", None, ValueError),
        ("verify", "fast", ValueError),
        ("read_only_miss", "ignore", ValueError),
        ("env_allowlist", "FSLOUTPUTTYPE", TypeError),
        ("env_allowlist", ["OK", 3], TypeError),
        ("env_allowlist", ["OK", ""], TypeError),
        ("bypass_tools", "fsl/*", TypeError),
        ("bypass_tools", {"fsl/*", 7}, TypeError),
        ("extra", {"salt": 1}, TypeError),
        ("extra", {1: "salt"}, TypeError),
        ("extra", [("salt", "1")], TypeError),
        ("image_digest", "docker", TypeError),
        ("hasher", "blake3", TypeError),
        ("hasher", object(), TypeError),
        ("read_only_outputs", "no", TypeError),
        ("memo", 1, TypeError),
        ("check_command", None, TypeError),
        ("memo_dir", 5, TypeError),
        ("lease_seconds", 0, ValueError),
        ("lease_seconds", -1.0, ValueError),
        ("lease_seconds", float("nan"), ValueError),
        ("lease_seconds", float("inf"), ValueError),
        ("lease_seconds", "30", TypeError),
        ("lease_seconds", True, TypeError),
        ("lock_timeout", -1, ValueError),
        ("lock_timeout", "6h", TypeError),
        ("lock_timeout", float("nan"), ValueError),
        ("max_age", dt.timedelta(seconds=-5), ValueError),
        ("max_age", "7d", TypeError),
        ("max_size", "lots", ValueError),
        ("max_size", "-5G", ValueError),
        ("max_size", -1, ValueError),
        ("max_size", 1.5, TypeError),
        ("keep_failed", -1, ValueError),
        ("keep_failed", 2.5, TypeError),
        ("keep_failed", "3", TypeError),
        ("keep_failed", True, TypeError),
    ],
)
def test_bad_value_names_the_field(
    field: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=rf"CachePolicy\.{field}\b"):
        CachePolicy(**{field: value})


def test_bad_policy_fails_before_the_cache_dir_is_made(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="verify"):
        CachingRunner(
            LocalRunner(data_dir=tmp_path / "d"), cache, policy=CachePolicy(verify="x")
        )
    assert not cache.exists()
    with pytest.raises(TypeError, match="policy must be a CachePolicy"):
        CachingRunner(
            LocalRunner(data_dir=tmp_path / "d"), cache, policy={"verify": "full"}
        )  # type: ignore[arg-type]
    assert not cache.exists()


def test_sequences_are_normalised() -> None:
    policy = CachePolicy(env_allowlist=["B", "A"], bypass_tools={"fsl/*"})
    assert policy.env_allowlist == ("B", "A")
    assert policy.bypass_tools == frozenset({"fsl/*"})


def test_good_values_are_accepted_and_converted() -> None:
    policy = CachePolicy(
        ContentHasher(4096),
        trust_tag,
        path_params="warn",
        verify="full",
        read_only_outputs=False,
        lease_seconds=5,
        lock_timeout=dt.timedelta(minutes=2),
        max_age=dt.timedelta(days=1),
        max_size="1.5G",
        memo_dir=Path("/tmp/memo"),
        memo=False,
        read_only_miss="error",
        keep_failed=0,
        check_command=False,
    )
    assert policy.lock_timeout_s == 120.0
    assert policy.max_age_s == 86400.0
    assert policy.max_size_bytes == int(1.5 * 1024**3)
    assert policy.memo_path() is None  # memo off wins over memo_dir
    assert CachePolicy().max_age_s is None
    assert CachePolicy().max_size_bytes is None
    assert CachePolicy(lock_timeout=0).lock_timeout_s == 0.0
    assert CachePolicy(max_size=0).max_size_bytes == 0


def test_memo_path_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CachePolicy(memo_dir=tmp_path / "m").memo_path() == tmp_path / "m"
    monkeypatch.setenv("STYXCACHE_MEMO_DIR", str(tmp_path / "env"))
    assert CachePolicy().memo_path() == tmp_path / "env"
    monkeypatch.delenv("STYXCACHE_MEMO_DIR")
    default = CachePolicy().memo_path()
    assert default is not None
    assert "styxcache" in str(default)


def test_env_for_key_tells_unset_from_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYXCACHE_T_EMPTY", "")
    monkeypatch.delenv("STYXCACHE_T_UNSET", raising=False)
    policy = CachePolicy(env_allowlist=("STYXCACHE_T_UNSET", "STYXCACHE_T_EMPTY"))
    assert policy.env_for_key() == {"STYXCACHE_T_EMPTY": "", "STYXCACHE_T_UNSET": None}
    # The 0.3.0 view folds both to "".
    assert policy.env_values() == [("STYXCACHE_T_EMPTY", ""), ("STYXCACHE_T_UNSET", "")]


def test_bypasses_without_patterns_is_false() -> None:
    assert CachePolicy().bypasses(BET) is False


def test_bypass_pattern_with_glob_characters_matches_exactly() -> None:
    odd = Metadata(id="x", name="Extract [brain]", package="fsl")
    assert CachePolicy(bypass_tools=frozenset({"fsl/Extract [brain]"})).bypasses(odd)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1000, 1000),
        ("1000", 1000),
        ("0", 0),
        ("1k", 1024),
        ("1K", 1024),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("512MiB", 512 * 1024**2),
        ("512m", 512 * 1024**2),
        ("50G", 50 * 1024**3),
        ("50gb", 50 * 1024**3),
        ("1.5T", int(1.5 * 1024**4)),
        ("2P", 2 * 1024**5),
        (" 2 M ", 2 * 1024**2),
        ("10B", 10),
    ],
)
def test_parse_size(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", ValueError),
        ("abc", ValueError),
        ("-1", ValueError),
        ("-1G", ValueError),
        ("1X", ValueError),
        ("G", ValueError),
        ("1.2.3G", ValueError),
        ("5 GiBs", ValueError),
        (-5, ValueError),
        (True, ValueError),
        (1.5, TypeError),
        (None, TypeError),
    ],
)
def test_parse_size_rejects(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="size"):
        parse_size(value)
