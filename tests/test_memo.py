"""The digest memo: an unchanged file is read once, a changed one always again.

Nothing here measures time. Where a test needs a digest to be remembered, it
shrinks the settle window to zero instead of waiting it out.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest
from blake3 import blake3

from styxcache import memo as memo_module
from styxcache.hashing import ContentHasher
from styxcache.memo import SETTLE_SECONDS, DigestMemo, file_memo_key, is_settled


class CountingHasher(ContentHasher):
    """A ContentHasher that records every small file whose bytes it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def _read_and_hash(self, path: Path | str, size: int) -> str:
        self.reads.append(os.path.basename(path))
        return super()._read_and_hash(path, size)


@pytest.fixture
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat every file as settled, so digests are remembered at once."""
    monkeypatch.setattr(memo_module, "SETTLE_SECONDS", 0.0)


@pytest.fixture
def memo(tmp_path: Path) -> DigestMemo:
    return DigestMemo(tmp_path / "memo")


def _digest(data: bytes) -> str:
    return str(blake3(data).hexdigest())


def test_unchanged_file_is_read_once(
    tmp_path: Path, memo: DigestMemo, no_settle: None
) -> None:
    path = tmp_path / "t1.nii"
    path.write_bytes(b"voxels" * 1000)
    hasher = CountingHasher()
    first = hasher.hash_path(path, memo=memo)
    second = hasher.hash_path(path, memo=memo)
    assert first == second == _digest(b"voxels" * 1000)
    assert hasher.reads.count("t1.nii") == 1


def test_memo_persists_across_instances(tmp_path: Path, no_settle: None) -> None:
    path = tmp_path / "t1.nii"
    path.write_bytes(b"abc")
    CountingHasher().hash_path(path, memo=DigestMemo(tmp_path / "memo"))
    later = CountingHasher()
    assert later.hash_path(path, memo=DigestMemo(tmp_path / "memo")) == _digest(b"abc")
    assert later.reads == []


def test_changed_file_with_restored_mtime_is_read_again(
    tmp_path: Path, memo: DigestMemo, no_settle: None
) -> None:
    # Same size and the old mtime put back (as `cp -p` or rsync do): only the
    # ctime, which nothing can set back, tells the versions apart.
    path = tmp_path / "bold.nii"
    path.write_bytes(b"A" * 4096)
    before = path.stat()
    hasher = CountingHasher()
    assert hasher.hash_path(path, memo=memo) == _digest(b"A" * 4096)
    path.write_bytes(b"B" * 4096)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if after.st_ctime_ns == before.st_ctime_ns:
        pytest.skip("filesystem timestamps too coarse to see this write")
    assert hasher.hash_path(path, memo=memo) == _digest(b"B" * 4096)
    assert hasher.reads.count("bold.nii") == 2


def test_file_replaced_by_same_size_and_mtime_is_read_again(
    tmp_path: Path, memo: DigestMemo, no_settle: None
) -> None:
    path = tmp_path / "mask.nii"
    path.write_bytes(b"1" * 512)
    old = path.stat()
    hasher = CountingHasher()
    hasher.hash_path(path, memo=memo)
    other = tmp_path / "mask.tmp"
    other.write_bytes(b"0" * 512)
    os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(other, path)
    new = path.stat()
    assert new.st_ino != old.st_ino
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert hasher.hash_path(path, memo=memo) == _digest(b"0" * 512)
    assert hasher.reads.count("mask.nii") == 2


def test_touched_file_is_read_again_with_the_same_digest(
    tmp_path: Path, memo: DigestMemo, no_settle: None
) -> None:
    path = tmp_path / "dwi.mif"
    path.write_bytes(b"gradients")
    hasher = CountingHasher()
    first = hasher.hash_path(path, memo=memo)
    stamp = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert hasher.hash_path(path, memo=memo) == first
    assert hasher.reads.count("dwi.mif") == 2


def test_file_modified_within_settle_window_is_not_remembered(
    tmp_path: Path, memo: DigestMemo
) -> None:
    assert memo_module.SETTLE_SECONDS == SETTLE_SECONDS == 2.0
    path = tmp_path / "fresh.nii"
    path.write_bytes(b"just written")
    hasher = CountingHasher()
    assert hasher.hash_path(path, memo=memo) == hasher.hash_path(path, memo=memo)
    assert hasher.reads.count("fresh.nii") == 2
    assert memo.get(file_memo_key(path.stat())) is None
    assert len(memo) == 0


def test_old_mtime_does_not_settle_a_fresh_ctime(
    tmp_path: Path, memo: DigestMemo
) -> None:
    # A file extracted from an archive gets an old mtime but a new ctime.
    path = tmp_path / "from_tar.nii"
    path.write_bytes(b"extracted")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    hasher = CountingHasher()
    hasher.hash_path(path, memo=memo)
    assert len(memo) == 0


def test_is_settled_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    st = path.stat()
    newest = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    assert not is_settled(st, now=newest)
    assert not is_settled(st, now=newest + SETTLE_SECONDS - 0.01)
    assert is_settled(st, now=newest + SETTLE_SECONDS + 0.01)


def test_memo_key_names_device_inode_size_and_times(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"xyz")
    st = path.stat()
    assert file_memo_key(st) == (
        f"f:{st.st_dev}:{st.st_ino}:3:{st.st_mtime_ns}:{st.st_ctime_ns}"
    )


def test_get_many_and_put_many(memo: DigestMemo) -> None:
    items = [(f"f:1:{i}:1:1:1", f"{i:064x}") for i in range(1200)]
    memo.put_many(items)
    keys = [k for k, _ in items] + ["f:unknown"]
    found = memo.get_many(keys)
    assert found == dict(items)
    assert len(memo) == 1200


def test_memo_stays_bounded_and_drops_oldest(tmp_path: Path) -> None:
    memo = DigestMemo(tmp_path / "memo", max_bytes=256 * 1024)
    for batch in range(40):
        memo.put_many([(f"f:{batch}:{i}:0:0:0", "0" * 64) for i in range(200)])
    # A fresh instance reads only the database, not this process's memory.
    stored = DigestMemo(tmp_path / "memo")
    assert 0 < len(stored) < 40 * 200
    # The newest rows survive trimming; the oldest are the ones dropped.
    assert stored.get("f:39:199:0:0:0") is not None
    assert stored.get("f:0:0:0:0:0") is None


def test_repeated_lookups_agree_with_the_database(tmp_path: Path) -> None:
    memo = DigestMemo(tmp_path / "memo")
    memo.put("f:1:2:3:4:5", "d" * 64)
    assert memo.get("f:1:2:3:4:5") == memo.get("f:1:2:3:4:5") == "d" * 64
    other = DigestMemo(tmp_path / "memo")
    assert other.get("f:1:2:3:4:5") == "d" * 64
    assert other.get("f:9:9:9:9:9") is None


def test_memo_is_sqlite_in_wal_mode(memo: DigestMemo) -> None:
    memo.put("f:1:1:1:1:1", "a" * 64)
    with sqlite3.connect(memo.path) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_unusable_memo_turns_into_a_no_op(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the memo folder should be")
    memo = DigestMemo(blocker)
    memo.put("f:1:1:1:1:1", "a" * 64)
    assert memo.get("f:1:1:1:1:1") is None
    assert len(memo) == 0
    path = tmp_path / "input.nii"
    path.write_bytes(b"data")
    assert ContentHasher().hash_path(path, memo=memo) == _digest(b"data")
    assert any("digest memo" in r.getMessage() for r in caplog.records)


def _writer(folder: str, worker: int, rows: int) -> None:
    memo = DigestMemo(Path(folder))
    for start in range(0, rows, 50):
        memo.put_many(
            [
                (f"f:{worker}:{i}:0:0:0", f"{worker:032x}{i:032x}")
                for i in range(start, start + 50)
            ]
        )
        memo.get(f"f:{(worker + 1) % 4}:{start}:0:0:0")


def test_many_processes_share_one_memo(tmp_path: Path) -> None:
    folder = tmp_path / "memo"
    DigestMemo(folder)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_writer, args=(str(folder), w, 400)) for w in range(4)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    memo = DigestMemo(folder)
    assert len(memo) == 4 * 400
    assert memo.get("f:3:399:0:0:0") == f"{3:032x}{399:032x}"


def test_forked_child_opens_its_own_connection(tmp_path: Path, no_settle: None) -> None:
    memo = DigestMemo(tmp_path / "memo")
    memo.put("f:parent:0:0:0:0", "p" * 64)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=memo.put, args=("f:child:0:0:0:0", "c" * 64))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert memo.get("f:child:0:0:0:0") == "c" * 64
    assert memo.get("f:parent:0:0:0:0") == "p" * 64


MOUNTS = (
    "/dev/vda / ext4 rw,relatime 0 0\n"
    "server:/export /mnt/lab\\040data nfs4 rw 0 0\n"
    "tmpfs /mnt/lab\\040data/scratch tmpfs rw 0 0\n"
)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/home/me/.cache", "ext4"),
        ("/mnt/lab data", "nfs4"),
        ("/mnt/lab data/memo", "nfs4"),
        ("/mnt/lab database", "ext4"),
        ("/mnt/lab data/scratch/memo", "tmpfs"),
    ],
)
def test_filesystem_type_picks_the_nearest_mount(path: str, kind: str) -> None:
    assert memo_module.filesystem_type(Path(path), MOUNTS) == kind


def test_memo_on_a_network_filesystem_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(memo_module, "filesystem_type", lambda path: "nfs4")
    memo = DigestMemo(tmp_path / "memo")
    memo.put("f:1:1:1:1:1", "a" * 64)
    assert memo.get("f:1:1:1:1:1") == "a" * 64  # still used, with a warning
    assert any("nfs4" in r.getMessage() for r in caplog.records)
