"""Uncommitted runs, symlinked outputs and bad option values, on real caches."""

from __future__ import annotations

import tarfile
from pathlib import Path

from clihelpers import COUNT, cli, cli_json, make_runner, tree_snapshot

from conftest import run_tool
from styxcache.store import CacheStore


def _uncommitted(tmp_path: Path) -> tuple[Path, str]:
    """A real run that exits 0 without its required output: stored uncommitted."""
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    out = run_tool(
        runner,
        COUNT,
        {"@type": "demo/count", "infile": str(source)},
        inputs={"infile": {}},
        outputs={"count": "count.txt"},
        cargs=lambda p: ["sh", "-c", "true"],
    )
    return cache, out["count"].parent.name


def test_uncommitted_runs_are_listed_not_damaged(tmp_path: Path) -> None:
    cache, key = _uncommitted(tmp_path)
    listing = cli_json("ls", "--cache-dir", str(cache))
    assert [(e["key"], e["state"]) for e in listing["entries"]] == [
        (key, "uncommitted")
    ]
    result = cli("verify", "--cache-dir", str(cache))
    assert result.exit_code == 0
    assert "1 uncommitted runs" in result.stdout
    shown = cli("show", "--cache-dir", str(cache), key[:8])
    assert shown.exit_code == 1 and "uncommitted" in shown.stdout
    # gc trims it like any other entry once it is old enough.
    report = cli_json(
        "gc", "--cache-dir", str(cache), "--max-entries", "0", "--keep-recent", "0"
    )
    assert [r["key"] for r in report["removed"]] == [key]
    assert not CacheStore(cache).entry_dir(key).exists()


def _linking_tool(tmp_path: Path, target: str) -> tuple[Path, str]:
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text(target)
    out = run_tool(
        runner,
        COUNT,
        {"@type": "demo/count", "infile": str(source), "target": target},
        inputs={"infile": {}},
        outputs={"count": "count.txt", "link": "link"},
        cargs=lambda p: [
            "sh",
            "-c",
            f'wc -l < "$1" > count.txt && ln -s {target} link',
            "sh",
            p["infile"],
        ],
    )
    return cache, out["count"].parent.name


def test_export_leaves_out_entries_linking_outside(tmp_path: Path) -> None:
    cache, key = _linking_tool(tmp_path, "/etc/hostname")
    report = cli_json("export", "--cache-dir", str(cache), str(tmp_path / "out.tar.gz"))
    assert report["entries"] == []
    assert "points outside the entry" in report["skipped"][key]


def test_relative_links_inside_the_entry_travel(tmp_path: Path) -> None:
    cache, key = _linking_tool(tmp_path, "count.txt")
    archive = tmp_path / "out.tar.gz"
    report = cli_json("export", "--cache-dir", str(cache), str(archive))
    assert [e["key"] for e in report["entries"]] == [key]
    with tarfile.open(archive) as tar:
        links = [m for m in tar.getmembers() if m.issym()]
    assert [m.linkname for m in links] == ["count.txt"]
    target = tmp_path / "other"
    assert cli("import", "--cache-dir", str(target), str(archive)).exit_code == 0
    entry = CacheStore(target).entry_dir(key)
    assert (entry / "link").read_text() == (entry / "count.txt").read_text()


def test_bad_values_are_usage_errors(tmp_path: Path) -> None:
    cache, _ = _uncommitted(tmp_path)
    before = tree_snapshot(cache)
    for args in (
        ["stats", "--since", "yesterday"],
        ["ls", "--larger-than", "huge"],
        ["ls", "--sort", "colour"],
        ["ls", "--limit", "0"],
        ["explain", "--last", "0"],
        ["export", str(tmp_path / "x.tar.gz"), "--used-since", "whenever"],
    ):
        result = cli(*args, "--cache-dir", str(cache))
        assert result.exit_code == 2, args
        assert "Invalid value" in result.output, args
    assert tree_snapshot(cache) == before
    assert not (tmp_path / "x.tar.gz").exists()


def test_entries_sharing_an_inode_export_separately(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("data\n")
    shared = tmp_path / "shared.bin"
    shared.write_bytes(b"shared" * 100)
    outs = [
        # Each run hard-links the same outside file as its output.
        run_tool(
            runner,
            COUNT,
            {"@type": "demo/count", "infile": str(source), "n": n},
            inputs={"infile": {}},
            outputs={"count": "count.txt"},
            cargs=lambda p: ["ln", str(shared), "count.txt"],
        )["count"]
        for n in range(2)
    ]
    assert outs[0].stat().st_ino == outs[1].stat().st_ino
    archive = tmp_path / "both.tar.gz"
    assert (
        len(cli_json("export", "--cache-dir", str(cache), str(archive))["entries"]) == 2
    )
    target = tmp_path / "other"
    result = cli("import", "--cache-dir", str(target), str(archive))
    assert result.exit_code == 0, result.output
    assert cli("verify", "--full", "--cache-dir", str(target)).exit_code == 0


def test_filesystem_errors_end_cleanly_and_lose_nothing(tmp_path: Path) -> None:
    cache, _key = _linking_tool(tmp_path, "count.txt")
    # The trash folder cannot be made (a file is in its way): nothing can go.
    (cache / CacheStore.TRASH_DIR).write_text("in the way")
    before = tree_snapshot(cache)
    result = cli("clear", "--yes", "--cache-dir", str(cache))
    assert result.exit_code == 1
    assert "is not a folder" in result.output  # reported, never used
    assert "Traceback" not in result.output
    assert tree_snapshot(cache) == before
    assert cli("verify", "--full", "--cache-dir", str(cache)).exit_code == 0


def test_entries_without_a_manifest_are_listed_and_trimmed(tmp_path: Path) -> None:
    """0.3.0 wrote entries with a done marker and no manifest: never served now."""
    cache = tmp_path / "cache"
    store = CacheStore(cache)
    staging = store.stage()
    (staging / "result.txt").write_text("42\n")
    key = "ab" + "0" * 62
    store.commit(staging, key)
    listing = cli_json("ls", "--cache-dir", str(cache))
    assert [(e["key"], e["state"], e["tool"]) for e in listing["entries"]] == [
        (key, "incomplete", "")
    ]
    report = cli_json(
        "gc", "--cache-dir", str(cache), "--older-than", "0s", "--keep-recent", "0"
    )
    assert [r["key"] for r in report["removed"]] == [key]
