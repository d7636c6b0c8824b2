"""`module:function` references to the code a schedule entry runs.

Kept apart from the YAML loader: workers resolve a run's target by name and
must not pay for (or depend on) the loader's imports.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

__all__ = ["REF_PATTERN", "Target", "ref_name", "resolve_callable"]

Target = Callable[..., Any]
"""What an entry runs: any callable (a `RunContext` is passed when asked)."""

# `module:attr`, or seeds 002/003's dotted `package.module.function`.
REF_PATTERN = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*|\.[A-Za-z_]\w*)$")
"""The accepted spelling of a reference (checked before any import)."""


def ref_name(ref: object) -> str:
    """Name a reference or callable stably, for fingerprints and logs.

    Args:
        ref: None, a `module:function` string or a callable.

    Returns:
        `""` for None, the string itself, else `module:qualname`.
    """
    if ref is None:
        return ""
    if isinstance(ref, str):
        return ref
    module = getattr(ref, "__module__", "?")
    qual = getattr(ref, "__qualname__", repr(ref))
    return f"{module}:{qual}"


def resolve_callable(ref: str | Target) -> Target:
    """Import a `module:function` reference (callables pass through).

    Args:
        ref: A callable or a `module:attr.path` string.

    Returns:
        The callable.

    Raises:
        ValueError: If the string is malformed, the import fails or the
            attribute is missing or not callable.
    """
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not REF_PATTERN.match(ref):
        raise ValueError(f"expected 'module:function', got {ref!r}")
    if ":" in ref:
        module_name, attr_path = ref.split(":", 1)
    else:
        module_name, attr_path = ref.rsplit(".", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise ValueError(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]
