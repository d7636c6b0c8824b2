"""How the loader reports an invalid schedule entry or file.

Every check of the loader raises `ConfigError` (defined in `styxcache.errors`)
naming the entry and the field; the loader collects them so that one run
reports every mistake of a file (`ConfigErrors`), each with its
`file:line:column`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from styxcache.errors import ConfigError, ConfigErrors

__all__ = ["ConfigError", "ConfigErrors", "fail", "raise_all", "unknown_keys"]


def unknown_keys(
    raw: Mapping[str, Any], allowed: Collection[str], section: str, noun: str = "key"
) -> tuple[str, str] | None:
    """Name the keys of a section that are not allowed, for an error.

    Args:
        raw: The section's mapping.
        allowed: The keys it may carry.
        section: The section's dotted name (`runner`, `goal_config`...).
        noun: What a key is called in the message.

    Returns:
        None when every key is allowed, else the message and the dotted
        field of the first unknown key.
    """
    unknown = sorted(set(raw) - set(allowed))
    if not unknown:
        return None
    return (
        f"unknown {noun}(s) {', '.join(map(repr, unknown))};"
        f" allowed: {', '.join(sorted(allowed))}",
        f"{section}.{unknown[0]}",
    )


def fail(message: str, entry: str | None, field: str) -> None:
    """Raise a `ConfigError` (a check for `Collector.check` and friends).

    Args:
        message: What is wrong.
        entry: The entry's name, or None for a top-level key.
        field: The key.

    Raises:
        ConfigError: Always.
    """
    raise ConfigError(message, entry=entry, field=field)


def raise_all(errors: list[ConfigError]) -> None:
    """Raise the errors collected, in file order (nothing when there are none).

    Args:
        errors: Errors, each possibly holding several.

    Raises:
        ConfigError: The only error, or `ConfigErrors` listing them all.
    """
    flat = [e for error in errors for e in error.errors]
    flat.sort(key=lambda e: (e.line is None, e.line or 0, e.column or 0))
    if len(flat) == 1:
        raise flat[0]
    if flat:
        raise ConfigErrors(flat)
