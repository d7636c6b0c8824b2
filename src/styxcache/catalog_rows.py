"""The catalog's lines: what they hold, how they are written and parsed.

Three kinds of tab-separated lines, each starting with its format tag:
`c4` (an entry folder's summary), `k3` (what `verify` needs of it) and `u4`
(a use of an entry). See catalog.py for the files they are kept in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Set
from typing import NamedTuple

__all__ = [
    "CHECKS_TAG",
    "SUMMARY_TAG",
    "TOLERANCE_NS",
    "USE_TAG",
    "CatalogRow",
    "CatalogRows",
]

SUMMARY_TAG = "c4"
CHECKS_TAG = "k3"
USE_TAG = "u4"
TOLERANCE_NS = 1_000_000_000
"""How far an entry's time in the index may be from its folder's.

A hit notes the time right after bumping the folder's, which the kernel
takes from a coarser clock (milliseconds apart). On a network filesystem
the server's clock sets the folder's time: with a skew beyond this, every
page of `ls` falls back to a full scan (right, only slower)."""
_USED = slice(68, 88)
"""Where a summary or use line keeps its last use (20-digit nanoseconds:
fixed width, so the strings sort as the numbers)."""

# Anyone sharing a cache can write its catalog: a line is kept only when its
# key field is 64 word characters and (summaries, uses) its time is 20 ASCII
# digits, so a row is filed under its own key and every kept time parses.
# Only whole ("\n"-ended) lines: the last one may still be being written.
# `\w`, not `[0-9a-f]` (a third slower): rows are looked up by folder names,
# which walk.py admits only as hex keys. Each pattern starts with a literal
# "\n" (the text gets one in front), which the engine finds fast; `^` with
# MULTILINE made a pass three times slower.
_SUMMARY_LINES = re.compile(
    rf"\n({SUMMARY_TAG}\t(\w{{64}})\t\d{{20}}\t.*)(?=\n)", re.ASCII
).findall
"""(line, key) of each well-formed summary line of "\n" + a text."""
_USE_LINES = re.compile(rf"\n{USE_TAG}\t(\w{{64}})\t(\d{{20}})(?=\n)", re.ASCII).findall
"""(key, last use) of each well-formed use line of "\n" + a text."""
_CHECKS_LINES = re.compile(rf"\n({CHECKS_TAG}\t(\w{{64}})\t.*)(?=\n)", re.ASCII).findall
"""(line, key) of each well-formed `.chk` line of "\n" + a text."""


class CatalogRow(NamedTuple):
    """What the catalog knows about one entry folder.

    Attributes:
        key: The cache key.
        inode: The entry folder's inode when the row was written.
        tool: `package/id`.
        size: Bytes the entry occupies (outputs, manifest and logs).
        files: Number of output files.
        created: Unix time of the commit.
        duration_s: How long the tool ran.
        used_ns: The folder's modification time (its last use) when the row
            was written, in nanoseconds (0 when unknown).
        stamp: The manifest file's `inode:size:mtime_ns` when the row was
            written ("-" when unknown). A manifest is written once and
            replaced only by a rename, which gives a new inode.
        checks: The manifest without its key payload, as compact JSON ("-"
            when unknown or too large): what `verify` needs, valid while
            the manifest still has `stamp`.
    """

    key: str
    inode: int
    tool: str
    size: int
    files: int
    created: float
    duration_s: float
    used_ns: int = 0
    stamp: str = "-"
    checks: str = "-"

    def to_line(self) -> str:
        """Return the summary as one tab-separated line (`.tsv` files)."""
        return (
            f"{SUMMARY_TAG}\t{self.key}\t{self.used_ns:020d}\t{self.inode}\t"
            f"{self.size}\t{self.files}\t{self.created!r}\t{self.duration_s!r}\t"
            f"{self.tool}\n"
        )

    def checks_line(self) -> str:
        """Return what verify needs as one line (`.chk` files), or ""."""
        if "-" in (self.stamp, self.checks):
            return ""
        return f"{CHECKS_TAG}\t{self.key}\t{self.inode}\t{self.stamp}\t{self.checks}\n"

    @classmethod
    def from_line(cls, line: str) -> CatalogRow | None:
        """Parse a summary line; None for a torn, foreign or damaged one."""
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 9 or parts[0] != SUMMARY_TAG:
            return None
        try:
            # Positional, in field order: `gc` parses 100,000 of these.
            return cls(
                parts[1],
                int(parts[3]),
                parts[8],
                int(parts[4]),
                int(parts[5]),
                float(parts[6]),
                float(parts[7]),
                int(parts[2]),
            )
        except ValueError:
            return None


class CatalogRows:
    """The newest line per key, parsed only when asked for.

    A scan that shows 50 rows of 100,000 parses 50 lines.
    """

    def __init__(self) -> None:
        self._lines: dict[str, str] = {}
        self._checks: dict[str, str] = {}
        self._uses: dict[str, str] = {}
        self.lines_read = 0
        """Summary and use lines read: many more than there are entries
        means files full of superseded lines, worth folding."""
        self.checks_read = 0
        """The same for `.chk` lines."""

    def add_text(self, text: str, *, checks: bool, after: str = "") -> None:
        """Keep every line of a catalog file (later lines win).

        Args:
            text: The file's content.
            checks: It is a `.chk` file.
            after: For a file read after snapshots: the (20-digit) time the
                oldest of them was written. Its summary and use lines from
                before that time are older news than the snapshot's for keys
                the snapshot has (a live process's file is never folded).
        """
        # One regular expression over the text: a method call per line cost
        # 100 ms per 100,000 entries.
        text = "\n" + text
        if checks:
            found = {key: line for line, key in _CHECKS_LINES(text)}
            self.checks_read += len(found)
            self._checks.update(found)
            return
        found = {key: line for line, key in _SUMMARY_LINES(text)}
        uses = (
            dict(_USE_LINES(text))
            if f"{USE_TAG}\t" in text  # no second pass over a file without uses
            else {}
        )
        self.lines_read += len(found) + len(uses)
        if after:
            lines = self._lines
            found = {
                k: v for k, v in found.items() if v[_USED] > after or k not in lines
            }
            uses = {k: v for k, v in uses.items() if v > after}
        self._lines.update(found)
        self._note_uses(uses)

    def _note_uses(self, found: dict[str, str]) -> None:
        # Files are not in time order: the latest use of a key wins.
        if not self._uses:
            self._uses = found
            return
        uses = self._uses
        for key, used in found.items():
            if used > uses.get(key, ""):
                uses[key] = used

    # The index of last uses. A last use is kept as written, 20-digit
    # nanoseconds (strings of one width sort as the numbers): the latest of
    # the key's newest row and the uses recorded since. A hint: right unless
    # a folder's time was set by something other than styxcache.

    def last_use_pairs(self, present: Set[str]) -> Iterator[tuple[str, str]]:
        """Yield (last use, key) for every key of the index in `present`.

        Args:
            present: The entry folders' names found now.
        """
        lines, uses = self._lines, self._uses
        yield from (
            (line[_USED], key)
            for key, line in lines.items()
            if key in present and key not in uses
        )
        for key, used in uses.items():
            line = lines.get(key)
            if line is not None and key in present:
                yield max(used, line[_USED]), key

    def use_agrees(self, row: CatalogRow, last_used: float) -> bool:
        """Say whether the index has a row's last use right (within the tolerance).

        Args:
            row: The key's row (as `get` returned it).
            last_used: Its folder's time now (Unix time).
        """
        indexed = row.used_ns
        later = self._uses.get(row.key, "")
        # `add_text` keeps only 20-digit times; a damaged one is no use.
        if later.isdecimal() and later.isascii() and int(later) > indexed:
            indexed = int(later)
        return abs(round(last_used * 1e9) - indexed) <= TOLERANCE_NS

    def last_use_of(self, key: str) -> tuple[int, int] | None:
        """Return a key's (folder inode, last use in ns) by the index, or None.

        Args:
            key: The key.
        """
        line = self._lines.get(key)
        if line is None:
            return None
        used = max(line[_USED], self._uses.get(key, ""))
        try:
            return int(line[89 : line.find("\t", 89)]), int(used)
        except ValueError:
            return None

    def unknown(self, names: Iterable[str]) -> set[str]:
        """Return the names the index has no row for.

        Args:
            names: Folder names.
        """
        return set(names).difference(self._lines)  # a dict: looked up, not walked

    def count_known(self, present: set[str]) -> int:
        """Count the keys of the index in `present`.

        Args:
            present: The entry folders' names found now.
        """
        return len(present.intersection(self._lines))

    def get(self, key: str) -> CatalogRow | None:
        """Return the row of a key (with its checks, if they were loaded)."""
        line = self._lines.get(key)
        row = None if line is None else CatalogRow.from_line(line)
        if row is None or row.key != key:
            return None  # (`add_text` keeps only rows filed under their key)
        checks = self._checks.get(key)
        if checks is None:
            return row
        parts = checks.rstrip("\n").split("\t")
        if len(parts) != 5 or parts[1] != key or parts[2] != str(row.inode):
            return row
        return row._replace(stamp=parts[3], checks=parts[4])

    def checks_for(self, key: str, inode: int) -> tuple[str, str] | None:
        """Return what `verify` needs of a folder: (manifest stamp, checks).

        None unless the checks were loaded, are known, and were written for
        the folder with this inode. The summary line is not parsed: `verify`
        asks this of every entry.

        Args:
            key: The entry's key.
            inode: Its folder's inode now.
        """
        line = self._checks.get(key)
        if line is None:
            return None
        parts = line.rstrip("\n").split("\t")
        if (
            len(parts) != 5
            or parts[1] != key
            or parts[2] != str(inode)
            or "-" in (parts[3], parts[4])
        ):
            return None
        return parts[3], parts[4]

    def worth_folding(self, entries: int, *, checks: bool = False) -> bool:
        """Say whether the files hold far more lines than a snapshot would.

        Args:
            entries: Entries in the cache.
            checks: Judge the `.chk` lines instead of the summaries.
        """
        read = self.checks_read if checks else self.lines_read
        return read > 2 * entries + 1000

    def __len__(self) -> int:
        return len(self._lines)
