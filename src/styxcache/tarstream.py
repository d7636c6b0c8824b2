"""A streaming tar reader for `import` (and its member record, shared with `tarwriter`).

`tarfile` costs about 90 us per member to read (every field re-validated,
a `TarInfo` built with a dozen attributes); an export of 100,000 entries has
400,000 members. This module reads the same on-disk format (POSIX ustar, pax
extended headers, GNU long names and base-256 numbers) for the members an
export holds: files, folders, symlinks and hard links. Anything else is
reported as kind `"other"` for the caller to refuse; anything it cannot
parse raises `TarStreamError`. It accepts gzip (also multi-member, as
`pigz` writes), bzip2, xz and uncompressed tar (decompressed by
`tarchunks`, every chunk bounded in size).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Literal, NamedTuple

from styxcache.errors import TarStreamError
from styxcache.tarchunks import CHUNK, Readable, Resume, chunks, resume_point

__all__ = [
    "BLOCK",
    "Readable",
    "Resume",
    "TarMember",
    "TarReader",
    "TarStreamError",
    "resume_point",
]

BLOCK = 512
# Beyond year 2500 either way: no real file has such a time, and os.utime may overflow.
_MTIME_LIMIT = 1 << 34
_MAX_PAX = 1 << 20
"""A pax or GNU long-name header larger than this is refused."""

_ZERO_BLOCK = bytes(BLOCK)
_NUL_TO_SPACE = bytes.maketrans(b"\0", b" ")

Kind = Literal["file", "dir", "symlink", "hardlink", "other"]

_KINDS: dict[bytes, Kind] = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",  # contiguous file: a regular file to everyone else
    b"5": "dir",
    b"2": "symlink",
    b"1": "hardlink",
}


class TarMember(NamedTuple):
    """One member of an archive, as its headers describe it.

    The method names are `tarfile.TarInfo`'s, so checks written for one
    work on the other. A named tuple: an archive may have 400,000 of them.

    Attributes:
        name: The member's path (folders without their trailing slash).
        kind: `"file"`, `"dir"`, `"symlink"`, `"hardlink"` or `"other"`.
        size: Bytes of data that follow the header (0 except for files).
        mode: Permission bits.
        mtime: Modification time (Unix seconds).
        linkname: A link's target ("" otherwise).
        offset: Where its data starts in the uncompressed stream (-1 when
            it was not read from an archive).
    """

    name: str
    kind: Kind
    size: int = 0
    mode: int = 0o644
    mtime: float = 0
    linkname: str = ""
    offset: int = -1

    def isfile(self) -> bool:
        """Return True for a regular file."""
        return self.kind == "file"

    def isdir(self) -> bool:
        """Return True for a folder."""
        return self.kind == "dir"

    def issym(self) -> bool:
        """Return True for a symbolic link."""
        return self.kind == "symlink"

    def islnk(self) -> bool:
        """Return True for a hard link."""
        return self.kind == "hardlink"


# Reading -------------------------------------------------------------------


def _number(field: bytes, what: str) -> int:
    """Parse an octal (or GNU base-256) numeric header field."""
    try:
        return int(field.rstrip(b"\0"), 8)  # the usual "0000644\0"
    except ValueError:
        pass
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarStreamError(f"bad {what} field {field!r} in a tar header") from None


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _byte_sum(block: bytes) -> int:
    """The sum of a header block's 512 bytes, exactly, without a Python loop.

    `sum(block)` costs 2 us a header (a third of reading one). adler32's low
    half is 1 + the sum modulo 65521; 512 bytes below 128 sum to less than
    65521, so for an ASCII block (almost every header) that is the sum.
    Otherwise a big-endian integer is congruent to its byte sum modulo 255
    (256 = 1 mod 255), and 512 bytes sum to less than 2 * 65521: the residue
    tells the two candidates apart.
    """
    low = ((zlib.adler32(block) & 0xFFFF) - 1) % 65521
    if block.isascii():
        return low
    return low if (low - int.from_bytes(block, "big")) % 255 == 0 else low + 65521


def _checksum_ok(block: bytes, numbers: bytes) -> bool:
    try:
        stored = int(numbers[48:56], 8)
    except ValueError:
        stored = _number(block[148:156], "checksum")
    unsigned = _byte_sum(block) - sum(block[148:156]) + 256
    if stored == unsigned:
        return True
    # Some old tars summed signed bytes.
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored == signed


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse pax records: `<length> <key>=<value>` and a newline, each."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarStreamError("damaged pax header") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise TarStreamError("damaged pax header")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode(
            "utf-8", "surrogateescape"
        )
        pos += length
    return records


class TarReader:
    """Read an archive's members in order, and their data by offset.

    Iterate for the members; `read()` or `chunks()` return a member's data
    (while the loop is at it, or later, for members further on: the stream
    only moves forward). A second reader of the same file can fetch data by
    the offsets the first one reported, without parsing headers again.

    Such a second reader may start at one of the `Resume` points the first
    one recorded in `marks` (`resume_point` picks one): then it decompresses
    nothing before it.

    Args:
        raw: The archive file, open for binary reading at its start (at
            `start.raw` when `start` is given).
        start: Where to pick the stream up (for reading data by offset
            from there on; headers are read from the start only).
    """

    def __init__(self, raw: Readable, start: Resume | None = None) -> None:
        self.marks: list[Resume] = []
        """Points a later reader of the same file may start from."""
        self._source = chunks(raw, start, self.marks)
        self._buf = b""
        self._pos = 0
        self._base = 0 if start is None else start.stream
        """Stream offset of `_buf[0]`."""
        self._next = self._base
        """Stream offset of the next header."""
        self.count = 0
        """Members read so far."""

    def _take(self, size: int) -> bytes:
        """Return exactly `size` bytes of the decompressed stream (b"" at its end)."""
        end = self._pos + size
        if end <= len(self._buf):
            out = self._buf[self._pos : end]
            self._pos = end
            return out
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        for chunk in self._source:
            parts.append(chunk)
            have += len(chunk)
            if have >= size:
                break
        self._base += self._pos
        joined = b"".join(parts)
        if have < size:
            self._base += have
            self._buf, self._pos = b"", 0
            if have:
                raise TarStreamError("the archive ends in the middle of a member")
            return b""
        self._buf, self._pos = joined, size
        return joined[:size]

    def _skip_to(self, offset: int) -> None:
        ahead = offset - (self._base + self._pos)
        if ahead < 0:
            raise TarStreamError("archive data asked for out of order")
        if self._pos + ahead <= len(self._buf):
            self._pos += ahead
            return
        while ahead > 0:
            step = min(ahead, CHUNK)
            if len(self._take(step)) != step:
                raise TarStreamError("the archive ends in the middle of a member")
            ahead -= step

    def __iter__(self) -> Iterator[TarMember]:
        """Yield every member up to the end-of-archive marker."""
        while True:
            ahead = self._next - self._base - self._pos
            if 0 <= ahead <= len(self._buf) - self._pos:
                self._pos += ahead  # the usual case, without a call
            else:
                self._skip_to(self._next)
            member = self._next_member(None)
            if member is None:
                return
            self._next = member.offset + member.size + (-member.size % BLOCK)
            self.count += 1
            yield member

    def _next_member(self, pending: dict[str, str] | None) -> TarMember | None:
        """Parse headers up to the next real member, applying pax and GNU ones."""
        while True:
            block = self._take(BLOCK)
            if not block or block == _ZERO_BLOCK:
                return None  # end of archive (a missing end marker is tolerated)
            # The numeric fields (mode to checksum), NULs made spaces: `int`
            # then parses the usual "0000644\0" with no per-field call.
            numbers = block[100:156].translate(_NUL_TO_SPACE)
            if len(block) != BLOCK or not _checksum_ok(block, numbers):
                raise TarStreamError("a tar header is damaged (bad checksum)")
            typeflag = block[156:157]
            try:
                size = int(numbers[24:36], 8)
            except ValueError:
                size = _number(block[124:136], "size")
            if typeflag in (b"x", b"L", b"K"):
                if not 0 <= size <= _MAX_PAX:
                    raise TarStreamError("an extended tar header is too large")
                data = self._take(size)
                if len(data) != size:
                    raise TarStreamError("the archive ends in the middle of a member")
                self._skip_to(self._base + self._pos + (-size % BLOCK))
                if pending is None:
                    pending = {}
                if typeflag == b"x":
                    pending.update(_pax_records(data))
                else:
                    pending["path" if typeflag == b"L" else "linkpath"] = _text(data)
                continue
            if typeflag == b"g":
                raise TarStreamError("global pax headers are not supported")
            return self._member(block, numbers, typeflag, size, pending)

    def _member(
        self,
        block: bytes,
        numbers: bytes,
        typeflag: bytes,
        size: int,
        pax: dict[str, str] | None,
    ) -> TarMember:
        name = _text(block[0:100])
        if block[257:263] == b"ustar\0" and block[345] != 0:
            name = f"{_text(block[345:500])}/{name}"
        kind: Kind = _KINDS.get(typeflag, "other")
        try:
            mtime: float = int(numbers[36:48], 8)
            mode = int(numbers[0:8], 8)
        except ValueError:
            mtime = _number(block[136:148], "mtime")
            mode = _number(block[100:108], "mode")
        linkname = _text(block[157:257]) if block[157] != 0 else ""
        if pax:
            name, size, mtime, linkname = _apply_pax(pax, name, size, mtime, linkname)
            if any(key.startswith("GNU.sparse") for key in pax):
                kind = "other"  # sparse files are never written by an export
        if kind == "file" and typeflag != b"7" and name.endswith("/"):
            kind = "dir"  # old tar: a folder is a file whose name ends in /
        if kind == "dir":
            name = name.rstrip("/")
        if size < 0:
            raise TarStreamError(f"member {name!r} has a negative size")
        # Refused here, not where the time is applied: os.utime raises on these,
        # and by then an import may have committed other entries.
        # (A chained comparison: NaN and infinities fail it too.)
        if not -_MTIME_LIMIT < mtime < _MTIME_LIMIT:
            raise TarStreamError(f"member {name!r} has an impossible time {mtime!r}")
        if "\0" in linkname:
            raise TarStreamError(f"member {name!r} has a NUL byte in its link target")
        if kind in ("dir", "symlink", "hardlink"):
            size = 0  # as tar and tarfile read them: no data follows
        return TarMember(
            name,
            kind,
            size,
            mode & 0o7777,
            mtime,
            linkname,
            self._base + self._pos,
        )

    def read(self, member: TarMember, limit: int) -> bytes:
        """Return a member's whole data.

        Args:
            member: A member this reader (or one of the same file) reported.
            limit: Refuse data longer than this.

        Raises:
            TarStreamError: If the data is longer than `limit`, cut short,
                or behind the reader already.
        """
        if member.size > limit:
            raise TarStreamError(f"a member of {member.size} bytes is too large here")
        if member.size > CHUNK:
            return b"".join(self.chunks(member))
        # Most members: one piece, no generator.
        self._skip_to(member.offset)
        data = self._take(member.size)
        if len(data) != member.size:
            raise TarStreamError("the archive ends in the middle of a member")
        return data

    def chunks(self, member: TarMember) -> Iterator[bytes]:
        """Yield a member's data in chunks of at most 1 MiB.

        Args:
            member: A member this reader (or one of the same file) reported.
        """
        self._skip_to(member.offset)
        left = member.size
        while left > 0:
            step = min(left, CHUNK)
            chunk = self._take(step)
            if len(chunk) != step:
                raise TarStreamError("the archive ends in the middle of a member")
            left -= step
            yield chunk


def _apply_pax(
    pax: dict[str, str], name: str, size: int, mtime: float, linkname: str
) -> tuple[str, int, float, str]:
    try:
        return (
            pax.get("path", name),
            int(pax["size"]) if "size" in pax else size,
            float(pax["mtime"]) if "mtime" in pax else mtime,
            pax.get("linkpath", linkname),
        )
    except ValueError:
        raise TarStreamError("damaged pax header (size or mtime)") from None
