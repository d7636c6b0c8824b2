"""`styxcache export` / `import`: moving entries between real caches."""

from __future__ import annotations

import contextlib
import gc
import gzip
import io
import json
import os
import pty
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

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

from styxcache.store import CacheStore
from styxcache.transfer import TransferError, import_entries
from styxcache.transfer.parallel import worker_count


@pytest.fixture
def source_cache(tmp_path: Path) -> tuple[Path, list[str], Path]:
    """Three entries; the first was last used two days ago."""
    cache = tmp_path / "site-a"
    runner = make_runner(cache, tmp_path / "scratch-a")
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n")
    keys = [
        key_of(write_block(runner, source, size=3000, n=1)["out"], cache),
        key_of(write_block(runner, source, size=5000, n=2)["out"], cache),
        key_of(count_lines(runner, source)["count"], cache),
    ]
    set_last_use(cache, keys[0], time.time() - 2 * 86400)
    return cache, keys, source


@pytest.fixture
def exported(
    source_cache: tuple[Path, list[str], Path], tmp_path: Path
) -> tuple[Path, list[str], Path]:
    """The source cache exported whole: (cache, keys, archive)."""
    cache, keys, _ = source_cache
    archive = tmp_path / "all.tar.gz"
    cli("export", "--cache-dir", str(cache), str(archive))
    return cache, keys, archive


def test_export_used_since_then_import_serves_hits(
    source_cache: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    cache, keys, source = source_cache
    archive = tmp_path / "used.tar.gz"
    report = cli_json(
        "export", "--cache-dir", str(cache), "--used-since", "1d", str(archive)
    )
    assert sorted(e["key"] for e in report["entries"]) == sorted(keys[1:])
    target = tmp_path / "site-b"
    result = cli("import", "--cache-dir", str(target), str(archive))
    assert result.exit_code == 0, result.output
    assert "Imported 2 entries" in result.stdout
    assert sorted(CacheStore(target).iter_keys()) == sorted(keys[1:])
    # The imported entries are served as hits, without running the tool.
    events = []
    runner = make_runner(target, tmp_path / "scratch-b")
    runner.on_event = events.append
    out = write_block(runner, source, size=5000, n=2)
    assert out["out"].read_bytes() == bytes(5000)
    count_lines(runner, source)
    assert [e.kind for e in events] == ["hit", "hit"]
    # Importing again changes nothing and says so.
    again = cli_json("import", "--cache-dir", str(target), str(archive))
    assert again["imported"] == [] and sorted(again["present"]) == sorted(keys[1:])


def test_import_keeps_last_use_and_tool_index(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    _, keys, archive = exported
    target = tmp_path / "site-b"
    cli("import", "--cache-dir", str(target), str(archive))
    store = CacheStore(target)
    assert store.entry_dir(keys[0]).stat().st_mtime < time.time() - 86400
    assert keys[2] in store.recent_keys("demo/count")


def test_import_never_replaces_a_good_entry(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    cache, keys, archive = exported
    inode = CacheStore(cache).entry_dir(keys[1]).stat().st_ino
    report = cli_json("import", "--cache-dir", str(cache), str(archive))
    assert sorted(report["present"]) == sorted(keys)
    assert CacheStore(cache).entry_dir(keys[1]).stat().st_ino == inode


def _rewrite(archive: Path, out: Path, change: dict[str, bytes]) -> None:
    """Copy an export, replacing the content of some members."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            for suffix, new in change.items():
                if member.name.endswith(suffix):
                    data = new
                    member.size = len(new)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)


def test_damaged_entry_rejects_the_whole_import(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    _, keys, archive = exported
    bad = tmp_path / "bad.tar.gz"
    # Same size, other content: only a content check notices.
    _rewrite(archive, bad, {f"{keys[1]}/out.bin": b"\x01" * 5000})
    target = tmp_path / "site-b"
    target.mkdir()
    result = cli("import", "--cache-dir", str(target), str(bad))
    assert result.exit_code == 1
    assert "failed verification" in result.output
    assert "content changed" in result.output
    assert list(CacheStore(target).iter_keys()) == []
    assert os.listdir(target / ".incoming") == []


def _evil(
    tmp_path: Path, name: str, member: tarfile.TarInfo, data: bytes = b""
) -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        index = json.dumps(
            {"format": 1, "entries": [{"key": "ab" + "c" * 62}]}
        ).encode()
        info = tarfile.TarInfo("styxcache-export.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


KEY = "ab" + "c" * 62


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../escape.txt"), "leaves the extraction folder"),
        (
            tarfile.TarInfo(f"entries/ab/{KEY}/../../../x"),
            "leaves the extraction folder",
        ),
        (tarfile.TarInfo("/etc/evil"), "absolute path"),
        (_symlink(f"entries/ab/{KEY}/link", "/etc/passwd"), "outside its entry"),
        (_symlink(f"entries/ab/{KEY}/sub/link", "../../other"), "outside its entry"),
        (tarfile.TarInfo("notes.txt"), "not part of a styxcache export"),
        (tarfile.TarInfo("entries/ab/not-a-key/x"), "is not a cache key"),
    ],
)
def test_unsafe_archives_are_rejected_before_writing(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    target = tmp_path / "cache"
    make_runner(target, tmp_path / "scratch")  # an existing, empty cache
    before = tree_snapshot(target)
    archive = _evil(tmp_path, "evil.tar.gz", member, b"boo")
    result = cli("import", "--cache-dir", str(target), str(archive))
    assert result.exit_code == 1
    assert message in result.output
    assert tree_snapshot(target) == before
    assert not (tmp_path / "escape.txt").exists()


def test_device_members_are_rejected(tmp_path: Path) -> None:
    member = tarfile.TarInfo(f"entries/ab/{KEY}/dev")
    member.type = tarfile.CHRTYPE
    archive = _evil(tmp_path, "dev.tar.gz", member)
    with pytest.raises(TransferError, match="not a file, folder or link"):
        import_entries(CacheStore(tmp_path / "cache"), archive)


def test_not_an_archive_or_not_an_export(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip")
    result = cli("import", "--cache-dir", str(cache), str(junk))
    assert result.exit_code == 1
    assert "not a readable tar archive" in result.output
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        folder = tarfile.TarInfo("entries")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder, None)
    result = cli("import", "--cache-dir", str(cache), str(plain))
    assert result.exit_code == 1
    assert "is not a styxcache export" in result.output
    missing = cli("import", "--cache-dir", str(cache), str(tmp_path / "nope.tar.gz"))
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    assert not cache.exists(), "a rejected import must not even create the cache"


def test_export_to_a_missing_folder_writes_nothing(
    source_cache: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    cache, _, _ = source_cache
    result = cli("export", "--cache-dir", str(cache), str(tmp_path / "no" / "x.tar.gz"))
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert list((cache / ".incoming").iterdir()) == []


def test_export_by_tool(
    source_cache: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    cache, keys, _ = source_cache
    report = cli_json(
        "export",
        "--cache-dir",
        str(cache),
        "--tool",
        "demo/co*",
        str(tmp_path / "c.tar.gz"),
    )
    assert [e["key"] for e in report["entries"]] == [keys[2]]


def test_export_leaves_out_entries_that_are_not_whole(
    source_cache: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    """A damaged entry is left out with why; the rest import as usual."""
    cache, keys, _ = source_cache
    store = CacheStore(cache)
    extra = store.entry_dir(keys[0]) / "planted.txt"
    os.chmod(extra.parent, 0o755)
    extra.write_text("not the tool's\n")
    out = store.entry_dir(keys[1]) / "out.bin"
    os.chmod(out, 0o644)
    out.write_bytes(b"short")
    report = cli_json("export", "--cache-dir", str(cache), str(tmp_path / "a.tar.gz"))
    assert [e["key"] for e in report["entries"]] == [keys[2]]
    assert "planted.txt is not listed" in report["skipped"][keys[0]]
    assert "out.bin" in report["skipped"][keys[1]]
    target = tmp_path / "site-b"
    imported = cli_json(
        "import", "--cache-dir", str(target), str(tmp_path / "a.tar.gz")
    )
    assert imported["imported"] == [keys[2]]


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
def test_an_export_repacked_by_gnu_tar_imports(
    source_cache: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    """The reader is not tied to our writer: GNU tar's own format imports too."""
    cache, keys, source = source_cache
    archive = tmp_path / "all.tar.gz"
    assert cli("export", "--cache-dir", str(cache), str(archive)).exit_code == 0
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(unpacked)], check=True)
    repacked = tmp_path / "repacked.tar.gz"
    subprocess.run(
        [
            "tar",
            "--format=gnu",
            "-czf",
            str(repacked),
            "-C",
            str(unpacked),
            "entries",
            "styxcache-export.json",
        ],
        check=True,
    )
    target = tmp_path / "site-b"
    report = import_entries(CacheStore(target), repacked)
    assert sorted(report.imported) == sorted(keys)
    events = []
    runner = make_runner(target, tmp_path / "scratch-b")
    runner.on_event = events.append
    write_block(runner, source, size=5000, n=2)
    assert [e.kind for e in events] == ["hit"]


def test_imported_entries_are_sealed_and_listed(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    _, keys, archive = exported
    target = tmp_path / "site-b"
    import_entries(CacheStore(target), archive)
    assert gc.isenabled()  # paused during the import only
    for key in keys:
        entry = CacheStore(target).entry_dir(key)
        for path in entry.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert not path.stat().st_mode & 0o222, path
    listed = cli_json("ls", "--cache-dir", str(target))
    rows = listed["entries"] if isinstance(listed, dict) else listed
    assert sorted(row["key"] for row in rows) == sorted(keys)
    assert cli("verify", "--full", "--cache-dir", str(target)).exit_code == 0


def test_a_tampered_log_rejects_the_import(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    _, keys, archive = exported
    bad = tmp_path / "bad.tar.gz"
    _rewrite(
        archive, bad, {f"{keys[1]}/.styxcache.stdout.gz": gzip.compress(b"9\n9\n")}
    )
    target = tmp_path / "site-b"
    result = cli("import", "--cache-dir", str(target), str(bad))
    assert result.exit_code == 1
    assert "log .styxcache.stdout.gz" in " ".join(result.output.split())
    assert not target.exists() or list(CacheStore(target).iter_keys()) == []


class _TwinFirst(CacheStore):
    """A store where a concurrent twin commits each key just before we do."""

    def commit(self, staging: Path, key: str, **kwargs: Any) -> Path:
        twin = self.stage(key)
        shutil.rmtree(twin)
        shutil.copytree(staging, twin, symlinks=True)
        super().commit(twin, key)
        return super().commit(staging, key, **kwargs)


def test_import_when_a_twin_commits_first(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    _, keys, archive = exported
    target = tmp_path / "site-b"
    report = import_entries(_TwinFirst(target), archive)
    assert sorted(report.imported) == sorted(keys)
    assert cli("verify", "--full", "--cache-dir", str(target)).exit_code == 0
    assert not list((target / ".incoming").iterdir())


_FRESH_IMPORT = """
import json, sys
from pathlib import Path
from styxcache.store import CacheStore
from styxcache.transfer import TransferError, import_entries
from styxcache.transfer.parallel import worker_count
assert worker_count(3, 3) == 3, "no fork here"
if len(sys.argv) > 3:  # resume points every few bytes: workers start mid-archive
    import styxcache.tarchunks as chunks
    chunks._MARK_EVERY, chunks._RAW_READ = int(sys.argv[3]), 64
try:
    report = import_entries(CacheStore(Path(sys.argv[1])), Path(sys.argv[2]), workers=3)
except TransferError as exc:
    sys.exit(f"rejected: {exc}")
print(json.dumps(report.as_dict()))
"""


def _import_in_fresh_process(
    target: Path, archive: Path, *extra: str
) -> dict[str, Any]:
    """Import in a process of its own: this one has threads, so it would not fork."""
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_IMPORT, str(target), str(archive), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise TransferError(done.stderr)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    "resume_every",
    # The default spacing of gzip resume points, and one every 1000 bytes, so
    # the later slices' workers pick the stream up mid-archive (from the first
    # pass's zlib state): damage there is still found.
    [(), ("1000",)],
    ids=["default-points", "points-every-1000-bytes"],
)
def test_import_in_worker_processes(
    exported: tuple[Path, list[str], Path],
    tmp_path: Path,
    resume_every: tuple[str, ...],
) -> None:
    _, keys, archive = exported
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {f"{keys[2]}/count.txt": b"X\n"})
    target = tmp_path / "site-b"
    # A damaged entry in one worker's slice stops every slice's commit.
    with pytest.raises(TransferError, match="failed verification"):
        _import_in_fresh_process(target, bad, *resume_every)
    assert list(CacheStore(target).iter_keys()) == []
    assert os.listdir(target / ".incoming") == []
    report = _import_in_fresh_process(target, archive, *resume_every)
    assert sorted(report["imported"]) == sorted(keys)
    assert keys[2] in CacheStore(target).recent_keys("demo/count")
    listed = cli_json("ls", "--cache-dir", str(target))
    rows = listed["entries"] if isinstance(listed, dict) else listed
    assert sorted(row["key"] for row in rows) == sorted(keys)
    assert cli("verify", "--full", "--cache-dir", str(target)).exit_code == 0
    again = _import_in_fresh_process(target, archive, *resume_every)
    assert sorted(again["present"]) == sorted(keys)


def test_other_threads_mean_no_fork(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    _, keys, archive = exported
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        # Forking now could copy a lock the other thread holds: all in-process.
        assert worker_count(3, len(keys)) == 1
        verified: list[str] = []
        report = import_entries(
            CacheStore(tmp_path / "site-b"),
            archive,
            workers=3,
            on_verified=verified.append,
        )
    finally:
        stop.set()
        other.join()
    assert sorted(report.imported) == sorted(verified) == sorted(keys)


_TERMINAL_IMPORT = """
import os, sys, threading
from styxcache.cli import main
from styxcache.transfer import parallel
# Three entries, two CPUs: fork as an import of thousands would.
parallel.PARALLEL_FROM, parallel._cpus = 2, lambda: 2
threads_at_fork = []
real_fork = os.fork
def fork():
    threads_at_fork.append(threading.active_count())
    return real_fork()
os.fork = fork
assert sys.stderr.isatty()
main(["import", "--cache-dir", sys.argv[1], sys.argv[2]], standalone_mode=False)
print("threads at fork:", threads_at_fork)
"""


def test_import_on_a_terminal_forks_its_workers(
    exported: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    """The progress bar drawn on a terminal runs no thread that would stop the fork."""
    _, keys, archive = exported
    target = tmp_path / "site-b"
    terminal, child_end = pty.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _TERMINAL_IMPORT, str(target), str(archive)],
            stdin=child_end,
            stdout=subprocess.PIPE,
            stderr=child_end,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "80"},
            text=True,
        )
    finally:
        os.close(child_end)
    drawn = b""
    # Read what it draws as it goes: a full terminal buffer would block it.
    with contextlib.suppress(OSError):  # EIO once the child has exited
        while chunk := os.read(terminal, 65536):
            drawn += chunk
    os.close(terminal)
    out, _ = child.communicate(timeout=120)
    done = subprocess.CompletedProcess(child.args, child.returncode, out)
    assert done.returncode == 0, drawn.decode(errors="replace")
    assert "threads at fork: [1, 1]" in done.stdout
    assert b"verifying" in drawn  # the bar was shown
    assert sorted(CacheStore(target).iter_keys()) == sorted(keys)
