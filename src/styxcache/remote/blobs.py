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

from styxcache.remote.envelope import Envelope, blob_path
from styxcache.remote.errors import DamagedEntryError, ObjectMissingError, client_call

__all__ = [
    "PART_CONCURRENCY",
    "PART_SIZE",
    "download_file",
    "fill_entry",
    "upload_file",
]

PART_SIZE = 8 * 1024 * 1024
"""Bytes per multipart part and per ranged download request."""

PART_CONCURRENCY = 4
"""Parts of one file in flight at once. An upload buffers about
`(PART_CONCURRENCY + 1) * PART_SIZE` bytes; a download streams each part in
chunks of `_STREAM_CHUNK`, so it holds far less."""

_STREAM_CHUNK = 1024 * 1024


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
        data = source.read_bytes()
        with client_call(f"upload {path}"):
            obstore.put(store, path, data, use_multipart=False)
        return
    # obstore reads the file itself, part by part; a local read error
    # surfaces as a client error, which is the safe side (not uploaded).
    with client_call(f"upload {path}"):
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
        with client_call(f"download {path}"):
            result = obstore.get(store, path)
            actual = int(result.meta["size"])
            data = bytes(result.bytes()) if actual == size else b""
        if actual != size:
            return actual, ""
        fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return len(data), str(blake3(data).hexdigest())
    with client_call(f"download {path}"):
        actual = int(obstore.head(store, path)["size"])
    if actual != size:
        return actual, ""
    fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        written = _ranged(store, path, fd, size, parts)
    finally:
        os.close(fd)
    return written, _hash_file(target)


def _hash_file(path: Path) -> str:
    """blake3 of a finished download, read in parts.

    Parts arrive out of order and blake3 wants its input in order, so the
    file is read once more (from the page cache). Plain reads, not a memory
    map: mapped pages would count against the process like a buffer.
    """
    hasher = blake3(max_threads=blake3.AUTO)
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(_STREAM_CHUNK):
            hasher.update(chunk)
    return str(hasher.hexdigest())


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
        # Each range is itself streamed: a part is never buffered whole.
        end = min(start + PART_SIZE, size)
        with client_call(f"download {path}"):
            result = obstore.get(store, path, options={"range": (start, end)})
            chunks = iter(result.stream(min_chunk_size=_STREAM_CHUNK))
        offset = start
        while True:
            with client_call(f"download {path}"):
                chunk = next(chunks, None)
            if chunk is None:
                break
            view = memoryview(chunk)
            os.pwrite(fd, view, offset)
            offset += len(view)
        with lock:
            total[0] += offset - start

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


def fill_entry(
    store: Any,
    staging: Path,
    envelope: Envelope,
    files: concurrent.futures.ThreadPoolExecutor,
    parts: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """Create a remote entry's tree in `staging`, checking every file.

    Args:
        store: The obstore store.
        staging: An empty staging folder of the local cache.
        envelope: The entry's envelope (already checked).
        files: The pool files are downloaded in.
        parts: The pool their parts are downloaded in (not `files`: a file
            task waits for its parts).

    Raises:
        DamagedEntryError: If a blob is missing, of another size or content,
            or the entry's paths conflict.
        RemoteError: If the store fails.
    """
    try:
        for folder in envelope.dirs:
            (staging / folder).mkdir(parents=True, exist_ok=True)
        for ref in envelope.files:
            (staging / ref.path).parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise DamagedEntryError(f"conflicting paths in the entry: {exc}") from None
    jobs = {
        files.submit(
            download_file,
            store,
            blob_path(ref.digest),
            staging / ref.path,
            ref.size,
            parts,
        ): ref
        for ref in envelope.files
    }
    concurrent.futures.wait(jobs)
    for job, ref in jobs.items():
        try:
            size, digest = job.result()
        except ObjectMissingError:
            raise DamagedEntryError(f"{ref.path}: its blob is missing") from None
        if size != ref.size:
            raise DamagedEntryError(
                f"{ref.path}: {size} bytes stored, the manifest says {ref.size}"
            )
        if digest != ref.digest:
            raise DamagedEntryError(f"{ref.path}: content differs from its digest")
    # Links last: no file is ever written through a link the entry made.
    for record in envelope.links:
        target = staging / record.path
        assert record.link is not None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(record.link, target)
        except (FileExistsError, NotADirectoryError) as exc:
            raise DamagedEntryError(f"conflicting paths in the entry: {exc}") from None
