"""The catalog makes scans fast and never changes what they report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from clihelpers import cli, cli_json, count_lines, key_of, make_runner, write_block

from styxcache.catalog import CATALOG_DIR, load_catalog
from styxcache.store import CacheStore


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, list[str]]:
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("a\nb\n")
    keys = [
        key_of(write_block(runner, source, size=1000 * (n + 1), n=n)["out"], cache)
        for n in range(3)
    ]
    keys.append(key_of(count_lines(runner, source)["count"], cache))
    return cache, keys


def test_commits_are_catalogued_and_listings_match_the_manifests(
    cache: tuple[Path, list[str]],
) -> None:
    root, keys = cache
    rows = load_catalog(root).rows
    assert all(rows.get(k) is not None for k in keys)
    with_catalog = cli_json("ls", "--cache-dir", str(root), "--sort", "key")
    shutil.rmtree(root / CATALOG_DIR)
    without = cli_json("ls", "--cache-dir", str(root), "--sort", "key")
    assert with_catalog == without
    by_size = cli_json("ls", "--cache-dir", str(root), "--sort", "size")
    assert [e["key"] for e in by_size["entries"]][:3] == keys[2::-1]


def test_a_stale_row_is_not_used_for_a_replaced_entry(
    cache: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, keys = cache
    store = CacheStore(root)
    entry = store.entry_dir(keys[0])
    # Replaced by a copy (a new inode): the row describes the old folder.
    shutil.copytree(entry, tmp_path / "copy", symlinks=True)
    shutil.rmtree(entry)
    os.rename(tmp_path / "copy", entry)
    manifest = json.loads((entry / store.MANIFEST).read_text())
    manifest["tool"] = "demo/renamed"
    os.chmod(entry / store.MANIFEST, 0o644)
    (entry / store.MANIFEST).write_text(json.dumps(manifest))
    listed = cli_json("ls", "--cache-dir", str(root), "--sort", "key")
    tools = {e["key"]: e["tool"] for e in listed["entries"]}
    assert tools[keys[0]] == "demo/renamed"


def test_verify_from_the_catalog_still_finds_damage(
    cache: tuple[Path, list[str]],
) -> None:
    root, keys = cache
    assert cli("verify", "--cache-dir", str(root)).exit_code == 0
    store = CacheStore(root)
    out = store.entry_dir(keys[1]) / "out.bin"
    os.chmod(out, 0o644)
    with open(out, "ab") as handle:  # same folder, same manifest: a longer file
        handle.write(b"x")
    result = cli("verify", "--cache-dir", str(root), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [d["key"] for d in report["damaged"]] == [keys[1]]
    assert "2001 bytes, expected 2000" in report["damaged"][0]["reason"]
    assert report["checked"] == 4


def test_verify_does_not_trust_a_row_whose_manifest_changed(
    cache: tuple[Path, list[str]],
) -> None:
    root, keys = cache
    store = CacheStore(root)
    manifest_path = store.entry_dir(keys[0]) / store.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"][0]["size"] += 1  # the manifest now disagrees with the file
    os.chmod(manifest_path, 0o644)
    manifest_path.write_text(json.dumps(manifest))
    result = cli("verify", "--cache-dir", str(root), "--json")
    assert result.exit_code == 1
    assert [d["key"] for d in json.loads(result.stdout)["damaged"]] == [keys[0]]


def test_verify_on_several_processes_finds_the_same_damage(
    cache: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from styxcache import quick_verify

    root, keys = cache
    assert cli("verify", "--cache-dir", str(root)).exit_code == 0  # catalogs checks
    monkeypatch.setattr(quick_verify, "MIN_PER_JOB", 1)  # fork even for 4 entries
    out = CacheStore(root).entry_dir(keys[2]) / "out.bin"
    os.chmod(out, 0o644)
    out.write_bytes(b"short")
    result = cli("verify", "--cache-dir", str(root), "--jobs", "3", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [d["key"] for d in report["damaged"]] == [keys[2]]
    assert report["checked"] == 4
    again = cli_json("verify", "--cache-dir", str(root), "--jobs", "3")
    assert again["damaged"] == [] and again["checked"] == 3


def test_a_long_lived_writer_closes_full_files_so_scans_can_fold_them(
    cache: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from styxcache import catalog, catalog_files
    from styxcache.inventory import scan_entries

    root, keys = cache
    monkeypatch.setattr(catalog_files, "ROTATE_BYTES", 300)
    for key in keys * 30:  # uses, as hits record them, from this live process
        catalog.record_use(root, key)
    names = os.listdir(root / CATALOG_DIR)
    closed = [n for n in names if n.startswith("closed-")]
    assert closed  # full files were closed, though their writer still runs
    assert catalog.foldable(names) >= len(closed)
    assert len(load_catalog(root).rows) == 4
    list(scan_entries(CacheStore(root)))  # a full scan folds them
    assert not any(n.startswith("closed-") for n in os.listdir(root / CATALOG_DIR))
    assert len(load_catalog(root).rows) == 4


def test_a_use_recorded_while_a_scan_runs_outlives_its_snapshot(
    cache: tuple[Path, list[str]],
) -> None:
    from styxcache import catalog
    from styxcache.inventory import EntryDescriber, scan_stamps

    root, keys = cache
    store = CacheStore(root)
    describer = EntryDescriber(store)  # the scan starts
    for stamp in scan_stamps(store):
        describer.describe(stamp)
    # A hit elsewhere, after the scan read the folder times.
    catalog.record_use(root, keys[0], describer.started_ns + 1)
    describer.snapshot()
    known = load_catalog(root).rows.last_use_of(keys[0])
    assert known is not None and known[1] == describer.started_ns + 1
