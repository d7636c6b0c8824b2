"""`styxcache.tarstream` and `tarwriter`: the tar reader and writer of export and import.

Archives written here are read back by `tarfile` and GNU `tar`, and archives
written by those (pax, GNU and ustar formats; gzip, multi-member gzip, bzip2,
xz, uncompressed) are read here with the same members and bytes.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from styxcache import tarchunks
from styxcache.errors import TarStreamError
from styxcache.tarstream import TarMember, TarReader, _byte_sum, resume_point
from styxcache.tarwriter import TarWriter

LONG = "entries/ab/" + "k" * 64 + "/a/rather/long/output/path/" + "n" * 60 + ".nii.gz"

MEMBERS: list[tuple[TarMember, bytes]] = [
    (TarMember("entries", "dir", 0, 0o755, 1_700_000_000), b""),
    (TarMember("entries/ab/file.txt", "file", 5, 0o444, 1_700_000_001), b"hello"),
    (TarMember("entries/ab/empty", "file", 0, 0o644, 1_700_000_002), b""),
    (TarMember(LONG, "file", 3, 0o555, 1_700_000_003), b"abc"),
    (TarMember("entries/ab/caf\u00e9", "file", 2, 0o644, 5), b"\xc3\xa9"),
    (TarMember("entries/ab/link", "symlink", 0, 0o777, 6, "file.txt"), b""),
    (TarMember("entries/ab/long-link", "symlink", 0, 0o777, 7, "x/" * 80), b""),
    (
        TarMember("entries/ab/hard", "hardlink", 0, 0o444, 8, "entries/ab/file.txt"),
        b"",
    ),
    (TarMember("entries/ab/big", "file", 3 << 20, 0o600, 9), bytes(range(256)) * 12288),
]


def _write(members: list[tuple[TarMember, bytes]]) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out)
    for member, data in members:
        writer.add(member, data)
    writer.close()
    return out.getvalue()


def _read(data: bytes) -> list[tuple[TarMember, bytes]]:
    reader = TarReader(io.BytesIO(data))
    return [(m, reader.read(m, 1 << 30) if m.isfile() else b"") for m in reader]


def _same(
    got: list[tuple[TarMember, bytes]], want: list[tuple[TarMember, bytes]]
) -> None:
    assert [
        (m.name, m.kind, m.size, m.mode, int(m.mtime), m.linkname, d) for m, d in got
    ] == [
        (m.name, m.kind, m.size, m.mode, int(m.mtime), m.linkname, d) for m, d in want
    ]


def test_round_trip_and_tarfile_reads_what_is_written() -> None:
    data = _write(MEMBERS)
    _same(_read(data), MEMBERS)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = [
            (m.name, m.size, m.mode, m.mtime, m.linkname) for m in archive.getmembers()
        ]
        assert archive.extractfile(LONG).read() == b"abc"  # type: ignore[union-attr]
    assert names == [
        (m.name, m.size, m.mode, int(m.mtime), m.linkname) for m, _ in MEMBERS
    ]


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
def test_gnu_tar_lists_and_extracts_what_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_write(MEMBERS))
    listing = subprocess.run(
        ["tar", "-tzf", str(archive)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert LONG in listing and "entries/ab/link" in listing
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(out)], check=True)
    assert (out / LONG).read_bytes() == b"abc"
    assert (out / "entries/ab/big").read_bytes() == MEMBERS[-1][1]


def _tarfile_archive(fmt: int, mode: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=fmt) as archive:
        for member, data in MEMBERS:
            info = tarfile.TarInfo(member.name)
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[member.kind]
            info.size, info.mode, info.mtime = member.size, member.mode, member.mtime
            info.linkname = member.linkname
            archive.addfile(info, io.BytesIO(data) if member.isfile() else None)
    return out.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_reads_what_tarfile_writes(fmt: int, mode: str) -> None:
    _same(_read(_tarfile_archive(fmt, mode)), MEMBERS)


def test_reads_ustar_prefix_names() -> None:
    name = "entries/ab/" + "d" * 90 + "/" + "f" * 90
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo(name)
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    [(member, data)] = _read(out.getvalue())
    assert (member.name, data) == (name, b"x")


def test_reads_multi_member_gzip_and_trailing_zeros() -> None:
    raw = _tarfile_archive(tarfile.PAX_FORMAT, "w")
    half = len(raw) // 2
    joined = gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + bytes(100)
    _same(_read(joined), MEMBERS)


def test_data_by_offset_from_a_second_reader() -> None:
    data = _write(MEMBERS)
    members = list(TarReader(io.BytesIO(data)))
    second = TarReader(io.BytesIO(data))
    files = [m for m in members if m.isfile()]
    assert [second.read(m, 1 << 30) for m in files] == [
        d for m, d in MEMBERS if m.isfile()
    ]
    with pytest.raises(TarStreamError, match="out of order"):
        second.read(files[0], 1 << 30)


@pytest.mark.parametrize("compress", ["none", "gzip", "gzip-multi"])
@pytest.mark.parametrize("most", [128, 6])
def test_a_second_reader_starts_at_resume_points(
    compress: str, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tarchunks, "_MARK_EVERY", 100_000)
    monkeypatch.setattr(tarchunks, "_RAW_READ", 4096)
    # Past the most, every other point goes (a huge archive's stay few).
    monkeypatch.setattr(tarchunks, "_MAX_MARKS", most)
    rng = random.Random(7)
    members = [
        (TarMember(f"entries/f{i}", "file", size, 0o644, 1), rng.randbytes(size))
        for i, size in enumerate([70_000, 1, 0, 130_000, 512, 90_000] * 4)
    ]
    plain = gzip.decompress(_write(members))
    raw = gzip.compress(plain)
    if compress == "none":
        raw = plain
    elif compress == "gzip-multi":
        third = len(plain) // 3
        raw = b"".join(
            gzip.compress(part)
            for part in (plain[:third], plain[third : 2 * third], plain[2 * third :])
        )
    first = TarReader(io.BytesIO(raw))
    found = list(first)
    assert 3 <= len(first.marks) < most
    streams = [mark.stream for mark in first.marks]
    assert streams == sorted(streams)
    resumed = 0
    for member, (_, data) in zip(found, members, strict=True):
        start = resume_point(first.marks, member.offset)
        source = io.BytesIO(raw)
        if start is not None:
            assert start.stream <= member.offset
            source.seek(start.raw)
            resumed += 1
        assert TarReader(source, start).read(member, 1 << 20) == data
    assert resumed >= len(found) // 2
    # A point can be used any number of times.
    start = resume_point(first.marks, found[-1].offset)
    for _ in range(2):
        source = io.BytesIO(raw)
        source.seek(start.raw if start else 0)
        assert TarReader(source, start).read(found[-1], 1 << 20) == members[-1][1]


def test_devices_and_fifos_are_reported_as_other() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
            info = tarfile.TarInfo(f"dev-{kind!r}")
            info.type = kind
            archive.addfile(info)
    assert {m.kind for m, _ in _read(out.getvalue())} == {"other"}


def test_damage_is_reported() -> None:
    data = bytearray(_tarfile_archive(tarfile.PAX_FORMAT, "w"))
    data[600] ^= 0xFF  # inside the second header
    with pytest.raises(TarStreamError, match="checksum"):
        _read(bytes(data))
    whole = _write(MEMBERS)
    with pytest.raises(TarStreamError, match=r"truncated|ends"):
        _read(whole[: len(whole) // 2])
    with pytest.raises(TarStreamError):
        _read(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(TarStreamError):
        _read(bz2.compress(b"x")[:-4])
    with pytest.raises(TarStreamError):
        _read(lzma.compress(b"x" * 600))  # not a tar inside


def test_a_member_too_large_for_read() -> None:
    data = _write(MEMBERS)
    reader = TarReader(io.BytesIO(data))
    big = next(m for m in reader if m.name == "entries/ab/big")
    with pytest.raises(TarStreamError, match="too large"):
        TarReader(io.BytesIO(data)).read(big, 1 << 20)


def test_header_byte_sum_is_exact() -> None:
    blocks = [bytes(512), b"\xff" * 512, b"\x80" * 512, b"\x7f" * 256 + b"\xff" * 256]
    blocks += [random.Random(seed).randbytes(512) for seed in range(2000)]
    # ASCII blocks (almost every header), up to the largest sum one can have.
    blocks.append(b"\x7f" * 512)
    blocks += [
        bytes(random.Random(seed).choices(range(128), k=512)) for seed in range(500)
    ]
    for block in blocks:
        assert _byte_sum(block) == sum(block)


def _pax_archive(pax: dict[str, str], *, kind: bytes = tarfile.REGTYPE) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("entries/x")
        info.type = kind
        info.pax_headers = pax
        archive.addfile(info, io.BytesIO(b""))
    return out.getvalue()


@pytest.mark.parametrize("mtime", ["nan", "inf", "-inf", "1e300", "-1e300"])
def test_an_impossible_pax_time_is_refused(mtime: str) -> None:
    # os.utime raises on these; refusing them while reading keeps the import's
    # promise that a rejected archive leaves nothing behind.
    with pytest.raises(TarStreamError, match="impossible time"):
        _read(_pax_archive({"mtime": mtime}))


def test_a_nul_in_a_link_target_is_refused() -> None:
    archive = _pax_archive({"linkpath": "a\0b"}, kind=tarfile.SYMTYPE)
    with pytest.raises(TarStreamError, match="NUL"):
        _read(archive)
