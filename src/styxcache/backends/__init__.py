"""Container image identity resolvers for ``CachePolicy(image_digest=...)``.

Each resolver is a callable ``(tag) -> str`` returning an immutable identity of
the image the tag names right now. Answers are reused for a short time (60 s
by default, see the ``ttl`` argument), so a long-running process notices when a
tag is moved to a different image.

Example:
    >>> from styxcache import CachePolicy
    >>> from styxcache.backends import docker_digest_resolver
    >>> policy = CachePolicy(image_digest=docker_digest_resolver)  # doctest: +SKIP
"""

from __future__ import annotations

from styxcache.backends.docker_resolver import DockerDigestResolver
from styxcache.backends.errors import (
    ContainerRuntimeUnavailableError,
    DigestResolutionError,
    ImageNotFoundError,
)
from styxcache.backends.podman_resolver import PodmanDigestResolver
from styxcache.backends.singularity_resolver import SingularityDigestResolver
from styxcache.backends.ttl import DEFAULT_TTL, CachedDigestResolver

#: Resolves through the daemon named by ``DOCKER_HOST`` (or the default socket).
docker_digest_resolver = DockerDigestResolver()
#: Resolves through the ``podman`` executable on PATH.
podman_digest_resolver = PodmanDigestResolver()
#: Hashes SIF files mapped by ``STYXCACHE_SINGULARITY_IMAGES`` or given as paths.
singularity_digest_resolver = SingularityDigestResolver()

__all__ = [
    "DEFAULT_TTL",
    "CachedDigestResolver",
    "ContainerRuntimeUnavailableError",
    "DigestResolutionError",
    "DockerDigestResolver",
    "ImageNotFoundError",
    "PodmanDigestResolver",
    "SingularityDigestResolver",
    "docker_digest_resolver",
    "podman_digest_resolver",
    "singularity_digest_resolver",
]
