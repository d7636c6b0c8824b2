"""A streaming tar writer for `export`: gzip-compressed, in `tarfile`'s PAX format.

`tarfile` costs about 50 us per member to write (a `TarInfo` copied, a pax
header considered for each). Here a header is one formatted bytes object
(byte for byte what `tarfile` writes for the same member); only members
whose names or numbers do not fit ustar's fields go through `tarfile`, for
the pax header it writes. Compression runs in a worker thread (`zlib`
releases the GIL), so it overlaps with reading the entries.
"""

from __future__ import annotations

import concurrent.futures
import os
import tarfile
import zlib
from typing import IO

from styxcache.tarstream import BLOCK, TarMember

__all__ = ["TarWriter"]

_RECORD = 20 * BLOCK
"""Archives are padded to a multiple of this (tar's default blocking factor)."""

_CHUNK = 1 << 20
_COMPRESS_AHEAD = 4
"""Chunks queued for the compressing thread (bounds memory)."""

_MAX_OCTAL = 8**11
"""Sizes and times of this or more need a pax header (tarfile writes one)."""

_TYPE_OF: dict[str, bytes] = {
    "file": b"0",
    "dir": b"5",
    "symlink": b"2",
    "hardlink": b"1",
}


def _header(member: TarMember) -> bytes:
    """Encode a member's header block(s) in `tarfile`'s PAX format."""
    name = member.name + "/" if member.kind == "dir" else member.name
    mtime = int(member.mtime)
    simple = (
        len(name) <= 100
        and len(member.linkname) <= 100
        and name.isascii()
        and member.linkname.isascii()
        and 0 <= member.size < _MAX_OCTAL
        and 0 <= mtime < _MAX_OCTAL
    )
    if not simple:
        # Long or non-ASCII names, huge sizes: let tarfile write the pax
        # header it would write (rare, so its cost does not matter).
        info = tarfile.TarInfo(name)
        info.type = _TYPE_OF[member.kind]
        info.size, info.mode, info.mtime = member.size, member.mode, mtime
        info.linkname = member.linkname
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    head = b"%s%07o\x000000000\x000000000\x00%011o\x00%011o\x00" % (
        name.encode("ascii").ljust(100, b"\0"),
        member.mode & 0o7777,
        member.size,
        mtime,
    )
    rest = _TYPE_OF[member.kind] + member.linkname.encode("ascii").ljust(100, b"\0")
    # The checksum counts its own field as eight spaces (256).
    checksum = sum(head) + sum(rest) + _TAIL_SUM + 256
    return b"%s%06o\x00 %s%s" % (head, checksum, rest, _TAIL)


_TAIL = b"ustar\x0000" + bytes(BLOCK - 265)
"""Magic and version, then empty owner names, device numbers and prefix."""
_TAIL_SUM = sum(_TAIL)


class TarWriter:
    """Write a gzip-compressed tar archive, compressing in a second thread.

    Args:
        out: A binary file open for writing (not closed here).
        level: gzip compression level.
    """

    def __init__(self, out: IO[bytes], level: int = 6) -> None:
        self._out = out
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._parts: list[bytes] = []
        self._buffered = 0
        self._written = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="styxcache-gzip"
        )
        self._queued: list[concurrent.futures.Future[None]] = []

    def add(self, member: TarMember, data: bytes = b"") -> None:
        """Append a member whose data (a file's content) is in hand.

        Args:
            member: The member (its size must be `len(data)`).
            data: Its content.
        """
        if len(data) != member.size:
            raise ValueError(
                f"{member.name}: {len(data)} bytes, header says {member.size}"
            )
        self._put(_header(member))
        if data:
            self._put(data)
            self._pad(len(data))

    def add_file(self, member: TarMember, fd: int) -> None:
        """Append a regular file read from an open descriptor.

        Args:
            member: The member (its size is what is read).
            fd: The file, positioned anywhere (read with `pread`).

        Raises:
            OSError: If the file is shorter than `member.size` now.
        """
        self._put(_header(member))
        done = 0
        while done < member.size:
            chunk = os.pread(fd, min(_CHUNK, member.size - done), done)
            if not chunk:
                raise OSError(f"{member.name} shrank while it was being archived")
            self._put(chunk)
            done += len(chunk)
        self._pad(member.size)

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._put(bytes(BLOCK - size % BLOCK))

    def _put(self, data: bytes) -> None:
        self._parts.append(data)
        self._buffered += len(data)
        self._written += len(data)
        if self._buffered >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts, self._buffered = [], 0
        self._queued.append(self._pool.submit(self._compress, data))
        if len(self._queued) > _COMPRESS_AHEAD:
            self._queued.pop(0).result()

    def _compress(self, data: bytes) -> None:
        self._out.write(self._compressor.compress(data))

    def close(self) -> None:
        """End the archive (two zero blocks, padded to a record) and flush it."""
        try:
            end = 2 * BLOCK
            end += -(self._written + end) % _RECORD
            self._put(bytes(end))
            self._flush()
            for future in self._queued:
                future.result()
            self._out.write(self._compressor.flush())
        finally:
            self._pool.shutdown()

    def abort(self) -> None:
        """Stop without finishing the archive (after an error)."""
        for future in self._queued:
            future.cancel()
        self._pool.shutdown()
