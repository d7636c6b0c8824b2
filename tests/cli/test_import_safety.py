"""`styxcache import` validates the whole archive before writing anything.

Every archive here starts as a real export of a real cache and is then
tampered with the way an attacker (or a damaged disk) would. A rejected
archive leaves the target cache, and every folder around it, untouched.
"""

from __future__ import annotations

import copy
import gc
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from clihelpers import cli, count_lines, key_of, make_runner, tree_snapshot, write_block

from styxcache.store import CacheStore
from styxcache.transfer import TransferError, import_entries

Edit = Callable[[list[tuple[tarfile.TarInfo, bytes | None]], str], None]


@pytest.fixture
def export(tmp_path: Path) -> tuple[Path, list[str]]:
    cache = tmp_path / "site-a"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n")
    keys = [
        key_of(write_block(runner, source, size=3000, n=1)["out"], cache),
        key_of(count_lines(runner, source)["count"], cache),
    ]
    archive = tmp_path / "all.tar.gz"
    assert cli("export", "--cache-dir", str(cache), str(archive)).exit_code == 0
    return archive, keys


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tar:
        return [
            (m, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
            for m in tar.getmembers()
        ]


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _entry(key: str) -> str:
    return f"entries/{key[:2]}/{key}"


def _add(
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    info: tarfile.TarInfo,
    data: bytes | None = None,
) -> None:
    # Before the index (the last member), like the exporter writes.
    members.insert(len(members) - 1, (info, data))


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link_chain(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    # Each link looks inside on its own; together they reach the cache's
    # parent, and the file written through them lands there.
    _add(members, _link(f"{_entry(key)}/sub/up", ".."))
    _add(members, _link(f"{_entry(key)}/sub/out", "up/../.."))
    _add(members, _file(f"{_entry(key)}/sub/out/planted.txt"), b"owned\n")


def link_to_dir_then_write(
    members: list[tuple[tarfile.TarInfo, bytes | None]], key: str
) -> None:
    _add(members, _link(f"{_entry(key)}/d", "."))
    _add(members, _file(f"{_entry(key)}/d/planted.txt"), b"owned\n")


def absolute(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    _add(members, _file("/tmp/planted-by-styxcache-test.txt"), b"owned\n")


def dotdot(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    _add(members, _file(f"{_entry(key)}/../../../planted.txt"), b"owned\n")


def device(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    info = _file(f"{_entry(key)}/dev")
    info.type = tarfile.CHRTYPE
    _add(members, info)


def fifo(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    info = _file(f"{_entry(key)}/fifo")
    info.type = tarfile.FIFOTYPE
    _add(members, info)


def hard_link_out(
    members: list[tuple[tarfile.TarInfo, bytes | None]], key: str
) -> None:
    _add(members, _link(f"{_entry(key)}/hl", "styxcache-export.json", tarfile.LNKTYPE))


def key_mismatch(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    # A forged result: the manifest says "size 3000" was run, but the payload
    # no longer hashes to the entry's key.
    for i, (info, data) in enumerate(members):
        if info.name == f"{_entry(key)}/{CacheStore.MANIFEST}":
            manifest = json.loads(data or b"")
            manifest["payload"]["params"] = {"forged": True}
            members[i] = (info, json.dumps(manifest).encode())


def extra_file(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    _add(members, _file(f"{_entry(key)}/extra.sh"), b"rm -rf ~\n")


def non_hex_key(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    bad = key[:2] + "Z" * 62
    for i, (info, data) in enumerate(members):
        if info.name.startswith(_entry(key)):
            renamed = copy.copy(info)
            renamed.name = info.name.replace(key, bad)
            members[i] = (renamed, data)
        elif info.name == "styxcache-export.json":
            members[i] = (info, (data or b"").replace(key.encode(), bad.encode()))


def duplicate(members: list[tuple[tarfile.TarInfo, bytes | None]], key: str) -> None:
    _add(members, _link(f"{_entry(key)}/out.bin", "/etc/passwd"))


CASES: list[tuple[Edit, str]] = [
    (link_chain, "outside its entry"),
    (link_to_dir_then_write, "through the symlink"),
    (absolute, "absolute path"),
    (dotdot, "leaves the extraction folder"),
    (device, "not a file, folder or link"),
    (fifo, "not a file, folder or link"),
    (hard_link_out, "hard link"),
    (key_mismatch, "not to its key"),
    (extra_file, "not listed in its manifest"),
    (non_hex_key, "not a cache key"),
    (duplicate, "appears twice"),
]


@pytest.mark.parametrize(("edit", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_malicious_archives_write_nothing(
    tmp_path: Path, export: tuple[Path, list[str]], edit: Edit, message: str
) -> None:
    archive, keys = export
    members = _members(archive)
    edit(members, keys[0])
    evil = _write(tmp_path / "evil.tar.gz", members)
    target = tmp_path / "victim" / "cache"
    make_runner(target, tmp_path / "victim-scratch")
    (target / "00").mkdir(parents=True)  # an existing cache (one empty shard)
    around = tmp_path / "victim"
    before = tree_snapshot(around)
    result = cli("import", "--cache-dir", str(target), str(evil))
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split()), result.output
    assert tree_snapshot(around) == before
    assert not list(tmp_path.rglob("planted.txt"))
    assert not Path("/tmp/planted-by-styxcache-test.txt").exists()


def test_size_limit_is_checked_before_writing(
    tmp_path: Path, export: tuple[Path, list[str]]
) -> None:
    archive, _ = export
    target = tmp_path / "cache"
    with pytest.raises(TransferError, match="more than 1000 bytes"):
        import_entries(CacheStore(target), archive, max_bytes=1000)
    assert not target.exists()
    assert gc.isenabled()  # the import paused the cycle collector, and restored it


def test_import_does_not_need_tarfile_filters(
    tmp_path: Path, export: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python builds without tarfile's data filter: still safe, still works."""
    archive, keys = export
    for name in ("data_filter", "tar_filter", "fully_trusted_filter"):
        monkeypatch.delattr(tarfile, name, raising=False)
    members = _members(archive)
    link_chain(members, keys[0])
    evil = _write(tmp_path / "evil.tar.gz", members)
    target = tmp_path / "victim" / "cache"
    with pytest.raises(TransferError, match="outside its entry"):
        import_entries(CacheStore(target), evil)
    assert not list(tmp_path.rglob("planted.txt"))
    report = import_entries(CacheStore(target), archive)
    assert sorted(report.imported) == sorted(keys)
    assert cli("verify", "--full", "--cache-dir", str(target)).exit_code == 0
