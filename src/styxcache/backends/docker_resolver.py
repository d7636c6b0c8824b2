"""Docker image identities through the Docker Engine API (the ``docker`` SDK)."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from styxcache.backends.errors import (
    ContainerRuntimeUnavailableError,
    DigestResolutionError,
    ImageNotFoundError,
)
from styxcache.backends.ttl import DEFAULT_TTL, CachedDigestResolver, Clock

_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


def _docker_sdk() -> Any:
    # Imported on first use: the SDK is an optional extra and importing
    # styxcache.backends must work without it.
    try:
        import docker
    except ImportError as exc:
        raise ImportError(
            "resolving Docker image digests needs the docker SDK: "
            "pip install 'styxcache[docker]'"
        ) from exc
    return docker


class DockerDigestResolver(CachedDigestResolver):
    """Resolve a Docker tag to the local image ID (``sha256:...``).

    The image ID is the digest of the image config, so it changes whenever a
    tag is moved to different content. It exists for every local image, also
    for ``docker import``-ed or locally built ones that have no RepoDigests,
    and needs no registry access.

    Example:
        >>> resolver = DockerDigestResolver(ttl=10.0)
        >>> resolver("busybox:1.36")  # doctest: +SKIP
        'sha256:...'
    """

    runtime = "docker"

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        """Create a resolver.

        Args:
            ttl: Seconds a resolved digest is reused; 0 asks the daemon each time.
            base_url: Daemon address (``unix:///var/run/docker.sock``,
                ``tcp://host:2375``); None follows ``DOCKER_HOST`` and friends
                like the ``docker`` CLI does.
            timeout: Seconds to wait for each daemon request.
            clock: Monotonic time source (injectable for tests).
        """
        super().__init__(ttl, clock=clock)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.base_url = base_url
        self.timeout = timeout

    _process_state = (*CachedDigestResolver._process_state, "_client", "_api_lock")

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._client: Any = None
        # One HTTP session per resolver; requests sessions are not documented
        # as thread-safe, and daemon round-trips take milliseconds.
        self._api_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DockerDigestResolver(ttl={self.ttl!r}, base_url={self.base_url!r})"

    def _where(self) -> str:
        return self.base_url or "the daemon from DOCKER_HOST (default unix socket)"

    def _connect(self, docker: Any) -> Any:
        if self._client is None:
            if self.base_url is None:
                self._client = docker.from_env(timeout=self.timeout)
            else:
                self._client = docker.DockerClient(
                    base_url=self.base_url, timeout=self.timeout
                )
        return self._client

    def _resolve(self, tag: str) -> str:
        docker = _docker_sdk()
        errors = docker.errors
        import requests  # a dependency of the docker SDK

        with self._api_lock:
            try:
                attrs = self._connect(docker).api.inspect_image(tag)
            except errors.ImageNotFound as exc:
                raise ImageNotFoundError(tag, "docker", f"docker pull {tag}") from exc
            except errors.APIError as exc:
                # The daemon answered but refused, e.g. "invalid reference format".
                explanation = getattr(exc, "explanation", None) or str(exc)
                raise DigestResolutionError(
                    f"docker daemon could not inspect image {tag!r}: {explanation}"
                ) from exc
            except (
                errors.DockerException,
                requests.exceptions.RequestException,
            ) as exc:
                # Forget the client so the next call reconnects after a restart.
                self._client = None
                raise ContainerRuntimeUnavailableError(
                    f"cannot reach the Docker daemon at {self._where()} to resolve "
                    f"{tag!r}: {exc}. Is dockerd running? (check with `docker info`)"
                ) from exc
        image_id = attrs.get("Id") if isinstance(attrs, dict) else None
        if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
            raise DigestResolutionError(
                f"docker returned no usable image ID for {tag!r}: {image_id!r}"
            )
        return image_id
