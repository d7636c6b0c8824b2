"""Helpers of the distributed tests: ports, polling, child processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
NATS_KEY = "test-signing-key-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll a real process's state until true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class Processes:
    """Started child processes, stopped (and reaped) at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed by the child's exit
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        # One at a time, newest first: workers go before the servers they
        # talk to, as they would in an orderly shutdown.
        for process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def nats_binary() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    candidate = Path(sys.executable).parent / "nats-server"
    return str(candidate) if candidate.exists() else None


WORKER = "from styxcache.cli import main; main()"

# The entries the NATS tests' workers may run (a worker runs nothing else).
JOBS = {
    "fan": "run_item",
    "twin-a": "run_item",
    "twin-b": "run_item",
    "fragile": "hold_once",
    "first": "run_item",
    "second": "run_item",
}


def allow_args(cache_dir: Path, key_file: Path | None) -> list[str]:
    """Worker options: the JOBS allowlist, its cache and the signing key."""
    args = ["--cache-dir", str(cache_dir)]
    args += [f"--allow={name}=dist_jobs:{target}" for name, target in JOBS.items()]
    if key_file is not None:
        args += ["--key-file", str(key_file)]
    return args


def start_nats_worker(
    processes: Processes, url: str, name: str, *extra: str
) -> subprocess.Popen[bytes]:
    process = processes.start(
        name,
        [
            sys.executable,
            "-c",
            WORKER,
            "worker",
            "--nats",
            url,
            "--path",
            str(HERE),
            "--heartbeat",
            "0.2",
            "--log-level",
            "DEBUG",
            *extra,
        ],
    )
    wait_for(
        lambda: "listening on" in processes.log(name) or process.poll() is not None,
        f"{name} to subscribe",
    )
    assert process.poll() is None, processes.log(name)
    return process
