"""The run-time fingerprint: what the key cannot see until `run()`.

NiWrap's `metadata.id` does not change when a wrapper is regenerated, and a
local runner has no image digest. So at `run()` the command line (with input
paths replaced by their position, so it does not depend on where inputs live)
and, for a local runner, the executable that `cargs[0]` resolves to on PATH
are fingerprinted. A hit whose stored fingerprint differs is rerun.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from styxcache.canonical import canonical_json

__all__ = ["command_fingerprint", "describe_fingerprint_change", "replace_in_args"]


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
