"""Maintenance never leaves the cache: planted links are reported, never followed.

A colleague with write access to a shared cache replaces a cache folder by a
symlink into someone's home; the victim's routine `gc`, `clear`, `verify`,
`ls` or `export` must neither delete nor read through it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from clihelpers import WRITE, cli, key_of, make_runner, tree_snapshot, write_block
from styxdefs import StyxRuntimeError

from conftest import run_tool
from styxcache.store import CacheStore

OLD = time.time() - 90 * 86400
FAKE_KEY = "ab" + "1" * 62
"""A name a cache walk would take for an entry (or an index record)."""


def _victim(tmp_path: Path) -> Path:
    """A sibling folder standing for the victim's home, every item long unused."""
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "chapter1.tex").write_text("years of work\n")
    (home / FAKE_KEY).mkdir()
    (home / FAKE_KEY / "notes.txt").write_text("looks like an entry\n")
    (home / (FAKE_KEY[:2] + "2" * 62)).write_text("looks like an index record\n")
    (home / "README").write_text("mine\n")
    for folder, dirs, files in os.walk(home):
        for name in dirs + files:
            os.utime(os.path.join(folder, name), (OLD, OLD))
    os.utime(home, (OLD, OLD))
    return home


def _cache(tmp_path: Path) -> tuple[Path, list[str]]:
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    keys = [
        key_of(write_block(runner, source, size=100, n=n)["out"], cache)
        for n in range(2)
    ]
    for key in keys:
        os.utime(CacheStore(cache).entry_dir(key), (OLD, OLD))
    return cache, keys


def _plant(cache: Path, keys: list[str], kind: str, home: Path) -> Path:
    """Replace (or add) the folder of `kind` by a symlink to the victim's home."""
    if kind == "shard":
        link = cache / FAKE_KEY[:2]
    elif kind == "entry":
        link = cache / keys[0][:2] / (keys[0][:2] + "3" * 62)
    elif kind == "tool":
        (cache / ".tools").mkdir(exist_ok=True)
        link = cache / ".tools" / "evil_tool"
    else:
        link = cache / kind
    if link.exists():
        os.rename(link, link.with_name(link.name + ".moved"))
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(home, target_is_directory=True)
    return link


KINDS = [
    ".failed",
    ".incoming",
    ".quarantine",
    ".trash",
    ".tools",
    "tool",
    "shard",
    "entry",
]

SWEEP_ALL = (
    "--older-than",
    "0s",
    "--keep-recent",
    "0s",
    "--staging-age",
    "0s",
    "--failed-age",
    "0s",
    "--quarantine-age",
    "0s",
)


@pytest.mark.parametrize("kind", KINDS)
def test_gc_and_clear_never_delete_through_a_planted_link(
    tmp_path: Path, kind: str
) -> None:
    cache, keys = _cache(tmp_path)
    home = _victim(tmp_path)
    link = _plant(cache, keys, kind, home)
    before = tree_snapshot(home)
    dry = cli("gc", "--cache-dir", str(cache), "--dry-run", *SWEEP_ALL, "--json")
    assert dry.exit_code == 1, dry.output
    assert str(link) in {u["path"] for u in json.loads(dry.stdout)["unsafe"]}
    result = cli("gc", "--cache-dir", str(cache), *SWEEP_ALL, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [u["path"] for u in report["unsafe"]] == [str(link)]
    assert "symlink" in report["unsafe"][0]["reason"]
    assert tree_snapshot(home) == before
    cleared = cli("clear", "--yes", "--cache-dir", str(cache))
    assert cleared.exit_code == 1
    assert "symlink" in cleared.output
    assert tree_snapshot(home) == before
    assert link.is_symlink(), "the link itself is left for its owner to explain"
    if kind != ".trash":  # with a planted .trash, entries cannot be removed
        assert list(CacheStore(cache).iter_keys()) == []


@pytest.mark.parametrize("kind", ["shard", "entry"])
def test_verify_ls_and_export_never_read_through_a_planted_link(
    tmp_path: Path, kind: str
) -> None:
    cache, keys = _cache(tmp_path)
    home = _victim(tmp_path)
    link = _plant(cache, keys, kind, home)
    before = tree_snapshot(home)
    listing = cli("ls", "--cache-dir", str(cache), "--json")
    assert listing.exit_code == 0
    listed = {e["key"] for e in json.loads(listing.stdout)["entries"]}
    assert FAKE_KEY not in listed and link.name not in listed
    verified = cli("verify", "--full", "--cache-dir", str(cache), "--json")
    assert verified.exit_code == 1
    assert [u["path"] for u in json.loads(verified.stdout)["unsafe"]] == [str(link)]
    archive = tmp_path / "out.tar.gz"
    exported = cli("export", "--cache-dir", str(cache), str(archive), "--json")
    assert exported.exit_code == 0, exported.output
    assert sorted(e["key"] for e in json.loads(exported.stdout)["entries"]) == sorted(
        keys
    )
    assert tree_snapshot(home) == before
    assert not (home / ".quarantine").exists()


def test_names_that_are_not_keys_are_ignored_not_crashed_on_nor_deleted(
    tmp_path: Path,
) -> None:
    cache, keys = _cache(tmp_path)
    shard = cache / keys[0][:2]
    strays = [
        shard / f"{keys[0][:2]}.not-a-key",
        shard / f"{keys[0][:2]}ZZ",
        shard / (keys[0][:2] + "g" * 62),
        cache / "zz",
        cache / "notes",
    ]
    for stray in strays:
        stray.mkdir()
        (stray / "keep.txt").write_text("mine\n")
        os.utime(stray, (OLD, OLD))
    (shard / "README").write_text("a file\n")
    before = {str(p): tree_snapshot(p) for p in strays}
    verified = cli("verify", "--cache-dir", str(cache), "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["checked"] == 2
    result = cli("gc", "--cache-dir", str(cache), *SWEEP_ALL, "--json")
    assert result.exit_code == 0, result.output
    assert sorted(r["key"] for r in json.loads(result.stdout)["removed"]) == sorted(
        keys
    )
    assert {str(p): tree_snapshot(p) for p in strays} == before
    assert (shard / "README").exists()


def test_a_failed_run_never_prunes_through_a_planted_failed_folder(
    tmp_path: Path,
) -> None:
    cache, keys = _cache(tmp_path)
    home = _victim(tmp_path)
    _plant(cache, keys, ".failed", home)
    before = tree_snapshot(home)
    runner = make_runner(cache, tmp_path / "scratch2", keep_failed=1)
    with pytest.raises(StyxRuntimeError):
        run_tool(
            runner,
            WRITE,
            {"@type": "demo/write", "n": 99},
            outputs={"out": "out.bin"},
            cargs=lambda _p: ["sh", "-c", "echo boom > out.bin; exit 3"],
        )
    assert tree_snapshot(home) == before


@pytest.mark.parametrize("kind", [".incoming", "shard"])
def test_import_never_writes_through_a_planted_link(tmp_path: Path, kind: str) -> None:
    cache, keys = _cache(tmp_path)
    archive = tmp_path / "all.tar.gz"
    assert cli("export", "--cache-dir", str(cache), str(archive)).exit_code == 0
    target = tmp_path / "target"
    target.mkdir()
    home = _victim(tmp_path)
    before = tree_snapshot(home)
    link = target / (kind if kind != "shard" else keys[0][:2])
    link.symlink_to(home, target_is_directory=True)
    result = cli("import", "--cache-dir", str(target), str(archive), "--json")
    assert tree_snapshot(home) == before
    if kind == ".incoming":
        assert result.exit_code == 1
        assert "refusing to extract through it" in " ".join(result.output.split())
    else:
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert list(report["skipped"]) == [keys[0]]
        assert report["imported"] == [keys[1]]
