"""The cache key: what an execution's result depends on, folded into one hash.

The key payload is a JSON object with the tool's metadata, the image
identity, the allowlisted environment, the canonical params with every
registered input path replaced by a reference to its input record, the input
records (file name, content digest, flags), the digests of unregistered path
params, and `policy.extra`. No host path, working directory or process detail
enters it, so equal inputs give equal keys on every machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from styxdefs import Metadata

from styxcache.canonical import JSON, canonical_json, encode_params
from styxcache.hashing import UnkeyableInputError

__all__ = [
    "KEY_FORMAT",
    "InputRecord",
    "KeyPayload",
    "PathParamsMode",
    "RegisteredInput",
    "build_payload",
    "key_of",
    "tool_id",
]

_log = logging.getLogger("styxcache.key")

KEY_FORMAT = 1
"""Bumped whenever the payload's meaning changes; every key changes with it."""


def tool_id(metadata: Metadata) -> str:
    """Return the short, stable name of a tool: `package/id`.

    Args:
        metadata: The tool's metadata.

    Returns:
        `package/id`.
    """
    return f"{metadata.package}/{metadata.id}"


@dataclasses.dataclass(frozen=True)
class RegisteredInput:
    """One `input_file()` call as the caching execution saw it.

    Attributes:
        path: The host path, absolute.
        resolve_parent: The tool sees the whole parent folder.
        mutable: The tool gets a writable copy.
        local: What the base execution returned (the path on the command line).
    """

    path: Path
    resolve_parent: bool
    mutable: bool
    local: str

    @property
    def hashed_path(self) -> Path:
        """The file or folder whose content the result depends on."""
        if self.resolve_parent and not self.mutable:
            return self.path.parent
        return self.path


@dataclasses.dataclass(frozen=True)
class InputRecord:
    """An input as it enters the key.

    Attributes:
        name: The file name the tool is pointed at (tools name outputs after it
            and branch on its extension).
        digest: Content digest of the file, or of the parent folder's whole tree
            with `resolve_parent`.
        resolve_parent: The input was registered with `resolve_parent=True`.
        mutable: The input was registered with `mutable=True`.
        param: Where the path appears in the params (for explanations).
    """

    name: str
    digest: str
    resolve_parent: bool
    mutable: bool
    param: str | None = None

    def to_json(self) -> dict[str, JSON]:
        """Return the record as a JSON object."""
        return {
            "name": self.name,
            "digest": self.digest,
            "resolve_parent": self.resolve_parent,
            "mutable": self.mutable,
            "param": self.param,
        }


PathParamsMode = Literal["hash", "warn", "ignore"]
"""What to do with an absolute path in a param that was never registered as an
input (`CachePolicy.path_params`): digest its content into the key, warn, or
ignore it."""


@dataclasses.dataclass(frozen=True)
class KeyPayload:
    """Everything the key is made of; stored in each entry's manifest.

    Attributes:
        tool: `{"package", "id", "name"}` of the tool.
        image: The resolved image identity, or None without a container.
        env: Allowlisted variables; None for an unset one.
        params: Canonical params, inputs replaced by `{"$input": index}`.
        inputs: The input records, in registration order.
        path_params: Digests of unregistered path params, by param name.
        extra: `policy.extra`.
    """

    tool: dict[str, str]
    image: str | None
    env: dict[str, str | None]
    params: JSON
    inputs: tuple[InputRecord, ...]
    path_params: dict[str, dict[str, str]]
    extra: dict[str, str]

    def to_json(self) -> dict[str, JSON]:
        """Return the payload as the JSON object that is hashed."""
        return {
            "format": KEY_FORMAT,
            "tool": self.tool,
            "image": self.image,
            "env": self.env,
            "params": self.params,
            "inputs": [record.to_json() for record in self.inputs],
            "path_params": self.path_params,
            "extra": self.extra,
        }

    def key(self) -> str:
        """Return the cache key: sha256 of the canonical JSON payload."""
        return key_of(self.to_json())


def key_of(payload: Mapping[str, JSON]) -> str:
    """Hash a payload object into a key.

    Args:
        payload: A payload as returned by `KeyPayload.to_json()`.

    Returns:
        64 hex characters.
    """
    # surrogatepass: a file name that is not valid UTF-8 reaches params as
    # lone surrogates (os.fsdecode); it must key, not crash.
    return hashlib.sha256(
        canonical_json(payload).encode("utf-8", "surrogatepass")
    ).hexdigest()


def _normalise(value: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(value)))


def build_payload(
    *,
    metadata: Metadata,
    image: str | None,
    env: dict[str, str | None],
    params: Mapping[str, Any] | None,
    inputs: Sequence[tuple[RegisteredInput, str]],
    extra: dict[str, str],
    path_params: PathParamsMode,
    hash_path: Callable[[Path], str],
) -> KeyPayload:
    """Assemble the key payload of one execution.

    Args:
        metadata: The tool's metadata.
        image: Resolved image identity (None without a container image).
        env: Allowlisted environment values.
        params: The params passed to `Execution.params()`, if any.
        inputs: Registered inputs, in order, each with the content digest of
            its `hashed_path`.
        extra: `policy.extra`.
        path_params: Policy for unregistered absolute-path strings.
        hash_path: Digests an unregistered path param's file or folder.

    Returns:
        The payload.

    Raises:
        canonical.ParamEncodingError: If a param has no stable encoding.
    """
    paths = _PathParams(
        [registered for registered, _ in inputs], path_params, hash_path
    )
    encoded = encode_params(
        dict(params) if params is not None else None, substitute=paths.substitute
    )
    records = tuple(
        InputRecord(
            name=registered.path.name,
            digest=digest,
            resolve_parent=registered.resolve_parent,
            mutable=registered.mutable,
            param=paths.first_param.get(index),
        )
        for index, (registered, digest) in enumerate(inputs)
    )
    return KeyPayload(
        tool={"package": metadata.package, "id": metadata.id, "name": metadata.name},
        image=image,
        env=dict(env),
        params=encoded,
        inputs=records,
        path_params=paths.hashed,
        extra=dict(extra),
    )


class _PathParams:
    """Turns path-like param values into references: to an input, or to content."""

    def __init__(
        self,
        inputs: list[RegisteredInput],
        mode: PathParamsMode,
        hash_path: Callable[[Path], str],
    ) -> None:
        self.by_path: dict[str, int] = {}
        for index, registered in enumerate(inputs):
            self.by_path.setdefault(_normalise(registered.path), index)
        self.mode = mode
        self.hash_path = hash_path
        self.first_param: dict[int, str] = {}
        """Input index -> the first param that names it."""
        self.hashed: dict[str, dict[str, str]] = {}
        """Param -> the name and digest of the unregistered path it names."""

    def substitute(self, value: Any, name: str) -> JSON | None:
        """The reference a path-like value stands for in the key, or None."""
        text = os.fspath(value)
        if not text:
            return None
        index = self.by_path.get(_normalise(text))
        if index is not None:
            self.first_param.setdefault(index, name)
            return {"$input": index}
        if self.mode == "ignore":
            return None
        # A str is a path only when absolute (a relative "out" is more often a
        # name than a file here); a Path object says it is a path, so a
        # relative one is taken from the working directory.
        if isinstance(value, str) and not os.path.isabs(text):
            return None
        return self._unregistered(_normalise(text), name)

    def _unregistered(self, text: str, name: str) -> JSON | None:
        """Digest an existing file or folder no input names (or warn about it)."""
        if text == os.sep:
            return None
        try:
            st = os.stat(text)
        except OSError:
            return None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            # /dev/null, a FIFO: a stream, not content; its name is the key.
            return None
        if self.mode == "warn":
            _log.warning(
                "%s names the existing path %s, which the wrapper never registered "
                "as an input: its content is not part of the cache key",
                name,
                text,
            )
            return None
        try:
            digest = self.hash_path(Path(text))
        except UnkeyableInputError as exc:
            raise UnkeyableInputError(exc.path, exc.why, param=name) from None
        self.hashed[name] = {"name": Path(text).name, "digest": digest}
        return {"$path_param": Path(text).name, "digest": digest}
