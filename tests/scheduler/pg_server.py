"""A throwaway PostgreSQL server for the run-store tests (and the benchmark).

Debian's `postgresql` package: `initdb` and `pg_ctl` refuse to run as root,
so as root they run as the `postgres` system user (created if missing).
Data, socket and log live in one temporary folder; the server listens on
127.0.0.1 only, on a free port, with password authentication over TCP.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

_BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "styx"


def find_bin() -> Path | None:
    """Return the folder holding initdb/pg_ctl, or None if PostgreSQL is absent."""
    found = shutil.which("initdb") or shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    folders = sorted(glob.glob(_BIN_GLOB), key=lambda p: int(p.split("/")[-2]))
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "postgres"], check=True
        )
        return pwd.getpwnam("postgres")


class PgServer:
    """One PostgreSQL cluster in a temporary folder."""

    def __init__(self, bindir: Path) -> None:
        """Create (initdb) the cluster; `start()` starts it.

        Args:
            bindir: Folder with initdb and pg_ctl.
        """
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="styx-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.sockets.mkdir()
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self._user = _unprivileged()
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            for path in (self.root, self.sockets, pwfile):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                # Independent of the host's (possibly ungenerated) LANG.
                "--locale=C",
                "--no-sync",
            ]
        )

    def _run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self._user is not None:
            extra = {"user": self._user.pw_uid, "group": self._user.pw_gid}
        return subprocess.run(
            argv,
            check=True,
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=120,
            **extra,
            **kwargs,
        )

    @property
    def dsn(self) -> str:
        """Connection URL with the password (as a user would write it)."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self, *, durable: bool = False) -> None:
        """Start the server and wait until it accepts connections.

        Args:
            durable: Keep PostgreSQL's default fsync and synchronous commit
                (benchmarks); tests turn them off for speed.
        """
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets}"
            " -c max_connections=200"
        )
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` disconnects every client at once).

        Args:
            mode: pg_ctl shutdown mode.
        """
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ]
        )

    def running(self) -> bool:
        """Tell whether the server is up."""
        probe = subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
            **(
                {"user": self._user.pw_uid, "group": self._user.pw_gid}
                if self._user
                else {}
            ),
        )
        return probe.returncode == 0

    def destroy(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if self.running():
            try:
                self.stop("immediate")
            except subprocess.SubprocessError:
                time.sleep(0)  # best effort: the folder goes anyway
        shutil.rmtree(self.root, ignore_errors=True)
