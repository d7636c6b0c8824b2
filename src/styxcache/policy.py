"""`CachePolicy`: every knob of the caching runner, and no behaviour.

The first five fields keep the order and meaning they had in styxcache 0.3.0,
so positional construction keeps working; everything added since is
keyword-only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol, get_args, runtime_checkable

from styxdefs import Metadata

from styxcache.hashing import ContentHasher, InputHasher
from styxcache.key import PathParamsMode
from styxcache.trust import TrustSetting, parse_trust

_log = logging.getLogger("styxcache.policy")

__all__ = [
    "CachePolicy",
    "ImageDigestResolver",
    "parse_size",
    "trust_tag",
]


@runtime_checkable
class ImageDigestResolver(Protocol):
    """Turns a container image tag into an immutable identity of the image."""

    def __call__(self, tag: str) -> str:
        """Resolve a tag.

        Args:
            tag: The image tag the base runner will run (`repo/name:tag`).

        Returns:
            A string that changes whenever the tag points at another image.
        """
        ...


def trust_tag(tag: str) -> str:
    """Resolve an image tag to itself: trust that a tag never moves.

    The default resolver: fast and offline, but a re-tagged image is not
    noticed. Use `styxcache.backends.docker_digest_resolver` (or the Podman /
    Apptainer ones) when tags may move.

    Args:
        tag: The image tag.

    Returns:
        `"tag:" + tag`.
    """
    return f"tag:{tag}"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: int | str) -> int:
    """Parse a byte size such as `50G`, `512MiB`, `1.5T` or `1000`.

    Suffixes are binary (`1K` = 1024 bytes), like ccache's `--max-size`.

    Args:
        value: Bytes as an int, or a string with an optional K/M/G/T/P suffix.

    Returns:
        The size in bytes.

    Raises:
        ValueError: If the value is negative or not a size.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative: {value}")
        return value
    if not isinstance(value, str):
        raise TypeError(f"not a size: {value!r} (an int, or a string like 50G)")
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (examples: 500M, 50G, 2T, 1048576)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _SIZE_POWERS[unit.lower()])


def _seconds(value: float | dt.timedelta | None, field: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"CachePolicy.{field} must be seconds or a timedelta")
    if math.isnan(seconds):
        raise ValueError(f"CachePolicy.{field} must be a number of seconds, got nan")
    if seconds < 0:
        raise ValueError(f"CachePolicy.{field} must not be negative, got {seconds}")
    return float(seconds)


def _warn_if_unmatchable(pattern: str) -> None:
    """Warn about a `bypass_tools` pattern that can never match a tool.

    Patterns are matched against `package/name` and `package/id`, so one
    without a `/` (or a leading wildcard) matches nothing; Styx package ids
    are lower case and matching is case-sensitive, so `FSL/bet` matches
    nothing either. A silent no-op here would cache a tool the user meant to
    keep out of the cache.
    """
    if "/" not in pattern and not pattern.startswith("*"):
        _log.warning(
            "CachePolicy.bypass_tools pattern %r has no '/': patterns are matched "
            "against 'package/name' and 'package/id', so it matches no tool; "
            "did you mean '*/%s'?",
            pattern,
            pattern,
        )
        return
    package = pattern.split("/", 1)[0]
    if package != package.lower() and not any(c in package for c in "*?["):
        _log.warning(
            "CachePolicy.bypass_tools pattern %r names the package %r, but package "
            "ids are lower case and matching is case-sensitive; did you mean %r?",
            pattern,
            package,
            f"{package.lower()}/{pattern.split('/', 1)[1]}",
        )


def _strings(
    value: Iterable[str], field: str, whole: str, items: str, *, empty: bool
) -> tuple[str, ...]:
    """A policy field's strings as a tuple, or a TypeError naming the culprit.

    A lone string is refused: `("HOME")` is a common slip for `("HOME",)`.
    """
    if isinstance(value, str):
        raise TypeError(
            f"CachePolicy.{field} must be {whole}, not the string {value!r}"
        )
    found = tuple(value)
    for item in found:
        if not isinstance(item, str) or not (empty or item):
            raise TypeError(f"CachePolicy.{field} must hold {items}; got {item!r}")
    return found


VerifyMode = Literal["size", "full"]
ReadOnlyMissMode = Literal["warn", "error"]
RequiredOutputsMode = Literal["any", "all"]
UnkeyableMode = Literal["run", "error"]


@dataclasses.dataclass
class CachePolicy:
    """How a `CachingRunner` keys, stores and serves executions.

    Attributes:
        hasher: Digests input files and folders. The default `ContentHasher`
            uses blake3 and the local digest memo.
        image_digest: Turns `metadata.container_image_tag` into the image
            identity folded into the key (see `styxcache.backends`).
        env_allowlist: Environment variables whose values are part of the key
            (for example `FSLOUTPUTTYPE`, `OMP_NUM_THREADS`).
        bypass_tools: Tools never cached. Each pattern is matched, as a
            shell-style glob, against `package/name` and `package/id`
            (NiWrap's `name` is often a sentence, its `id` the command).
        extra: Free-form strings folded into the key (a lab-wide salt, a
            pipeline version).
        path_params: What to do with a string param naming an existing
            absolute path that was never registered with `input_file()`
            (FreeSurfer's `subjects_dir`): `"hash"` its content into the key,
            `"warn"` and key on the string only, or `"ignore"`.
        verify: On every hit each output's presence and size are checked;
            `"full"` also checks every output's blake3 digest.
        read_only_outputs: Make cached files read-only so a downstream step
            cannot edit the cache in place.
        lease_seconds: How long a running execution's lock stays valid without
            renewal; a crashed holder on another host is taken over after it.
        lock_timeout: How long to wait for a concurrent identical execution
            before running without it (with a warning).
        max_age: Entries older than this are recomputed (seconds or timedelta).
        max_size: Trim the cache after each commit, least recently used first,
            down to 90% of this many bytes (int or a string like `"50G"`).
        memo_dir: Where the local digest memo lives. None: the
            `STYXCACHE_MEMO_DIR` environment variable, else the user's cache
            folder. Keep it on local disk, not on the shared cache volume.
        memo: Remember digests of unchanged files between runs.
        read_only_miss: A miss while the cache directory is read-only runs the
            tool uncached with a warning (`"warn"`), or raises (`"error"`).
        keep_failed: How many failed runs to keep under `.failed/` for
            inspection.
        check_command: Store a fingerprint of the command line (and of the
            local executable) and rerun a hit whose fingerprint differs.
        required_outputs: When a run that exited 0 is committed. `"any"`: it
            wrote at least one file, or declared no output inside its folder
            (FSL `bet` declares 16 outputs and writes one); absent ones are
            listed in the manifest. `"all"`: every non-optional declared
            output must exist.
        unkeyable_params: What a call does when its key cannot be built
            losslessly: a param of a type the key cannot encode (register an
            encoder with `styxcache.register_encoder`), a structure that
            contains itself, an input that is a FIFO or a device, or a folder
            over the hasher's `max_entries`. `"run"`: run it uncached, as the
            base runner would, with one warning per tool naming the param;
            `"error"`: raise, naming it.
        trust: Whose entries are served (docs/security.md): `"self"` (you,
            root and the cache folder's owner), `"group"` (also every member
            of the cache folder's group), a list of user names and uids, or
            `"any"` (no ownership checks). An entry someone untrusted could
            have written is not served; the call runs uncached.
    """

    hasher: InputHasher = dataclasses.field(default_factory=ContentHasher)
    image_digest: ImageDigestResolver = trust_tag
    env_allowlist: tuple[str, ...] = ()
    bypass_tools: frozenset[str] = dataclasses.field(default_factory=frozenset)
    extra: dict[str, str] = dataclasses.field(default_factory=dict)
    _: dataclasses.KW_ONLY
    path_params: PathParamsMode = "hash"
    verify: VerifyMode = "size"
    read_only_outputs: bool = True
    lease_seconds: float = 30.0
    lock_timeout: float | dt.timedelta = 6 * 3600.0
    max_age: float | dt.timedelta | None = None
    max_size: int | str | None = None
    memo_dir: str | os.PathLike[str] | None = None
    memo: bool = True
    read_only_miss: ReadOnlyMissMode = "warn"
    keep_failed: int = 5
    check_command: bool = True
    required_outputs: RequiredOutputsMode = "any"
    unkeyable_params: UnkeyableMode = "run"
    trust: TrustSetting | Iterable[int | str] = "self"

    def __post_init__(self) -> None:
        """Check every knob now, so a bad policy fails before anything runs."""
        self._check_choices()
        self._check_collections()
        self._check_callables()
        self._check_numbers()

    def _check_choices(self) -> None:
        # The Literal types are the one list of each knob's choices.
        choices: dict[str, tuple[str, ...]] = {
            "path_params": get_args(PathParamsMode),
            "verify": get_args(VerifyMode),
            "read_only_miss": get_args(ReadOnlyMissMode),
            "required_outputs": get_args(RequiredOutputsMode),
            "unkeyable_params": get_args(UnkeyableMode),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"CachePolicy.{name} must be one of {', '.join(allowed)}; "
                    f"got {value!r}"
                )

    def _check_collections(self) -> None:
        """env_allowlist, bypass_tools and extra (normalised to tuple/frozenset)."""
        self.env_allowlist = _strings(
            self.env_allowlist,
            "env_allowlist",
            "a sequence of variable names",
            "variable names",
            empty=False,
        )
        self.bypass_tools = frozenset(
            _strings(
                self.bypass_tools,
                "bypass_tools",
                "a set of patterns",
                "str patterns",
                empty=True,
            )
        )
        for pattern in self.bypass_tools:
            _warn_if_unmatchable(pattern)
        if not isinstance(self.extra, dict):
            raise TypeError(
                f"CachePolicy.extra must be a dict of str to str, got {self.extra!r}"
            )
        for name, value in self.extra.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(
                    f"CachePolicy.extra must map str to str; got {name!r}: {value!r}"
                )

    def _check_callables(self) -> None:
        """image_digest, hasher, the boolean flags and memo_dir."""
        if not callable(self.image_digest):
            raise TypeError("CachePolicy.image_digest must be callable (tag -> str)")
        if not callable(getattr(self.hasher, "hash_path", None)):
            raise TypeError("CachePolicy.hasher must have a hash_path(path) method")
        for flag in ("read_only_outputs", "memo", "check_command"):
            given = getattr(self, flag)
            if not isinstance(given, bool):
                raise TypeError(
                    f"CachePolicy.{flag} must be True or False, got {given!r}"
                )
        memo_dir = self.memo_dir
        if memo_dir is not None and not isinstance(memo_dir, (str, os.PathLike)):
            raise TypeError(
                f"CachePolicy.memo_dir must be a path or None, got {self.memo_dir!r}"
            )

    def _check_numbers(self) -> None:
        """Durations, sizes and counts (and trust, normalised by parse_trust)."""
        if isinstance(self.lease_seconds, bool) or not isinstance(
            self.lease_seconds, (int, float)
        ):
            raise TypeError(
                f"CachePolicy.lease_seconds must be a number of seconds, "
                f"got {self.lease_seconds!r}"
            )
        if not self.lease_seconds > 0 or math.isinf(self.lease_seconds):
            raise ValueError(
                "CachePolicy.lease_seconds must be positive and finite, "
                f"got {self.lease_seconds}"
            )
        _seconds(self.lock_timeout, "lock_timeout")
        _seconds(self.max_age, "max_age")
        if self.max_size is not None:
            try:
                parse_size(self.max_size)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"CachePolicy.max_size: {exc}") from None
        if isinstance(self.keep_failed, bool) or not isinstance(self.keep_failed, int):
            raise TypeError(
                f"CachePolicy.keep_failed must be an int, got {self.keep_failed!r}"
            )
        self.trust = parse_trust(self.trust)
        if self.keep_failed < 0:
            raise ValueError(
                f"CachePolicy.keep_failed must not be negative, got {self.keep_failed}"
            )

    def env_values(self) -> list[tuple[str, str]]:
        """Return the allowlisted variables and their values, sorted by name.

        A variable that is not set reads as the empty string.

        Returns:
            `(name, value)` pairs.
        """
        return [(name, os.environ.get(name, "")) for name in sorted(self.env_allowlist)]

    def env_for_key(self) -> dict[str, str | None]:
        """Return the allowlisted variables for the key; unset ones are None.

        Unlike `env_values()`, an unset variable and an empty one differ here,
        so a miss can say "env FSLOUTPUTTYPE added".

        Returns:
            Name to value (or None), for every allowlisted name.
        """
        return {name: os.environ.get(name) for name in sorted(self.env_allowlist)}

    def bypasses(self, metadata: Metadata) -> bool:
        """Return True when the tool matches a `bypass_tools` pattern.

        Args:
            metadata: The tool's metadata.

        Returns:
            Whether the tool must not be cached.
        """
        if not self.bypass_tools:
            return False
        names = (
            f"{metadata.package}/{metadata.name}",
            f"{metadata.package}/{metadata.id}",
        )
        # Exact comparison first: a tool name may itself contain glob characters.
        return any(
            name == pattern or fnmatch.fnmatchcase(name, pattern)
            for pattern in self.bypass_tools
            for name in names
        )

    @property
    def trust_setting(self) -> TrustSetting:
        """`trust`, validated: a keyword or the tuple of trusted uids."""
        return parse_trust(self.trust)

    @property
    def lock_timeout_s(self) -> float:
        """`lock_timeout` in seconds."""
        value = _seconds(self.lock_timeout, "lock_timeout")
        assert value is not None
        return value

    @property
    def max_age_s(self) -> float | None:
        """`max_age` in seconds, or None."""
        return _seconds(self.max_age, "max_age")

    @property
    def max_size_bytes(self) -> int | None:
        """`max_size` in bytes, or None."""
        return None if self.max_size is None else parse_size(self.max_size)

    def memo_path(self) -> Path | None:
        """Return the digest memo's folder, or None when the memo is off."""
        if not self.memo:
            return None
        if self.memo_dir is not None:
            return Path(self.memo_dir)
        from_env = os.environ.get("STYXCACHE_MEMO_DIR")
        if from_env:
            return Path(from_env)
        import platformdirs

        return Path(platformdirs.user_cache_dir("styxcache"))
