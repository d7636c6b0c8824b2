"""Apptainer/Singularity image identities: the content hash of the local SIF."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import blake3
import yaml

from styxcache.backends.errors import DigestResolutionError, ImageNotFoundError
from styxcache.backends.ttl import DEFAULT_TTL, CachedDigestResolver, Clock

#: Environment variable naming a YAML ``{tag: sif_path}`` file, read when the
#: resolver has no explicit mapping (same format as styxsingularity's
#: ``--containers`` file).
IMAGES_ENV = "STYXCACHE_SINGULARITY_IMAGES"

ImageMap = Mapping[str, str | os.PathLike[str]] | str | os.PathLike[str]

# (device, inode, size, mtime_ns): a changed SIF changes at least one of them.
_Signature = tuple[int, int, int, int]


class SingularityDigestResolver(CachedDigestResolver):
    """Resolve an Apptainer/Singularity image to the BLAKE3 hash of its SIF file.

    A SIF file is the whole image, so hashing it is an exact content identity
    that needs neither ``apptainer`` nor ``singularity`` installed (``inspect``
    reports labels and the definition file, which are not an identity).
    Hashes are additionally remembered per file signature (device, inode,
    size, mtime), so a multi-GB image is re-read only when it changes.

    The tag is looked up in ``images`` (Docker tag -> SIF path, as given to
    ``SingularityRunner(images=...)``); a tag that is itself the path of an
    existing file (e.g. an ``image_overrides`` target) is hashed directly.
    Images pulled on the fly from ``docker://`` references have no local
    file to hash and raise :class:`ImageNotFoundError`.
    """

    runtime = "apptainer/singularity"

    def __init__(
        self,
        images: ImageMap | None = None,
        ttl: float = DEFAULT_TTL,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        """Create a resolver.

        Args:
            images: Mapping of image tag to SIF path (kept by reference, so a
                runner's live ``images`` dict can be passed), or the path of a
                YAML file holding that mapping (re-read on each lookup). None
                reads the file named by ``STYXCACHE_SINGULARITY_IMAGES`` if set.
            ttl: Seconds a resolved digest is reused; 0 re-checks each time.
            clock: Monotonic time source (injectable for tests).
        """
        super().__init__(ttl, clock=clock)
        if images is not None and not isinstance(images, (Mapping, str, os.PathLike)):
            kind = type(images).__name__
            raise TypeError(f"images must be a mapping or a YAML file path, got {kind}")
        self.images = images

    _process_state = (*CachedDigestResolver._process_state, "_hash_lock", "_hashes")

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._hash_lock = threading.Lock()
        self._hashes: dict[Path, tuple[_Signature, str]] = {}

    def __repr__(self) -> str:
        # A live mapping may be large; name only where the images come from.
        source = "mapping" if isinstance(self.images, Mapping) else repr(self.images)
        return f"SingularityDigestResolver(images={source}, ttl={self.ttl!r})"

    def _mapping(self) -> Mapping[str, str | os.PathLike[str]]:
        source: ImageMap | None = self.images
        if source is None:
            env = os.environ.get(IMAGES_ENV)
            if not env:
                return {}
            source = env
        if isinstance(source, Mapping):
            return source
        return _load_yaml_mapping(Path(source))

    def _locate(self, tag: str) -> Path:
        mapping = self._mapping()
        if tag in mapping:
            path = Path(mapping[tag]).expanduser()
            if not path.is_file():
                raise ImageNotFoundError(
                    tag,
                    self.runtime,
                    f"apptainer pull {path} docker://{tag}",
                    detail=f"mapped to {path}, which is not a file",
                )
            return path
        candidate = Path(tag).expanduser()
        if candidate.is_file():
            return candidate
        sif_name = tag.rsplit("/", 1)[-1].replace(":", "_") + ".sif"
        raise ImageNotFoundError(
            tag,
            self.runtime,
            f"apptainer pull {sif_name} docker://{tag}",
            detail="no SIF file is mapped to this tag; pass images={tag: sif_path}",
        )

    def _resolve(self, tag: str) -> str:
        path = self._locate(tag).resolve()
        try:
            st = path.stat()
        except OSError as exc:
            raise DigestResolutionError(
                f"cannot stat SIF {path} for {tag!r}: {exc}"
            ) from exc
        signature: _Signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._hash_lock:
            known = self._hashes.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        try:
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            hasher.update_mmap(path)
        except OSError as exc:
            raise DigestResolutionError(
                f"cannot read SIF {path} for {tag!r}: {exc}"
            ) from exc
        digest = f"blake3:{hasher.hexdigest()}"
        with self._hash_lock:
            self._hashes[path] = (signature, digest)
        return digest


def _load_yaml_mapping(path: Path) -> Mapping[str, str | os.PathLike[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DigestResolutionError(f"cannot read SIF image map {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DigestResolutionError(
            f"SIF image map {path} is not valid YAML: {exc}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise DigestResolutionError(
            f"SIF image map {path} must be a YAML mapping of image tag to SIF path"
        )
    # Relative SIF paths are taken relative to the map file, not the cwd.
    return {k: path.parent / Path(v).expanduser() for k, v in data.items()}
