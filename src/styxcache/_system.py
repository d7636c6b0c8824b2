"""Process and filesystem helpers shared by the whole package (internal).

One home for the small operating-system facts several modules need: who this
process is (host name, owner labels, writer file names), whether a process
still runs, walking a chain of wrapping runners or executions (`.base`),
writing a file atomically, and copying a tree by hard links where possible.
It imports nothing from styxcache, so any module may use it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, overload

__all__ = [
    "HOST",
    "MAX_WRAPPERS",
    "atomic_write",
    "atomic_writer",
    "base_chain",
    "can_fork",
    "innermost",
    "link_or_copy_tree",
    "local_process_dead",
    "owner_label",
    "parse_owner_label",
    "pid_alive",
    "process_start",
    "writer_file_name",
    "writer_finished",
]

HOST = socket.gethostname()
"""This machine's host name, read once: it names lease owners, run owners and
the per-process files (events, catalog) so their writers can be judged later."""

MAX_WRAPPERS = 64
"""Most `.base` links followed. Real chains are two or three deep; the bound
only stops objects that invent attributes on access (mocks, proxies) from
making an endless chain."""


def pid_alive(pid: int) -> bool:
    """Return True when a process with this pid exists on this host.

    A process of another user counts as alive (signalling it is refused, but it
    exists). A reused pid also counts: see `process_start` to tell.

    Args:
        pid: The process id.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def can_fork() -> bool:
    """Return True when this process may fork workers safely.

    A forked child gets only the forking thread: a lock another thread held
    (logging's, rich's, an import's) would stay held in the child. A daemonic
    process may not have children.
    """
    return (
        hasattr(os, "fork")
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not multiprocessing.current_process().daemon
    )


def process_start(pid: int) -> str:
    """Return a process's start time in clock ticks since boot ("" if unknown).

    Linux only (`/proc/<pid>/stat`); two processes with the same pid have
    different start times, which tells a reused pid from the original.

    Args:
        pid: The process id.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # The command name (field 2) may hold spaces and parentheses: the
            # fields after its last ')' are fixed.
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def local_process_dead(host: str, pid: int, start: str = "") -> bool:
    """Return True when a process of this host no longer runs.

    A process on another host is never declared dead: only that host can tell.

    Args:
        host: The host the process ran on.
        pid: Its process id.
        start: Its `process_start` when it was recorded ("" if unknown); a
            live pid with another start time is a reused pid, so the
            recorded process is dead.
    """
    if host != HOST:
        return False
    if not pid_alive(pid):
        return True
    now = process_start(pid) if start else ""
    return bool(start and now and now != start)


def owner_label(*, token: bool = True) -> str:
    """Return `host:pid[:token]` naming the calling process (and one use of it).

    Args:
        token: Append 8 random hex digits, so two owners in one process (or a
            reused pid) never share a label.
    """
    label = f"{HOST}:{os.getpid()}"
    return f"{label}:{uuid.uuid4().hex[:8]}" if token else label


def parse_owner_label(label: str) -> tuple[str, int] | None:
    """Return the host and pid of an `owner_label`, or None if it is not one.

    Args:
        label: A label made by `owner_label`.
    """
    host, _, rest = label.partition(":")
    pid_text = rest.partition(":")[0]
    if not host or not pid_text.isdigit():
        return None
    return host, int(pid_text)


def writer_file_name(suffix: str) -> str:
    """Return a fresh file name `<host>-<pid>-<random><suffix>` for this process.

    `writer_finished` reads the writer back from the name.

    Args:
        suffix: The name's ending, e.g. ".jsonl".
    """
    return f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def writer_finished(name: str) -> bool:
    """Tell from a `writer_file_name` that its writer has exited.

    False when the writer is on another host (only that host can tell), when
    it is this process, or when its pid runs (alive, or reused: keep the file).

    Args:
        name: The file name (whatever follows the random part is ignored).
    """
    parts = name.rsplit("-", 2)  # a host name may itself hold '-' and '.'
    if len(parts) != 3 or parts[0] != HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    return pid != os.getpid() and not pid_alive(pid)


def base_chain(obj: Any) -> Iterator[Any]:
    """Yield `obj`, then what it wraps (`obj.base`), and so on inward.

    Middleware runners and executions (CachingRunner, styxgraph's GraphRunner)
    wrap another one as `.base`; the last item yielded has no `.base` (or
    ends a chain cut at `MAX_WRAPPERS` links).

    Args:
        obj: The outermost runner or execution.
    """
    for _ in range(MAX_WRAPPERS):
        yield obj
        if not hasattr(obj, "base"):
            return
        obj = obj.base
    yield obj


def innermost(obj: Any, having: str | None = None) -> Any:
    """Return the innermost object of `obj`'s `.base` chain.

    Args:
        obj: The outermost runner or execution.
        having: Stop at the first object with this attribute instead (the
            innermost one when none has it).
    """
    found = obj
    for found in base_chain(obj):  # the last item is the answer when none has it
        if having is not None and hasattr(found, having):
            break
    return found


@overload
def atomic_writer(
    path: Path, mode: Literal["w"] = ..., *, fsync: bool = ..., permissions: int = ...
) -> contextlib.AbstractContextManager[IO[str]]: ...
@overload
def atomic_writer(
    path: Path, mode: Literal["wb"], *, fsync: bool = ..., permissions: int = ...
) -> contextlib.AbstractContextManager[IO[bytes]]: ...
def atomic_writer(
    path: Path,
    mode: Literal["w", "wb"] = "w",
    *,
    fsync: bool = True,
    permissions: int = 0o666,
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Open a file that appears at `path` whole, or not at all.

    The content goes to a hidden temporary file `.<name>.<random>.tmp` in the
    same folder (created with `O_EXCL`: never through a planted link), renamed
    over `path` when the block ends without an exception; on an exception the
    temporary file is removed and `path` is untouched. Readers see the old or
    the new content, never a part.

    Args:
        path: The destination; its folder must exist.
        mode: "w" for text (UTF-8), "wb" for bytes.
        fsync: Flush the content to disk before the rename, so a crash cannot
            leave an empty file under the new name. Skip it only for files
            that are hints (rebuilt when lost).
        permissions: The file's mode before the umask, as `open()` gives
            (0o666: the other members of a shared cache can read it); 0o600
            keeps it private.

    Returns:
        A context manager giving the open file.
    """
    return _atomic_writer(path, mode, fsync, permissions)


_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


@contextlib.contextmanager
def _atomic_writer(
    path: Path, mode: str, fsync: bool, permissions: int
) -> Iterator[IO[Any]]:
    # Not tempfile.mkstemp: it always creates 0600, and os.replace keeps that.
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temp, _CREATE_NEW, permissions)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def atomic_write(
    path: Path,
    data: bytes | str,
    *,
    fsync: bool = True,
    make_parents: bool = False,
    permissions: int = 0o666,
) -> None:
    """Write a whole file atomically (see `atomic_writer`).

    Args:
        path: The destination.
        data: The content; text is written as UTF-8.
        fsync: Flush to disk before the rename (see `atomic_writer`).
        make_parents: Create the destination's folder first.
        permissions: The file's mode before the umask (see `atomic_writer`).
    """
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        with atomic_writer(path, "w", fsync=fsync, permissions=permissions) as text:
            text.write(data)
    else:
        with atomic_writer(path, "wb", fsync=fsync, permissions=permissions) as raw:
            raw.write(data)


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links refused: a real copy
        shutil.copy2(source, target)
    return target


def link_or_copy_tree(source: Path, target: Path) -> None:
    """Copy a folder tree, hard-linking its files where the filesystem allows.

    Symbolic links are copied as links. The caller removes a partial `target`
    if this raises.

    Args:
        source: The folder to copy.
        target: A folder that does not exist yet.
    """
    shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
