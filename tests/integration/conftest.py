"""Fixtures for tests that talk to a real Docker daemon.

Set up a daemon and the busybox test image with ``.ci/docker-test-image.sh``
(CI does this in ``.ci/run``); without them these tests skip locally and fail
in CI.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _load_root_conftest() -> Any:
    # tests/ has no __init__.py, so pytest imports both conftest files under
    # the one module name "conftest", and whichever was imported last is what
    # a test's `from conftest import ...` sees. Re-exporting the shared helpers
    # here keeps those imports working whichever file won.
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_styxcache_tests_root", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_root = _load_root_conftest()
IN_CI: bool = _root.IN_CI
require: Callable[[bool, str], None] = _root.require
run_tool = _root.run_tool

DEFAULT_TEST_IMAGE = "styxcache-test/busybox:1"
SETUP_HINT = "run .ci/docker-test-image.sh (needs docker.io and busybox-static)"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client connected to a live daemon."""
    try:
        import docker
    except ImportError:
        require(False, "docker SDK not installed (pip install 'styxcache[docker]')")
        raise  # unreachable: require() skipped or failed
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # any failure here means "no usable daemon"
        require(False, f"no Docker daemon answers ({exc}); {SETUP_HINT}")
        raise
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: Any) -> str:
    """Tag of the busybox test image (``STYXCACHE_TEST_IMAGE``)."""
    import docker

    tag = os.environ.get("STYXCACHE_TEST_IMAGE", DEFAULT_TEST_IMAGE)
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        require(False, f"test image {tag} not present; {SETUP_HINT}")
    return tag


ImageFactory = Callable[[str, str], str]


@pytest.fixture
def build_variant(docker_client: Any, test_image: str) -> Iterator[ImageFactory]:
    """Build images on top of the test image; removes them afterwards.

    ``build_variant(tag, text)`` creates an image whose ``/variant`` file holds
    ``text``, tags it ``tag`` (moving the tag if it exists) and returns the
    new image ID. COPY needs no container run, so this is fast.
    """
    created: set[str] = set()

    def build(tag: str, text: str) -> str:
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, data in (
                ("Dockerfile", f"FROM {test_image}\nCOPY variant /variant\n"),
                ("variant", text),
            ):
                raw = data.encode()
                info = tarfile.TarInfo(name)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        context.seek(0)
        image, _ = docker_client.images.build(
            fileobj=context, custom_context=True, tag=tag, rm=True, pull=False
        )
        created.add(image.id)
        return str(image.id)

    yield build
    # Best effort: a failed removal only leaves a small test image behind.
    for image_id in created:
        with contextlib.suppress(Exception):
            docker_client.images.remove(image_id, force=True)


@pytest.fixture
def unique_tag() -> str:
    """A repository:tag no other test (or earlier run) uses."""
    return f"styxcache-test/variant-{uuid.uuid4().hex[:12]}:1"
