"""Pytest fixtures around `pg_server.PgServer` (imported by this folder's conftest)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from pg_server import PgServer, find_bin


def _require(condition: bool, reason: str) -> None:
    # The rule of tests/conftest.py's `require` (skip here, fail in CI),
    # without importing a module named "conftest" (ambiguous across folders).
    if condition:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (skips without PostgreSQL)."""
    bindir = find_bin()
    _require(bindir is not None, "PostgreSQL server binaries (apt: postgresql)")
    assert bindir is not None
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_schema() -> str:
    """A fresh PostgreSQL schema name, so each test has its own tables."""
    return f"t_{uuid.uuid4().hex[:12]}"
