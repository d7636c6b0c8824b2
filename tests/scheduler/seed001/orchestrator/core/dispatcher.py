"""A minimal dispatcher with seed 001's shape: it is handed jobs and runs them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Dispatcher:
    """Runs each dispatched job in the calling thread and remembers it."""

    def __init__(self) -> None:
        self.dispatched: list[Callable[[], Any]] = []
        self.threads: list[int] = []

    def dispatch(self, job: Callable[[], Any]) -> Any:
        self.dispatched.append(job)
        self.threads.append(threading.get_ident())
        return job()
