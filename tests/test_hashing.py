"""ContentHasher: file digests on every read path, folder digests and their memo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from blake3 import blake3
from styxdefs import LocalRunner, Metadata

from conftest import run_tool
from styxcache import CachePolicy, CachingRunner
from styxcache import hashing as hashing_module
from styxcache import memo as memo_module
from styxcache.hashing import ContentHasher, stat_signature
from styxcache.memo import DigestMemo

THRESHOLD = hashing_module._MMAP_THRESHOLD


class CountingHasher(ContentHasher):
    """Records which files are read, by name, on both read paths."""

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(threads=threads)
        self.reads: list[str] = []

    def _read_and_hash(self, path: Path | str, size: int) -> str:
        self.reads.append(os.path.basename(path))
        return super()._read_and_hash(path, size)

    def hash_file(self, path: Path | str, size: int | None = None) -> str:
        if (size if size is not None else os.path.getsize(path)) >= THRESHOLD:
            self.reads.append(os.path.basename(path))
        return super().hash_file(path, size)


@pytest.fixture
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memo_module, "SETTLE_SECONDS", 0.0)


def _subject(root: Path) -> Path:
    """A small FreeSurfer-like subject folder."""
    for sub, name, data in [
        ("mri", "orig.mgz", b"orig" * 300),
        ("mri", "brain.mgz", b"brain" * 200),
        ("surf", "lh.white", b"white"),
        ("surf", "rh.white", b"white"),
        ("label", "lh.cortex.label", b"label"),
    ]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / name).write_bytes(data)
    (root / "scripts").mkdir()
    return root


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        4095,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        THRESHOLD - 1,
        THRESHOLD,
        THRESHOLD + 7,
    ],
)
def test_file_digest_is_blake3_of_the_bytes(tmp_path: Path, size: int) -> None:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = blake3(data).hexdigest()
    assert ContentHasher().hash_file(path) == expected
    assert ContentHasher(threads=1).hash_path(path) == expected
    assert ContentHasher(chunk_size=1000).hash_file(str(path), size) == expected


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        ContentHasher(chunk_size=0)


def test_folder_digest_ignores_the_folder_name_and_place(tmp_path: Path) -> None:
    one = _subject(tmp_path / "sub-01")
    two = tmp_path / "elsewhere" / "sub-copy"
    shutil.copytree(one, two)
    assert ContentHasher().hash_path(one) == ContentHasher().hash_path(two)


@pytest.mark.parametrize(
    "change",
    [
        "edit",
        "rename",
        "add_file",
        "add_empty_folder",
        "remove",
        "move_between_folders",
    ],
)
def test_folder_digest_sees_every_change(tmp_path: Path, change: str) -> None:
    root = _subject(tmp_path / "sub")
    before = ContentHasher().hash_path(root)
    if change == "edit":
        (root / "surf" / "lh.white").write_bytes(b"WHITE")
    elif change == "rename":
        (root / "surf" / "lh.white").rename(root / "surf" / "lh.pial")
    elif change == "add_file":
        (root / "scripts" / "recon-all.log").write_bytes(b"")
    elif change == "add_empty_folder":
        (root / "tmp").mkdir()
    elif change == "remove":
        (root / "label" / "lh.cortex.label").unlink()
    else:
        (root / "surf" / "rh.white").rename(root / "label" / "rh.white")
    assert ContentHasher().hash_path(root) != before


def test_folder_digest_follows_file_symlinks_by_content(tmp_path: Path) -> None:
    root = _subject(tmp_path / "sub")
    target = tmp_path / "outside.txt"
    target.write_bytes(b"v1")
    (root / "link").symlink_to(target)
    (root / "dangling").symlink_to(tmp_path / "missing")
    (root / "dirlink").symlink_to(root / "mri")
    first = ContentHasher().hash_path(root)
    assert ContentHasher().hash_path(root) == first
    target.write_bytes(b"v2")
    assert ContentHasher().hash_path(root) != first


def test_excluded_folder_is_left_out(tmp_path: Path) -> None:
    root = _subject(tmp_path / "sub")
    cache = root / "cache"
    cache.mkdir()
    before = ContentHasher().hash_path(root, exclude=[cache])
    (cache / "entry").write_bytes(b"new cache entry")
    assert ContentHasher().hash_path(root, exclude=[cache]) == before
    assert ContentHasher().hash_path(root) != before


def test_special_files_are_not_read(tmp_path: Path) -> None:
    root = _subject(tmp_path / "sub")
    os.mkfifo(root / "pipe")  # reading it would block forever
    digest = ContentHasher().hash_path(root)
    (root / "pipe").unlink()
    assert ContentHasher().hash_path(root) != digest


def test_parallel_and_serial_folder_hashing_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "many"
    for i in range(300):
        (root / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 7}" / f"f{i}").write_bytes(os.urandom(100 + i))
    (root / "big.bin").write_bytes(os.urandom(THRESHOLD + 3))
    serial = ContentHasher(threads=1).hash_path(root)
    # Force the threaded path for small files too.
    monkeypatch.setattr(hashing_module, "_PARALLEL_BYTES", 0)
    monkeypatch.setattr(hashing_module, "_BATCH_FILES", 16)
    assert ContentHasher(threads=4).hash_path(root) == serial


def test_unchanged_folder_is_not_read_again(tmp_path: Path, no_settle: None) -> None:
    root = _subject(tmp_path / "sub")
    (root / "mri" / "big.mgz").write_bytes(os.urandom(THRESHOLD + 1))
    memo = DigestMemo(tmp_path / "memo")
    hasher = CountingHasher()
    first = hasher.hash_path(root, memo=memo)
    assert sorted(hasher.reads) == sorted(
        ["orig.mgz", "brain.mgz", "big.mgz", "lh.white", "rh.white", "lh.cortex.label"]
    )
    hasher.reads.clear()
    assert hasher.hash_path(root, memo=memo) == first
    assert hasher.reads == []


def test_one_changed_file_is_the_only_one_read(tmp_path: Path, no_settle: None) -> None:
    root = _subject(tmp_path / "sub")
    memo = DigestMemo(tmp_path / "memo")
    hasher = CountingHasher()
    first = hasher.hash_path(root, memo=memo)
    hasher.reads.clear()
    (root / "surf" / "lh.white").write_bytes(b"edited")
    second = hasher.hash_path(root, memo=memo)
    assert second != first
    assert hasher.reads == ["lh.white"]
    # The same content under another name is not served from the file memo
    # by accident: the folder memo is keyed by every name.
    assert second == ContentHasher().hash_path(root)


def test_fresh_folder_is_not_remembered(tmp_path: Path) -> None:
    root = _subject(tmp_path / "sub")
    memo = DigestMemo(tmp_path / "memo")
    hasher = CountingHasher()
    hasher.hash_path(root, memo=memo)
    hasher.hash_path(root, memo=memo)
    assert hasher.reads.count("orig.mgz") == 2
    assert len(memo) == 0


def test_stat_signature_matches_digest_signature(tmp_path: Path) -> None:
    root = _subject(tmp_path / "sub")
    file = root / "mri" / "orig.mgz"
    hasher = ContentHasher()
    assert hasher.digest(root).signature == stat_signature(root)
    assert hasher.digest(file).signature == stat_signature(file)
    before = stat_signature(root)
    os.utime(file, ns=(0, 0))
    assert stat_signature(root) != before


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ContentHasher().hash_path(tmp_path / "nope")


TOOL = Metadata(id="copy_tool", name="copy tool", package="test")


def test_cache_hit_does_not_read_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_settle: None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    big = data / "bold.nii"
    big.write_bytes(os.urandom(THRESHOLD + 5))
    subject = _subject(data / "sub-01")
    hasher = CountingHasher()
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "scratch"),
        tmp_path / "cache",
        policy=CachePolicy(hasher=hasher, memo_dir=tmp_path / "memo"),
    )

    def call() -> None:
        run_tool(
            runner,
            TOOL,
            {"bold": str(big), "t1": str(subject / "mri" / "orig.mgz")},
            inputs={"bold": {}, "t1": {"resolve_parent": True}},
            outputs={"out": "out.txt"},
            cargs=lambda r: ["sh", "-c", f"wc -c {r['bold']} > out.txt"],
        )

    call()
    assert "bold.nii" in hasher.reads
    hasher.reads.clear()
    call()
    assert runner.stats.hits == 1
    assert hasher.reads == []


@pytest.mark.parametrize("stated", [0, 10, 999, 5000])
def test_file_that_grew_or_shrank_since_its_stat_is_read_whole(
    tmp_path: Path, stated: int
) -> None:
    data = os.urandom(3000)
    path = tmp_path / "growing.log"
    path.write_bytes(data)
    expected = blake3(data).hexdigest()
    assert ContentHasher(chunk_size=1000).hash_file(path, stated) == expected
    assert ContentHasher().hash_file(path, stated) == expected
