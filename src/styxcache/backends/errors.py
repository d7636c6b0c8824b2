"""Errors raised while turning a container image tag into a content identity.

Defined in `styxcache.errors` (one home for every error); importable from here
as before.
"""

from __future__ import annotations

from styxcache.errors import (
    ContainerRuntimeUnavailableError,
    DigestResolutionError,
    ImageNotFoundError,
)

__all__ = [
    "ContainerRuntimeUnavailableError",
    "DigestResolutionError",
    "ImageNotFoundError",
]
