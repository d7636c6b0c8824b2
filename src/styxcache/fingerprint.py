"""The run-time fingerprint: what the key cannot see until `run()`.

NiWrap's `metadata.id` does not change when a wrapper is regenerated, and a
local runner has no image digest. So at `run()` the command line (with input
paths replaced by their position, so it does not depend on where inputs live)
and, for a local runner, the executable that `cargs[0]` resolves to on PATH
are fingerprinted. A hit whose stored fingerprint differs is rerun.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from styxcache.canonical import canonical_json
from styxcache.hashing import ContentHasher
from styxcache.memo import DigestMemo, file_memo_key

__all__ = [
    "ExecutableDigests",
    "command_fingerprint",
    "describe_fingerprint_change",
    "replace_in_args",
]

_EXECUTABLE_TTL = 5.0
"""Seconds a PATH look-up is trusted before it is repeated."""


def replace_in_args(
    cargs: Sequence[str], replacements: Sequence[tuple[str, str]]
) -> list[str]:
    """Replace substrings in every argument of a command line.

    Args:
        cargs: The command line.
        replacements: `(text, replacement)` pairs; empty texts are ignored.

    Returns:
        The new command line.
    """
    # Longest first, so /data/a.nii is not half-replaced by a shorter /data/a.
    ordered = sorted(
        (r for r in replacements if r[0]), key=lambda r: len(r[0]), reverse=True
    )
    out = []
    for arg in cargs:
        neutral = arg
        for text, token in ordered:
            neutral = neutral.replace(text, token)
        out.append(neutral)
    return out


def command_fingerprint(
    cargs: Sequence[str],
    *,
    replacements: Sequence[tuple[str, str]],
    executable: str | None,
) -> tuple[str, dict[str, str]]:
    """Fingerprint a command line and, for a local runner, its executable.

    Args:
        cargs: The command line the wrapper built.
        replacements: `(text, token)` pairs: machine-specific strings in the
            command line (input paths, the output folder) and what stands for
            them.
        executable: Digest of the executable `cargs[0]` resolves to on PATH,
            when the tool runs on this host; None in a container.

    Returns:
        `(fingerprint, parts)`: the parts are `command` and, when given,
        `executable` digests.
    """
    parts = {
        "command": hashlib.sha256(
            canonical_json(replace_in_args(cargs, replacements)).encode()
        ).hexdigest()
    }
    if executable is not None:
        parts["executable"] = executable
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest(), parts


def describe_fingerprint_change(old: dict[str, str], new: dict[str, str]) -> str:
    """Say in words why two fingerprints differ.

    Args:
        old: Stored parts.
        new: Current parts.

    Returns:
        A short sentence.
    """
    reasons = []
    if old.get("executable") != new.get("executable"):
        reasons.append("the executable on PATH changed")
    if old.get("command") != new.get("command"):
        reasons.append("the wrapper built a different command line")
    return " and ".join(reasons) or "the run-time fingerprint changed"


class ExecutableDigests:
    """Digests of the executables command names resolve to on PATH.

    A resolution is remembered for a few seconds and re-validated with one
    `stat`, so a hit does not walk PATH and resolve symlinks every time,
    while a binary replaced in place is noticed at once.

    Args:
        hasher: Hashes the executable's bytes.
        memo: The digest memo, or None.
    """

    def __init__(self, hasher: ContentHasher, memo: DigestMemo | None) -> None:
        self._hasher = hasher
        self._memo = memo
        self._known: dict[tuple[str, str | None], tuple[float, str, str, str]] = {}

    def digest(self, name: str, search_path: str | None) -> str | None:
        """Digest of the executable a command name resolves to on PATH.

        Args:
            name: `cargs[0]`.
            search_path: The PATH the tool runs with.

        Returns:
            The digest, or None when nothing on PATH matches.
        """
        now = time.monotonic()
        cached = self._known.get((name, search_path))
        if cached is not None and now - cached[0] < _EXECUTABLE_TTL:
            _, real, stamp, digest = cached
            try:
                if file_memo_key(os.stat(real)) == stamp:
                    return digest
            except OSError:
                pass
        found = shutil.which(name, path=search_path)
        if found is None:
            return None
        real = os.path.realpath(found)
        try:
            stamp = file_memo_key(os.stat(real))
            digest = self._hasher.hash_path(Path(real), memo=self._memo)
        except OSError:
            return None
        self._known[(name, search_path)] = (now, real, stamp, digest)
        return digest
