"""Moving one file to or from the object store, in bounded parts.

Uploads stream the file in parts (multipart above one part's size); downloads
fetch byte ranges of at most one part, a few at a time, and write each to its
place in the file as it arrives. A large output is therefore never held in
memory whole, and no single request runs longer than one part takes.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path
from typing import Any

from blake3 import blake3

__all__ = [
    "PART_CONCURRENCY",
    "PART_SIZE",
    "download_file",
    "upload_file",
]

PART_SIZE = 8 * 1024 * 1024
"""Bytes per multipart part and per ranged download request."""

PART_CONCURRENCY = 4
"""Parts of one file in flight at once (memory is about this times PART_SIZE)."""


def upload_file(store: Any, path: str, source: Path, size: int) -> None:
    """Upload a file's content to `path`, multipart when it is larger than a part.

    Args:
        store: The obstore store.
        path: The object path.
        source: The local file.
        size: Its size.
    """
    import obstore

    if size <= PART_SIZE:
        obstore.put(store, path, source.read_bytes(), use_multipart=False)
        return
    obstore.put(
        store,
        path,
        source,
        use_multipart=True,
        chunk_size=PART_SIZE,
        max_concurrency=PART_CONCURRENCY,
    )


def download_file(
    store: Any,
    path: str,
    target: Path,
    size: int,
    parts: concurrent.futures.Executor | None = None,
) -> tuple[int, str]:
    """Download an object into a new file, hashing it on the way.

    An object whose size is not the expected one is not downloaded at all
    (a tampered blob could be of any size): its size is returned with an
    empty digest.

    Args:
        store: The obstore store.
        path: The object path.
        target: The file to create (must not exist).
        size: The expected size.
        parts: Runs the ranged requests of a large file concurrently; it
            must not be the executor running this call.

    Returns:
        The object's size and the blake3 hex digest of the bytes written.

    Raises:
        FileNotFoundError: If the object does not exist.
    """
    import obstore

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    if size <= PART_SIZE:
        result = obstore.get(store, path)
        actual = int(result.meta["size"])
        if actual != size:
            return actual, ""
        data = bytes(result.bytes())
        fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return len(data), str(blake3(data).hexdigest())
    actual = int(obstore.head(store, path)["size"])
    if actual != size:
        return actual, ""
    fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        written = _ranged(store, path, fd, size, parts)
    finally:
        os.close(fd)
    # One read of the finished file, from the page cache: parts arrive out
    # of order, and blake3 wants its input in order.
    hasher = blake3(max_threads=blake3.AUTO)
    hasher.update_mmap(os.fspath(target))
    return written, str(hasher.hexdigest())


def _ranged(
    store: Any,
    path: str,
    fd: int,
    size: int,
    parts: concurrent.futures.Executor | None,
) -> int:
    import obstore

    lock = threading.Lock()
    total = [0]

    def fetch(start: int) -> None:
        data = obstore.get_range(
            store, path, start=start, length=min(PART_SIZE, size - start)
        )
        view = memoryview(data)
        os.pwrite(fd, view, start)
        with lock:
            total[0] += len(view)

    starts = range(0, size, PART_SIZE)
    if parts is None:
        for start in starts:
            fetch(start)
        return total[0]
    window: list[concurrent.futures.Future[None]] = []
    try:
        for start in starts:
            window.append(parts.submit(fetch, start))
            if len(window) >= PART_CONCURRENCY:
                window.pop(0).result()
        for future in window:
            future.result()
    finally:
        for future in window:
            future.cancel()
        concurrent.futures.wait(window)
    return total[0]
