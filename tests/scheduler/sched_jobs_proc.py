"""A target for the process-executor test: blocks far longer than the test."""

from __future__ import annotations

import threading
from typing import Any


def hang(ctx: Any) -> None:
    threading.Event().wait(600)
