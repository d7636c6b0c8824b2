"""Every error styxcache raises, under one root: `StyxcacheError`.

Each specific error also keeps the builtin base it always had (`ValueError`,
`OSError`, ...), so code that catches those keeps working, while
`except StyxcacheError` catches anything styxcache raised on purpose. Errors of
the libraries styxcache drives (docker, obstore, psycopg, nats, yaml) are
turned into these where they could leave the public API.

The modules that raise an error re-export it (`from styxcache.runner import
CacheDirectoryError` still works). This module imports nothing from styxcache,
so any module may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BadMessageError",
    "CacheDirectoryError",
    "CacheReadOnlyError",
    "ConfigError",
    "ConfigErrors",
    "ContainerRuntimeUnavailableError",
    "DamagedEntryError",
    "DigestResolutionError",
    "ImageNotFoundError",
    "KeyPrefixError",
    "LedgerError",
    "ManifestError",
    "NatsSettingsError",
    "ObjectMissingError",
    "ParamEncodingError",
    "PublishConfigError",
    "RemoteConfigError",
    "RemoteError",
    "RunLostError",
    "RunnerSpecError",
    "StoreUnavailableError",
    "StyxcacheError",
    "TarStreamError",
    "TransferError",
    "TriggerError",
    "UnkeyableInputError",
    "UnsafeCacheFileError",
    "UnsafeCacheFolderError",
    "UntrustedEntryError",
    "WireError",
]


class StyxcacheError(Exception):
    """Root of every error styxcache raises on purpose."""


class _FieldError(StyxcacheError, ValueError):
    """A setting that names its offending key.

    Attributes:
        field: The offending key.
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[type[_FieldError], tuple[str, str]]:
        # Process pools re-create an exception from its args: keep the field.
        return (type(self), (str(self), self.field))


# --- the cache directory and its entries -------------------------------------


class CacheDirectoryError(StyxcacheError, OSError):
    """The cache directory cannot be created or is not a directory."""


class CacheReadOnlyError(StyxcacheError, PermissionError):
    """A miss must write to a read-only cache, and the policy forbids running it."""


class UnsafeCacheFolderError(StyxcacheError, PermissionError):
    """A folder of the cache is a symlink or a file: it is never written through."""


class UntrustedEntryError(StyxcacheError, RuntimeError):
    """An untrusted entry appeared where a run was about to be committed.

    The paths the caller was given point into that entry, so the call fails
    rather than hand over someone else's files; the run's own outputs are
    left in its staging folder, named in the message.
    """

    def __init__(self, entry: Path, staging: Path, reason: str) -> None:
        super().__init__(
            f"an entry that is not trusted appeared at {entry} while the tool "
            f"ran ({reason}); it is not served. This run's own outputs are in "
            f"{staging}"
        )
        self.entry = entry
        self.staging = staging


class ManifestError(StyxcacheError, ValueError):
    """A manifest is missing, unreadable, or of an unknown format."""


class KeyPrefixError(StyxcacheError, LookupError):
    """A key prefix matches no entry, or more than one."""


class TransferError(StyxcacheError, ValueError):
    """An archive cannot be written or is not a safe, valid styxcache export."""


class TarStreamError(StyxcacheError, ValueError):
    """The stream is not a tar archive this module can read, or is damaged."""


# --- keying a call ------------------------------------------------------------


class ParamEncodingError(StyxcacheError, TypeError):
    """A parameter value has no stable, lossless encoding.

    The message names the param by its path (`params.stages[0].metrics`).
    """


class UnkeyableInputError(StyxcacheError, ValueError):
    """An input whose content cannot be keyed without blocking or without bound.

    A FIFO or a device has no content to read to its end (reading `/dev/zero`
    or a FIFO nobody writes to never returns), and a folder with more entries
    than the hasher's `max_entries` would cost every call a long walk. The
    caching runner then runs the call uncached (or raises, by policy).

    Attributes:
        path: The input.
        why: What makes it unkeyable, as a phrase.
        param: The param that names it, when known.
    """

    def __init__(
        self, path: str | os.PathLike[str], why: str, *, param: str = ""
    ) -> None:
        self.path = os.fspath(path)
        self.why = why
        self.param = param
        where = f"param `{param}`: " if param else ""
        super().__init__(f"{where}{self.path} {why}")


class DigestResolutionError(StyxcacheError, RuntimeError):
    """An image tag could not be resolved to an immutable identity.

    Base class of every resolver failure, so callers can catch one type.
    """


class ImageNotFoundError(DigestResolutionError, LookupError):
    """The image tag is not present in the local image store.

    Attributes:
        tag: The image tag that was looked up.
        runtime: Name of the container runtime that was asked.
        fetch_command: A shell command that would make the tag available.
        detail: Extra context for the message (may be empty).
    """

    def __init__(
        self, tag: str, runtime: str, fetch_command: str, detail: str = ""
    ) -> None:
        self.tag = tag
        self.runtime = runtime
        self.fetch_command = fetch_command
        self.detail = detail
        message = f"image {tag!r} is not present in the local {runtime} image store"
        if detail:
            message += f" ({detail})"
        message += f"; fetch it first with: {fetch_command}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ImageNotFoundError], tuple[str, str, str, str]]:
        # Keeps the error picklable across process pools, which re-create an
        # exception from its args (the formatted message would not fit).
        return (type(self), (self.tag, self.runtime, self.fetch_command, self.detail))


class ContainerRuntimeUnavailableError(DigestResolutionError):
    """The container runtime (daemon or executable) could not be reached."""


# --- the remote tier ----------------------------------------------------------


class RemoteConfigError(StyxcacheError, ValueError):
    """A remote cache setting that cannot work (bad URL, client missing)."""


class RemoteError(StyxcacheError):
    """The object store failed: network, authentication, timeout, server error.

    Attributes:
        kind: The client's error class (`PermissionDeniedError`...).
    """

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (type(self), (str(self), self.kind))


class ObjectMissingError(RemoteError):
    """The object does not exist in the store."""


class DamagedEntryError(StyxcacheError, ValueError):
    """A remote entry fails verification: it is never served."""


# --- the scheduler ------------------------------------------------------------


class ConfigError(StyxcacheError, ValueError):
    """An invalid schedule entry or file.

    Attributes:
        entry: Name (or position) of the offending entry, if any.
        field: The offending key, if any.
        file: The schedule file, when the error came from one.
        line: 1-based line of the offending value in `file`.
        column: 1-based column of the offending value.
        errors: Every error of the file (just this one for a single error).
    """

    def __init__(
        self,
        message: str,
        *,
        entry: str | None = None,
        field: str | None = None,
        file: Path | None = None,
        line: int | None = None,
        column: int | None = None,
    ):
        self.message = message
        self.entry = entry
        self.field = field
        self.file = file
        self.line = line
        self.column = column
        self.errors: list[ConfigError] = [self]
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.entry is not None:
            where.append(f"schedule {self.entry!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        text = f"{', '.join(where)}: {self.message}" if where else self.message
        if self.file is not None:
            spot = str(self.file)
            if self.line is not None:
                spot += f":{self.line}:{self.column or 1}"
            text = f"{spot}: {text}"
        return text

    def locate(self, file: Path | None, line: int | None, column: int | None) -> None:
        """Attach the file position (done by the loader, which knows it).

        Args:
            file: The schedule file.
            line: 1-based line.
            column: 1-based column.
        """
        self.file, self.line, self.column = file, line, column
        self.args = (self._text(),)


class ConfigErrors(ConfigError):  # noqa: N818 - still one ConfigError, listing all
    """Several errors of one file, reported together (`errors` lists them)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        """Collect errors.

        Args:
            errors: At least one error.
        """
        first = errors[0]
        super().__init__(
            first.message,
            entry=first.entry,
            field=first.field,
            file=first.file,
            line=first.line,
            column=first.column,
        )
        self.errors = list(errors)
        self.args = (self._text(),)

    def _text(self) -> str:
        errors = getattr(self, "errors", None)
        if not errors or len(errors) == 1:
            return super()._text()
        lines = [f"{len(errors)} errors:"]
        lines.extend(f"  {error._text()}" for error in errors)
        return "\n".join(lines)


class TriggerError(StyxcacheError, ValueError):
    """A cron expression, interval or time zone is invalid."""


class RunnerSpecError(_FieldError):
    """A `runner:` mapping that cannot build a runner.

    Attributes:
        field: The offending key, dotted for policy fields (`policy.verify`).
    """


class PublishConfigError(_FieldError):
    """An invalid publish entry.

    Attributes:
        field: The offending key (`goal_config.context`, ...).
    """


class NatsSettingsError(_FieldError):
    """An invalid `nats:` setting.

    Attributes:
        field: The offending key.
    """


class LedgerError(StyxcacheError, RuntimeError):
    """The ledger file exists but cannot be used; the message says how to recover."""


class StoreUnavailableError(StyxcacheError, RuntimeError):
    """The run store's database cannot be reached right now.

    A scheduler that gets it claims nothing until the store answers again;
    fires that came due meanwhile are then handled by the catch-up rules.
    """


class RunLostError(StyxcacheError, RuntimeError):
    """The executor lost a run: its worker died or stopped answering.

    Unlike a target's own exception (a `failed` run), a lost run is recorded
    as `interrupted` and retried up to the entry's `retries`.
    """


class UnsafeCacheFileError(StyxcacheError, PermissionError):
    """A pickle file someone else could have written: it is not loaded."""


class WireError(StyxcacheError, ValueError):
    """A message that is not a valid styxcache task or report."""


class BadMessageError(StyxcacheError, ValueError):
    """A message that failed authentication.

    Attributes:
        reason: A short, fixed label (`unsigned`, `bad-signature`, `stale`,
            `replayed`, `malformed`) used to count drops.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[BadMessageError], tuple[str, str]]:
        return (type(self), (self.reason, self.detail))
