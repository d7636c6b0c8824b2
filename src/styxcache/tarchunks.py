"""The uncompressed stream of a tar archive, in bounded chunks, and points to resume it.

`tarstream.TarReader` reads headers from these chunks. gzip (also
multi-member, as `pigz` writes), bzip2, xz and uncompressed archives are
recognised by their first bytes. While a gzip or uncompressed archive is
read, `Resume` points are recorded every few MiB: a second reader of the
same file (an import worker whose slice starts deep in the archive) starts
at the last one before its data instead of decompressing all that is
before it again.
"""

from __future__ import annotations

import bisect
import bz2
import lzma
import zlib
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from styxcache.errors import TarStreamError

__all__ = ["CHUNK", "Readable", "Resume", "chunks", "resume_point"]

CHUNK = 1 << 20
"""The largest piece decompressed at once."""
_MARK_EVERY = 8 << 20
"""Uncompressed bytes between two `Resume` points."""
_MAX_MARKS = 128
"""At this many points, every other one is dropped and the spacing doubles."""
_RAW_READ = 1 << 18
"""Archive bytes read at once: a point is taken between two reads (where
zlib has used up its input), and an export compresses about 20:1."""


class Readable(Protocol):
    """What the reader needs of an archive file: sequential reads."""

    def read(self, size: int, /) -> bytes:
        """Return up to `size` bytes (b"" at the end)."""
        ...


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _Gzip:
    """`zlib` with the interface of `bz2`/`lzma`'s decompressors."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(31)
        self._full = False

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._z.unconsumed_tail and not self._full

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        out = self._z.decompress(self._z.unconsumed_tail + data, max_length)
        # A full output may leave more inside zlib even with no input left.
        self._full = max_length > 0 and len(out) == max_length
        return out

    def copy(self) -> _Gzip:
        """An independent decompressor in the same state."""
        twin = _Gzip.__new__(_Gzip)
        twin._z = self._z.copy()
        twin._full = self._full
        return twin


def _decompressor_for(head: bytes) -> type[_Decompressor] | None:
    if head.startswith(b"\x1f\x8b"):
        return _Gzip
    if head.startswith(b"BZh"):
        return bz2.BZ2Decompressor
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor
    return None


class Resume(NamedTuple):
    """A point a reader can pick the stream up from, recorded by the first one.

    Attributes:
        stream: Offset in the uncompressed stream of the next byte.
        raw: Offset in the archive file of the next byte to read.
        decoder: The decompressor's state there (None: uncompressed).
    """

    stream: int
    raw: int
    decoder: _Gzip | None


def chunks(raw: Readable, start: Resume | None, marks: list[Resume]) -> Iterator[bytes]:
    """Yield the decompressed stream in chunks of at most `CHUNK` bytes.

    Every `_MARK_EVERY` bytes or so of a gzip or uncompressed stream, a
    `Resume` point is appended to `marks` (where zlib holds no unread input,
    so a point costs only zlib's own state, about 40 KiB; fewer than
    `_MAX_MARKS` of them, however large the archive).
    """
    if start is None:
        data = raw.read(_RAW_READ)
        make = _decompressor_for(data)
        if make is None:
            return _plain(raw, data, 0, marks)
        return _decoded(raw, make, make(), data, Resume(0, len(data), None), marks)
    if start.decoder is None:
        return _plain(raw, b"", start.stream, marks)
    decoder = start.decoder.copy()
    return _decoded(raw, _Gzip, decoder, b"", start, marks)


def _plain(raw: Readable, data: bytes, at: int, marks: list[Resume]) -> Iterator[bytes]:
    """Yield an uncompressed archive from `at` on (`data`: read already)."""
    every = _MARK_EVERY
    next_mark = at + every
    while True:
        if not data:
            data = raw.read(_RAW_READ)
            if not data:
                return
        if at >= next_mark:
            every = _mark(marks, Resume(at, at, None), every)
            next_mark = at + every
        at += len(data)
        yield data
        data = b""


def _decoded(
    raw: Readable,
    make: type[_Decompressor],
    decoder: _Decompressor,
    data: bytes,
    start: Resume,
    marks: list[Resume],
) -> Iterator[bytes]:
    """Yield a compressed archive's stream (`data`: read already, up to `start.raw`)."""
    raw_at, out_at = start.raw, start.stream
    every = _MARK_EVERY
    next_mark = out_at + every
    while True:
        if decoder.eof:
            # Another stream may follow (multi-member gzip, pbzip2); zeros
            # after the last one are padding, as gzip itself allows.
            data = decoder.unused_data + data
            if not data.strip(b"\0"):
                data = raw.read(_RAW_READ)
                raw_at += len(data)
                if not data:
                    return
                continue
            decoder = make()
        if decoder.needs_input and not data:
            data = raw.read(_RAW_READ)
            raw_at += len(data)
            if not data:
                raise TarStreamError("the compressed stream ends early (truncated)")
        try:
            out = decoder.decompress(data, CHUNK)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise TarStreamError(f"cannot decompress: {exc}") from exc
        data = b""
        if out:
            out_at += len(out)
            if (
                out_at >= next_mark
                and isinstance(decoder, _Gzip)
                and decoder.needs_input
            ):
                point = Resume(out_at, raw_at, decoder.copy())
                every = _mark(marks, point, every)
                next_mark = out_at + every
            yield out


def _mark(marks: list[Resume], point: Resume, every: int) -> int:
    """Add a point; return the spacing of the next ones (`every` or twice it).

    At `_MAX_MARKS` points every other one is dropped and the spacing
    doubles: a huge archive's points stay a few MiB in all.
    """
    marks.append(point)
    if len(marks) < _MAX_MARKS:
        return every
    del marks[1::2]
    return 2 * every


def resume_point(marks: list[Resume], offset: int) -> Resume | None:
    """The last of `marks` (in stream order) at or before `offset`, if any."""
    at = bisect.bisect_right([mark.stream for mark in marks], offset)
    return marks[at - 1] if at else None
