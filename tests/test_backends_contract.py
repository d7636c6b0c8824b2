"""One contract for every image digest resolver, run against each runtime.

The Docker resolver talks to the real daemon (images imported into it for
the test and removed after), the Podman one to the real `podman` with a
throwaway image store, and the Apptainer/Singularity one hashes real SIF
files (it needs neither `apptainer` nor `singularity`, which the contract
checks by hiding them). The runtime-specific details (message wording,
option passing, YAML maps, reprs) stay in test_backends.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from styxcache.backends import (
    ContainerRuntimeUnavailableError,
    DigestResolutionError,
    DockerDigestResolver,
    ImageNotFoundError,
    PodmanDigestResolver,
    SingularityDigestResolver,
)
from styxcache.policy import ImageDigestResolver


class _Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _rootfs_tar(marker: str) -> bytes:
    """A one-file image rootfs; the marker makes each image's content distinct."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = marker.encode()
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Runtime:
    """One container runtime as the contract sees it."""

    fetch: str
    """How the missing-image message starts its fetch command."""

    def put(self, tag: str, marker: str) -> None:
        """Make `tag` name an image whose content is `marker`."""
        raise NotImplementedError

    def tag(self, name: str) -> str:
        """A tag of this runtime's namespace for the test."""
        raise NotImplementedError

    def resolver(self, ttl: float, clock: Callable[[], float]) -> Any:
        raise NotImplementedError

    def unreachable(self) -> Any:
        """A resolver whose runtime cannot be reached, or None if it needs none."""
        raise NotImplementedError


class DockerRuntime(Runtime):
    fetch = "docker pull"

    def __init__(self, client: Any) -> None:
        self.client = client
        # Unique per test: other test processes may use the same daemon.
        self.repo = f"styxcache-contract-{uuid.uuid4().hex[:10]}"
        self.images: set[str] = set()
        """IDs of the images imported, tagged or left dangling by a move."""

    def tag(self, name: str) -> str:
        return f"{self.repo}/{name}:1"

    def put(self, tag: str, marker: str) -> None:
        repository, _, version = tag.rpartition(":")
        self.client.api.import_image_from_data(
            _rootfs_tar(marker), repository=repository, tag=version
        )
        self.images.add(self.client.images.get(tag).id)

    def resolver(self, ttl: float, clock: Callable[[], float]) -> Any:
        return DockerDigestResolver(ttl, clock=clock)

    def unreachable(self) -> Any:
        return DockerDigestResolver(0, base_url="unix:///nonexistent/docker.sock")

    def close(self) -> None:
        for image_id in self.images:
            with contextlib.suppress(Exception):
                self.client.images.remove(image_id, force=True)


class PodmanRuntime(Runtime):
    fetch = "podman pull"

    def __init__(self, root: Path) -> None:
        # Podman refuses a runroot longer than 50 characters.
        self.runroot = tempfile.mkdtemp(prefix="styxcache-podman-", dir="/tmp")
        self.args = [
            "--root",
            str(root),
            "--runroot",
            self.runroot,
            "--storage-driver",
            "vfs",  # plain directories: nothing to unmount afterwards
        ]

    def tag(self, name: str) -> str:
        return f"localhost/styxcache-contract/{name}:1"

    def put(self, tag: str, marker: str) -> None:
        subprocess.run(
            ["podman", *self.args, "import", "-", tag],
            input=_rootfs_tar(marker),
            capture_output=True,
            check=True,
        )

    def resolver(self, ttl: float, clock: Callable[[], float]) -> Any:
        return PodmanDigestResolver(ttl, podman_args=self.args, clock=clock)

    def unreachable(self) -> Any:
        return PodmanDigestResolver(0, executable="podman-not-installed-here")

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)


class SifRuntime(Runtime):
    fetch = "apptainer pull"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.images: dict[str, str] = {}

    def tag(self, name: str) -> str:
        return f"lab/{name}:1"

    def put(self, tag: str, marker: str) -> None:
        # One file per tag, replaced whole as `apptainer pull --force` does.
        path = self.folder / (tag.replace("/", "_").replace(":", "_") + ".sif")
        fresh = path.with_suffix(".new")
        fresh.write_bytes(f"SIF {marker} ".encode() * 100)
        fresh.replace(path)
        self.images[tag] = str(path)

    def resolver(self, ttl: float, clock: Callable[[], float]) -> Any:
        # The live mapping, as a runner's `images` dict is passed.
        return SingularityDigestResolver(self.images, ttl, clock=clock)

    def unreachable(self) -> Any:
        return None

    def close(self) -> None:
        pass


@pytest.fixture(params=["docker", "podman", "apptainer"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    made: Any
    if request.param == "docker":
        try:
            import docker
        except ImportError:
            docker = None
        require(docker is not None, "docker SDK not installed")
        client = None
        try:
            client = docker.from_env(timeout=60)
            client.ping()
        except Exception:
            client = None
        require(client is not None, "needs a running docker daemon")
        made = DockerRuntime(client)
    elif request.param == "podman":
        require(shutil.which("podman") is not None, "podman is not installed")
        made = PodmanRuntime(tmp_path / "podman-root")
    else:
        made = SifRuntime(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_is_an_image_digest_resolver(runtime: Runtime) -> None:
    assert isinstance(runtime.resolver(0, _Clock()), ImageDigestResolver)


def test_a_present_image_has_one_stable_identity(runtime: Runtime) -> None:
    tag = runtime.tag("stable")
    runtime.put(tag, "one")
    first = runtime.resolver(0, _Clock())(tag)
    assert isinstance(first, str) and first
    assert runtime.resolver(60, _Clock())(tag) == first
    assert runtime.resolver(0, _Clock())(tag) == first


def test_other_content_has_another_identity(runtime: Runtime) -> None:
    runtime.put(runtime.tag("a"), "content-a")
    runtime.put(runtime.tag("b"), "content-b")
    resolve = runtime.resolver(0, _Clock())
    assert resolve(runtime.tag("a")) != resolve(runtime.tag("b"))


def test_a_moved_tag_is_seen_once_the_ttl_is_over(runtime: Runtime) -> None:
    clock = _Clock()
    tag = runtime.tag("moving")
    runtime.put(tag, "before")
    memo = runtime.resolver(60.0, clock)
    first = memo(tag)
    runtime.put(tag, "after")
    second = runtime.resolver(0, _Clock())(tag)
    assert second != first
    assert memo(tag) == first  # still within the ttl
    clock.now += 60.0
    assert memo(tag) == second


def test_a_missing_image_names_the_tag_and_how_to_fetch_it(runtime: Runtime) -> None:
    tag = runtime.tag("absent")
    with pytest.raises(ImageNotFoundError) as info:
        runtime.resolver(0, _Clock())(tag)
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, DigestResolutionError)
    assert info.value.tag == tag
    assert info.value.fetch_command.startswith(runtime.fetch)
    assert info.value.fetch_command in str(info.value)


def test_failures_are_not_remembered(runtime: Runtime) -> None:
    tag = runtime.tag("late")
    resolve = runtime.resolver(60.0, _Clock())
    with pytest.raises(ImageNotFoundError):
        resolve(tag)
    runtime.put(tag, "arrived")
    assert resolve(tag) == runtime.resolver(0, _Clock())(tag)


def test_a_pickled_resolver_resolves_the_same(runtime: Runtime) -> None:
    # Policies travel to process-pool and Dask workers with their resolver.
    tag = runtime.tag("pickled")
    runtime.put(tag, "pickled")
    resolver = runtime.resolver(60.0, _Clock())
    before = resolver(tag)
    assert pickle.loads(pickle.dumps(resolver))(tag) == before


def test_without_its_runtime_the_error_says_so(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resolver = runtime.unreachable()
    if resolver is not None:
        with pytest.raises(ContainerRuntimeUnavailableError):
            resolver(runtime.tag("any"))
        return
    # SIF hashing needs no runtime: hide apptainer and singularity.
    tag = runtime.tag("no-binary")
    runtime.put(tag, "no-binary")
    expected = runtime.resolver(0, _Clock())(tag)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("apptainer") is None and shutil.which("singularity") is None
    assert runtime.resolver(0, _Clock())(tag) == expected
    assert os.environ["PATH"] == str(empty)
