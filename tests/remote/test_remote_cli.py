"""`styxcache push`, `pull` and `stats` against a real SeaweedFS S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from remote_helpers import big_file, make_runner, runs, upper
from seaweed import BUCKET, SECRET_KEY, SeaweedServer, set_s3_env

from styxcache import CacheEvent
from styxcache.cli import main
from styxcache.remote import RemoteTier
from styxcache.remote.envelope import blob_path
from styxcache.store import CacheStore

obstore = pytest.importorskip("obstore")


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def cli_json(*args: str) -> dict:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """A local cache with three entries of two tools, made without a remote."""
    cache, counter = tmp_path / "a", tmp_path / "runs.txt"
    runner = make_runner(cache, tmp_path / "sa")
    inputs = []
    for i in range(2):
        path = tmp_path / f"in{i}.txt"
        path.write_text(f"subject {i}\n")
        upper(runner, path, counter)
        inputs.append(path)
    big_file(runner, inputs[0], counter, 1)
    assert runs(counter) == 3
    return cache, counter, inputs


def test_push_then_pull_moves_verified_entries(
    tmp_path: Path, filled: tuple[Path, Path, list[Path]], remote_url: str
) -> None:
    cache, counter, inputs = filled
    dry = cli_json(
        "push", "--cache-dir", str(cache), "--remote", remote_url, "--dry-run"
    )
    assert len(dry["moved"]) == 3 and dry["dry_run"]
    assert list(RemoteTier(remote_url).iter_keys()) == []

    pushed = cli_json("push", "--cache-dir", str(cache), "--remote", remote_url)
    assert len(pushed["moved"]) == 3 and pushed["present"] == []
    again = cli_json("push", "--cache-dir", str(cache), "--remote", remote_url)
    assert again["moved"] == [] and len(again["present"]) == 3

    other = tmp_path / "b"
    pulled = cli_json("pull", "--cache-dir", str(other), "--remote", remote_url)
    assert sorted(pulled["moved"]) == sorted(CacheStore(cache).iter_keys())
    verified = cli("verify", "--full", "--cache-dir", str(other))
    assert verified.exit_code == 0, verified.output

    # The pulled cache serves every call without a remote and without a run.
    runner = make_runner(other, tmp_path / "sb", remote="")
    for path in inputs:
        out = upper(runner, path, counter)
        assert out["upper"].read_text() == path.read_text().upper()
    assert runs(counter) == 3 and runner.stats.hits == 2


def test_push_and_pull_filters(
    tmp_path: Path, filled: tuple[Path, Path, list[Path]], remote_url: str
) -> None:
    cache, _counter, _inputs = filled
    pushed = cli_json(
        "push", "--cache-dir", str(cache), "--remote", remote_url, "--tool", "demo/up*"
    )
    assert len(pushed["moved"]) == 2
    cli_json("push", "--cache-dir", str(cache), "--remote", remote_url)
    pulled = cli_json(
        "pull",
        "--cache-dir",
        str(tmp_path / "b"),
        "--remote",
        remote_url,
        "--larger-than",
        "100K",
    )
    assert len(pulled["moved"]) == 1
    manifest = CacheStore(tmp_path / "b").lookup(pulled["moved"][0]).manifest
    assert manifest is not None and manifest.tool == "demo/blob"


def test_pull_refuses_a_damaged_entry(
    tmp_path: Path, filled: tuple[Path, Path, list[Path]], remote_url: str
) -> None:
    cache, _counter, _inputs = filled
    cli_json(
        "push", "--cache-dir", str(cache), "--remote", remote_url, "--tool", "demo/blob"
    )
    key = next(iter(CacheStore(cache).iter_keys()))
    for candidate in CacheStore(cache).iter_keys():
        found = CacheStore(cache).lookup(candidate).manifest
        if found is not None and found.tool == "demo/blob":
            key, manifest = candidate, found
    digest = manifest.outputs[0].digest
    store = RemoteTier(remote_url).store
    data = bytearray(bytes(obstore.get(store, blob_path(digest)).bytes()))
    data[1000] ^= 1
    obstore.put(store, blob_path(digest), bytes(data))

    result = cli("pull", "--cache-dir", str(tmp_path / "b"), "--remote", remote_url)
    assert result.exit_code == 1
    assert f"damaged {key[:12]}" in result.output
    assert not CacheStore(tmp_path / "b").is_hit(key)


def test_stats_show_remote_hits(
    tmp_path: Path, filled: tuple[Path, Path, list[Path]], remote_url: str
) -> None:
    cache, counter, inputs = filled
    cli_json("push", "--cache-dir", str(cache), "--remote", remote_url)
    seen: list[CacheEvent] = []
    runner = make_runner(
        tmp_path / "b", tmp_path / "sb", remote=remote_url, on_event=seen.append
    )
    upper(runner, inputs[0], counter)
    assert runs(counter) == 3 and seen[-1].remote == "hit"
    report = cli_json("stats", "--cache-dir", str(tmp_path / "b"))
    assert report["total"]["remote_hits"] == 1 and report["total"]["hits"] == 1
    text = cli("stats", "--cache-dir", str(tmp_path / "b")).output
    assert "Remote tier: 1 hits served from it" in text


def test_push_with_refused_credentials_fails_clearly(
    tmp_path: Path,
    filled: tuple[Path, Path, list[Path]],
    seaweed: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, _counter, _inputs = filled
    wrong = "wrong-" + SECRET_KEY
    set_s3_env(monkeypatch, seaweed, secret=wrong)
    result = cli("push", "--cache-dir", str(cache), "--remote", f"s3://{BUCKET}/x")
    assert result.exit_code == 1
    assert "remote cache failed" in result.output
    assert wrong not in result.output


def test_missing_or_bad_remote_is_a_usage_error(
    filled: tuple[Path, Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _counter, _inputs = filled
    monkeypatch.delenv("STYXCACHE_REMOTE", raising=False)
    result = cli("push", "--cache-dir", str(cache))
    assert result.exit_code == 2 and "no remote cache" in result.output
    result = cli("pull", "--cache-dir", str(cache), "--remote", "http://x/y")
    assert result.exit_code == 2 and "unsupported URL scheme" in result.output
