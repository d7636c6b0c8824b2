"""What can go wrong with a remote cache, and turning client errors into those.

Every call into the object-store client goes through `client_call`, so a
local filesystem error is never mistaken for a remote one, and no client
message reaches a log before its secrets are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from styxcache.errors import (
    DamagedEntryError,
    ObjectMissingError,
    RemoteConfigError,
    RemoteError,
)

__all__ = [
    "DamagedEntryError",
    "ObjectMissingError",
    "RemoteConfigError",
    "RemoteError",
    "client_call",
    "scrub",
]

_SECRET_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_CLIENT_SECRET",
)


def scrub(message: str) -> str:
    """Shorten a client error to its first line and remove every secret value.

    Args:
        message: The error text.

    Returns:
        One line of at most 400 characters, secret environment values
        replaced by `***`.
    """
    text = message.strip()
    line = text.splitlines()[0] if text else "unknown error"
    for name in _SECRET_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            line = line.replace(value, "***")
    line = re.sub(r"(?i)(signature=|x-amz-security-token=|sig=)[^&\s]+", r"\1***", line)
    return line[:400]


_client_pid: list[int] = []
"""The process that started the client's runtime (empty: not started yet)."""


@contextlib.contextmanager
def client_call(what: str) -> Iterator[None]:
    """Translate the errors of the object-store calls made inside the block.

    Args:
        what: The operation and object, for the message.

    Raises:
        ObjectMissingError: The object does not exist.
        RemoteError: Anything else the client raised, or the process was
            forked after the client started (its runtime's threads did not
            survive the fork, and any call would wait forever).
    """
    pid = os.getpid()
    if not _client_pid:
        _client_pid.append(pid)
    elif _client_pid[0] != pid:
        raise RemoteError(
            f"{what}: this process was forked after the object-store client "
            "started, and the client cannot be used after a fork; start worker "
            "processes with the 'spawn' or 'forkserver' method",
            "ForkedProcess",
        )
    try:
        yield
    except FileNotFoundError:
        raise ObjectMissingError(f"{what}: not found", "NotFoundError") from None
    except Exception as exc:
        kind = type(exc).__name__
        raise RemoteError(f"{what}: {scrub(str(exc))}", kind) from None
