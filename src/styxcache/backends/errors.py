"""Errors raised while turning a container image tag into a content identity."""

from __future__ import annotations


class DigestResolutionError(RuntimeError):
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
