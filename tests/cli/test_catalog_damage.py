"""A damaged or planted catalog line never fails a command or a run.

The catalog (`<cache>/.catalog/`) is a hint anyone sharing the cache can
write: its lines are checked before use, and a line that does not check out
is ignored (the folders and manifests stay the truth).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from clihelpers import cli, cli_json, key_of, make_runner, set_last_use, write_block

from conftest import require
from styxcache.cache_size import CacheSizeEstimate
from styxcache.catalog import CATALOG_DIR, load_catalog, write_snapshot
from styxcache.gc_trim import trim_after_commit
from styxcache.inventory import EntryDescriber, scan_stamps
from styxcache.quick_verify import whole_by_catalog
from styxcache.store import CacheStore


@pytest.fixture(autouse=True)
def _catalog_from_the_first_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A small cache is described from its manifests; here the catalog must be read.
    monkeypatch.setattr(EntryDescriber, "EAGER_AFTER", 0)


def _cache(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    runner = make_runner(cache, tmp_path / "s1")
    keys = [
        key_of(write_block(runner, source, size=4096, n=n)["out"], cache)
        for n in range(4)
    ]
    old = time.time() - 86400
    for age, key in enumerate(keys):
        set_last_use(cache, key, old + age)
    return cache, source, keys


def _plant(cache: Path, lines: list[bytes]) -> None:
    folder = cache / CATALOG_DIR
    folder.mkdir(exist_ok=True)
    # Read last (files are read in name order): its lines win.
    (folder / "zzzz-planted.tsv").write_bytes(b"".join(lines))


def _garbage_uses(keys: list[str]) -> list[bytes]:
    """`u4` lines for real keys whose time is not 20 ASCII digits."""
    k = [key.encode() for key in keys]
    return [
        b"u4\t" + k[0] + b"\tABCDEFGHIJKLMNOPQRST\n",  # letters, sorts last
        b"u4\t" + k[1] + b"\t12\n",  # short
        b"u4\t" + k[2] + b"\t" + "\uff19".encode() * 20 + b"\n",  # non-ASCII digits
        b"u4\t" + k[3] + b"\t99999999999999999999x\n",  # one field too long
        b"u4\t" + k[0] + b"\t\xff\xfe\x00\x01binary\x80\x81\x82\x83\x84\x85\x86\n",
        b"\x00\x01\x02\xff" * 40 + b"\n",
        b"c4\t" + k[1] + b"\tZZZZZZZZZZZZZZZZZZZZ\t1\t2\t3\t4.0\t5.0\tdemo/x\n",
        b"u4\t" + k[2][:10] + b"\n",
    ]


@pytest.mark.parametrize("shape", range(8))
def test_a_garbage_use_line_breaks_neither_ls_nor_gc_nor_a_run(
    tmp_path: Path, shape: int
) -> None:
    cache, source, keys = _cache(tmp_path)
    expected = sorted(keys)
    _plant(cache, [_garbage_uses(keys)[shape]])
    for args in (("--sort", "key"), ("--limit", "1"), ("--limit", "1", "--reverse")):
        result = cli("ls", "--cache-dir", str(cache), *args, "--json")
        assert result.exit_code == 0, result.output
    listed = cli_json("ls", "--cache-dir", str(cache), "--sort", "key")
    assert [e["key"] for e in listed["entries"]] == expected
    # A miss with a cap trims after its commit: the run must still succeed.
    capped = make_runner(cache, tmp_path / "s2", max_size="10K")
    out = write_block(capped, source, size=4096, n=99)["out"]
    assert out.read_bytes() == b"\0" * 4096
    result = cli("gc", "--cache-dir", str(cache), "--max-size", "1K", "--json")
    assert result.exit_code == 0, result.output


def test_a_row_claiming_another_key_is_ignored(tmp_path: Path) -> None:
    cache, _source, keys = _cache(tmp_path)
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious\n")
    entry = CacheStore(cache).entry_dir(keys[0])
    inode = os.lstat(entry).st_ino
    # Filed under keys[0] (its first 64 characters), naming a path outside.
    evil = f"{keys[0]}/../../../x"
    _plant(
        cache,
        [
            f"c4\t{evil}\t{time.time_ns():020d}\t{inode}\t1\t1\t1.0\t1.0\tdemo/evil\n".encode(),
            f"c4\t{'g' * 64}\t{time.time_ns():020d}\t{inode}\t1\t1\t1.0\t1.0\tdemo/g\n".encode(),
        ],
    )
    rows = load_catalog(cache).rows
    row = rows.get(keys[0])
    assert row is None or row.key == keys[0]
    listed = cli_json("ls", "--cache-dir", str(cache), "--sort", "key")
    assert [e["key"] for e in listed["entries"]] == sorted(keys)
    assert "demo/evil" not in {e["tool"] for e in listed["entries"]}
    result = cli(
        "gc", "--cache-dir", str(cache), "--max-size", "1", "--keep-recent", "0s"
    )
    assert result.exit_code == 0, result.output
    assert (victim / "keep.txt").read_text() == "precious\n"
    assert not any(CacheStore(cache).entry_dir(k).exists() for k in keys)


def test_trimming_never_raises_into_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, _source, keys = _cache(tmp_path)

    def broken_clock() -> float:
        raise ZeroDivisionError("clock broke")

    for _ in range(2):
        report = trim_after_commit(
            CacheStore(cache),
            1,
            keep=keys[0],
            estimate=CacheSizeEstimate(),
            clock=broken_clock,
        )
        assert report is None
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "ZeroDivisionError" in warned[0].getMessage()


def test_a_catalog_folder_replaced_by_a_link_is_never_written_through(
    tmp_path: Path,
) -> None:
    cache, source, _keys = _cache(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(cache / CATALOG_DIR, tmp_path / "old-catalog")
    (cache / CATALOG_DIR).symlink_to(elsewhere)
    runner = make_runner(cache, tmp_path / "s3")
    write_block(runner, source, size=4096, n=0)  # a hit: records a use
    write_block(runner, source, size=4096, n=50)  # a miss: records a commit
    write_snapshot(cache, [], [])
    assert cli("ls", "--cache-dir", str(cache), "--json").exit_code == 0
    assert list(elsewhere.iterdir()) == []


def _forged_row(cache: Path, key: str) -> bytes:
    inode = os.lstat(CacheStore(cache).entry_dir(key)).st_ino
    return f"c4\t{key}\t{time.time_ns():020d}\t{inode}\t1\t1\t1.0\t1.0\tdemo/forged\n".encode()


def test_catalog_files_of_untrusted_users_are_ignored(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root to make a file another user's")
    cache, _source, keys = _cache(tmp_path)
    _plant(cache, [_forged_row(cache, keys[0])])
    forged = cache / CATALOG_DIR / "zzzz-planted.tsv"
    row = load_catalog(cache).rows.get(keys[0])
    assert row is not None and row.tool == "demo/forged"  # the line is valid
    os.chown(forged, 65534, 65534)  # now another member's file
    loaded = load_catalog(cache)
    row = loaded.rows.get(keys[0])
    assert row is not None and row.tool == "demo/write"
    assert forged.name not in loaded.files


def test_a_done_marker_replaced_by_a_link_is_not_whole_by_catalog(
    tmp_path: Path,
) -> None:
    cache, _source, keys = _cache(tmp_path)
    store = CacheStore(cache)
    rows = load_catalog(cache, checks=True).rows
    stamps = {s.key: s for s in scan_stamps(store)}
    assert whole_by_catalog(store, stamps[keys[0]], rows)
    marker = store.entry_dir(keys[0]) / store.DONE_MARKER
    os.chmod(marker.parent, 0o755)
    marker.unlink()
    marker.symlink_to(tmp_path / "in.txt")
    assert not whole_by_catalog(store, stamps[keys[0]], rows)
