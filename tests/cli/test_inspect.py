"""`styxcache stats`, `ls`, `show`, `explain` and `verify` on real caches."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from clihelpers import (
    cli,
    cli_json,
    count_lines,
    key_of,
    make_runner,
    set_last_use,
    tree_snapshot,
    write_block,
)

from styxcache.events import EVENTS_DIR
from styxcache.store import CacheStore


@pytest.fixture
def used(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """write: 2 misses then 1 hit; count: 2 misses (the input changed)."""
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("a\nb\n")
    keys = {
        "small": key_of(write_block(runner, source, size=1000, n=1)["out"], cache),
        "large": key_of(write_block(runner, source, size=64 * 1024, n=2)["out"], cache),
    }
    write_block(runner, source, size=1000, n=1)
    keys["count1"] = key_of(count_lines(runner, source)["count"], cache)
    source.write_text("a\nb\nc\n")
    keys["count2"] = key_of(count_lines(runner, source)["count"], cache)
    return cache, source, keys


def test_stats_per_tool_and_total(used: tuple[Path, Path, dict[str, str]]) -> None:
    cache, _, _ = used
    report = cli_json("stats", "--cache-dir", str(cache))
    assert report["total"]["hits"] == 1 and report["total"]["misses"] == 4
    assert report["total"]["hit_rate"] == pytest.approx(0.2)
    assert report["tools"]["demo/write"]["hits"] == 1
    assert report["tools"]["demo/write"]["bytes_served"] >= 1000
    assert report["tools"]["demo/count"]["misses"] == 2
    text = cli("stats", "--cache-dir", str(cache)).stdout
    assert "demo/write" in text and "Total" in text and "20.0 %" in text


def test_stats_since_and_zero(
    used: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    cache, source, _ = used
    future = cli_json("stats", "--cache-dir", str(cache), "--since", "2999-01-01")
    assert future["total"]["misses"] == 0
    assert (
        cli_json("stats", "--cache-dir", str(cache), "--since", "1h")["total"]["misses"]
        == 4
    )
    files = sorted((cache / EVENTS_DIR).glob("*.jsonl"))
    result = cli("stats", "--cache-dir", str(cache), "--zero")
    assert result.exit_code == 0 and "zeroed" in result.stdout
    # This test process wrote the events and is alive: its file stays in place.
    assert sorted((cache / EVENTS_DIR).glob("*.jsonl")) == files
    assert cli_json("stats", "--cache-dir", str(cache))["total"]["misses"] == 0
    # The same process keeps recording into the same file after the reset.
    write_block(make_runner(cache, tmp_path / "s2"), source, size=1000, n=1)
    assert cli_json("stats", "--cache-dir", str(cache))["total"]["misses"] == 1


def test_zero_archives_files_of_finished_processes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    pid = os.fork()
    if pid == 0:  # a pipeline process that runs once and exits
        write_block(make_runner(cache, tmp_path / "child"), source, size=10)
        os._exit(0)
    os.waitpid(pid, 0)
    assert len(list((cache / EVENTS_DIR).glob("*.jsonl"))) == 1
    cli("stats", "--cache-dir", str(cache), "--zero")
    assert list((cache / EVENTS_DIR).glob("*.jsonl")) == []
    assert len(list((cache / EVENTS_DIR / "archive").glob("*.jsonl"))) == 1


def test_ls_filters_and_sorts(used: tuple[Path, Path, dict[str, str]]) -> None:
    cache, _, keys = used
    set_last_use(cache, keys["count1"], time.time() - 40 * 86400)
    listing = cli_json("ls", "--cache-dir", str(cache), "--sort", "size")
    assert listing["entries"][0]["key"] == keys["large"]
    assert listing["total"] == 4
    by_tool = cli_json("ls", "--cache-dir", str(cache), "--tool", "demo/count")
    assert {e["key"] for e in by_tool["entries"]} == {keys["count1"], keys["count2"]}
    old = cli_json("ls", "--cache-dir", str(cache), "--unused-for", "30d")
    assert [e["key"] for e in old["entries"]] == [keys["count1"]]
    big = cli_json("ls", "--cache-dir", str(cache), "--larger-than", "32K")
    assert [e["key"] for e in big["entries"]] == [keys["large"]]
    lru = cli_json("ls", "--cache-dir", str(cache), "--reverse", "--limit", "1")
    assert [e["key"] for e in lru["entries"]] == [keys["count1"]] and lru[
        "matched"
    ] == 4
    text = cli("ls", "--cache-dir", str(cache), "--tool", "demo/w*").stdout
    assert (
        keys["large"][:12] in text and "65.4 KiB" in text and "2 of 4 entries" in text
    )


def test_show_by_prefix(used: tuple[Path, Path, dict[str, str]]) -> None:
    cache, _source, keys = used
    shown = cli_json("show", "--cache-dir", str(cache), keys["large"][:8])
    assert shown["key"] == keys["large"]
    assert shown["payload"]["params"]["size"] == 64 * 1024
    assert {o["path"] for o in shown["outputs"]} == {"out.bin", "copy.txt"}
    text = cli("show", "--cache-dir", str(cache), keys["large"][:8]).stdout
    assert "demo/write" in text and "out.bin" in text and '"size": 65536' in text


def test_show_errors(used: tuple[Path, Path, dict[str, str]]) -> None:
    cache, _, _ = used
    for prefix, message in (
        ("zzzz", "no entry"),
        ("a", "at least 2"),
        ("../x", "not a key"),
    ):
        result = cli("show", "--cache-dir", str(cache), prefix)
        assert result.exit_code == 2
        assert message in result.output


def test_show_ambiguous_prefix(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    shards: dict[str, list[str]] = {}
    n = 0
    # Run until two entries share a shard (a birthday problem over 256 shards).
    while not any(len(keys) > 1 for keys in shards.values()):
        key = key_of(write_block(runner, source, size=1, n=n)["out"], cache)
        shards.setdefault(key[:2], []).append(key)
        n += 1
    shard = next(s for s, keys in shards.items() if len(keys) > 1)
    result = cli("show", "--cache-dir", str(cache), shard)
    assert result.exit_code == 2 and "ambiguous" in result.output
    unique = cli("show", "--cache-dir", str(cache), shards[shard][0][:20], "--json")
    assert json.loads(unique.stdout)["key"] == shards[shard][0]


def test_explain_names_the_differing_fields(
    used: tuple[Path, Path, dict[str, str]],
) -> None:
    cache, _, keys = used
    report = cli_json("explain", "--cache-dir", str(cache))
    misses = {m["key"]: m for m in report["misses"]}
    assert misses[keys["large"]]["nearest"] == keys["small"]
    assert set(misses[keys["large"]]["differences"]) == {
        "param `n` 1 -> 2",
        "param `size` 1000 -> 65536",
    }
    assert misses[keys["count2"]]["differences"] == ["input `infile` content changed"]
    assert misses[keys["count1"]]["nearest"] == ""
    one = cli_json(
        "explain", "--cache-dir", str(cache), "--tool", "demo/count", "--last", "1"
    )
    assert [m["key"] for m in one["misses"]] == [keys["count2"]]
    text = cli("explain", "--cache-dir", str(cache), "--last", "1").stdout
    assert "input `infile` content changed" in text


def test_explain_falls_back_to_the_recorded_reason(
    used: tuple[Path, Path, dict[str, str]],
) -> None:
    cache, _, keys = used
    CacheStore(cache).remove(keys["count2"])
    report = cli_json(
        "explain", "--cache-dir", str(cache), "--tool", "demo/count", "--last", "1"
    )
    item = report["misses"][0]
    assert item["recomputed"] is False
    assert item["nearest"] == keys["count1"][:12]
    assert item["differences"] == ["input `infile` content changed"]


def _damage(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_verify_quarantines_damaged_entries(
    used: tuple[Path, Path, dict[str, str]],
) -> None:
    cache, _, keys = used
    store = CacheStore(cache)
    assert cli("verify", "--cache-dir", str(cache)).exit_code == 0
    # Same size, other bytes: only --full notices.
    _damage(store.entry_dir(keys["small"]) / "out.bin", b"\x07" * 1000)
    assert cli("verify", "--cache-dir", str(cache)).exit_code == 0
    _damage(store.entry_dir(keys["large"]) / "out.bin", b"short")
    result = cli("verify", "--cache-dir", str(cache), "--full")
    assert result.exit_code == 1
    assert "2 damaged and quarantined" in result.stdout
    assert keys["small"][:12] in result.stdout and "content changed" in result.stdout
    assert not store.entry_dir(keys["small"]).exists()
    assert len(list((cache / store.QUARANTINE_DIR).glob("*.reason"))) == 2
    # Afterwards the cache is clean, and the tool runs again on next use.
    assert cli("verify", "--cache-dir", str(cache), "--full").exit_code == 0


def test_verify_json_lists_damage(used: tuple[Path, Path, dict[str, str]]) -> None:
    cache, _, keys = used
    (CacheStore(cache).entry_dir(keys["count1"]) / ".styxcache.done").unlink()
    result = cli("verify", "--cache-dir", str(cache), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["checked"] == 4
    assert [d["key"] for d in report["damaged"]] == [keys["count1"]]
    assert "done marker missing" in report["damaged"][0]["reason"]


def test_missing_cache_dir_is_a_usage_error(tmp_path: Path) -> None:
    for command in ("stats", "ls", "explain", "verify", "gc", "clear", "show x"):
        result = cli(*command.split(), env={"STYXCACHE_DIR": ""})
        assert result.exit_code == 2, command
        assert "--cache-dir" in result.output and "STYXCACHE_DIR" in result.output
    result = cli("ls", "--cache-dir", str(tmp_path / "typo"))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "typo").exists()


def test_env_var_selects_the_cache(used: tuple[Path, Path, dict[str, str]]) -> None:
    cache, _, _ = used
    result = cli("ls", "--json", env={"STYXCACHE_DIR": str(cache)})
    assert json.loads(result.stdout)["total"] == 4


def test_read_only_commands_change_nothing(
    used: tuple[Path, Path, dict[str, str]],
) -> None:
    cache, _, keys = used
    before = tree_snapshot(cache)
    mtimes = {k: CacheStore(cache).entry_dir(k).stat().st_mtime for k in keys.values()}
    for command in (
        "stats",
        "ls",
        f"show {keys['small'][:6]}",
        "explain",
        "verify --full",
    ):
        assert cli(*command.split(), "--cache-dir", str(cache)).exit_code == 0
    # Summaries of what was read (the catalog, the statistics rollup) may be
    # written; nothing an entry holds may change.
    assert _without_summaries(tree_snapshot(cache)) == _without_summaries(before)
    assert mtimes == {
        k: CacheStore(cache).entry_dir(k).stat().st_mtime for k in keys.values()
    }


def _without_summaries(tree: dict[str, bytes | str]) -> dict[str, bytes | str]:
    return {
        name: data
        for name, data in tree.items()
        if not name.startswith(".catalog/") and name != ".events/rollup.json"
    }
