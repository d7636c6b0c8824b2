"""Podman image identities through ``podman image inspect``."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence

from styxcache.backends.errors import (
    ContainerRuntimeUnavailableError,
    DigestResolutionError,
    ImageNotFoundError,
)
from styxcache.backends.ttl import DEFAULT_TTL, CachedDigestResolver, Clock

_HEX_ID = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
# Podman's wording for a missing image has changed between releases.
_NOT_FOUND = re.compile(r"image not known|no such image|failed to find image", re.I)
_UNREACHABLE = re.compile(r"cannot connect to podman|unable to connect to podman", re.I)


class PodmanDigestResolver(CachedDigestResolver):
    """Resolve a Podman tag to the local image ID (``sha256:...``).

    Runs ``podman [podman_args] image inspect --format {{.Id}} TAG``. The ID
    is the config digest, which changes when a tag is moved and also exists
    for imported or locally built images. Podman prints it as bare hex; it is
    returned with a ``sha256:`` prefix, like the Docker resolver's answer.
    """

    runtime = "podman"

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        *,
        executable: str = "podman",
        podman_args: Sequence[str] = (),
        timeout: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        """Create a resolver.

        Args:
            ttl: Seconds a resolved digest is reused; 0 asks podman each time.
            executable: Name or path of the podman executable.
            podman_args: Global options placed before ``image inspect``, e.g.
                ``["--remote"]`` or ``["--root", "/data/containers"]``; use the
                same ones the runner uses so both see one image store.
            timeout: Seconds to wait for podman to answer.
            clock: Monotonic time source (injectable for tests).
        """
        super().__init__(ttl, clock=clock)
        if isinstance(podman_args, str):
            raise TypeError("podman_args must be a sequence of strings, not one string")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.executable = executable
        self.podman_args = tuple(podman_args)
        self.timeout = timeout

    def __repr__(self) -> str:
        return (
            f"PodmanDigestResolver(ttl={self.ttl!r}, executable={self.executable!r}, "
            f"podman_args={list(self.podman_args)!r})"
        )

    def _resolve(self, tag: str) -> str:
        exe = shutil.which(self.executable)
        if exe is None:
            raise ContainerRuntimeUnavailableError(
                f"podman executable {self.executable!r} not found on PATH; "
                f"cannot resolve image {tag!r}"
            )
        # "--" keeps a tag that starts with "-" from being read as an option.
        command = [exe, *self.podman_args, "image", "inspect", "--format", "{{.Id}}"]
        command += ["--", tag]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ContainerRuntimeUnavailableError(
                f"`podman image inspect {tag}` did not answer within {self.timeout}s"
            ) from exc
        except OSError as exc:
            raise ContainerRuntimeUnavailableError(
                f"cannot run podman ({exe}): {exc}"
            ) from exc
        stderr = done.stderr.strip()
        if done.returncode != 0:
            if _NOT_FOUND.search(stderr):
                raise ImageNotFoundError(tag, "podman", f"podman pull {tag}")
            if _UNREACHABLE.search(stderr):
                raise ContainerRuntimeUnavailableError(
                    f"podman could not reach its service to resolve {tag!r}: {stderr}"
                )
            raise DigestResolutionError(
                f"`podman image inspect {tag}` failed with exit code "
                f"{done.returncode}: {stderr or '(no error output)'}"
            )
        ids = {line.strip() for line in done.stdout.splitlines() if line.strip()}
        if len(ids) != 1:
            raise DigestResolutionError(
                f"expected one image ID from podman for {tag!r}, got {sorted(ids)!r}"
            )
        match = _HEX_ID.fullmatch(ids.pop())
        if match is None:
            raise DigestResolutionError(
                f"podman returned an unrecognised image ID for {tag!r}: {done.stdout!r}"
            )
        return f"sha256:{match.group(1)}"
