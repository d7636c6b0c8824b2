"""The shared process and filesystem helpers (`styxcache._system`), on real processes and files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from styxdefs import LocalRunner

from styxcache import CachingRunner
from styxcache import _system as system


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def test_pid_liveness_of_real_processes() -> None:
    assert system.pid_alive(os.getpid())
    assert system.pid_alive(1)  # init: another user's process still counts as alive
    dead = _dead_pid()
    assert not system.pid_alive(dead)
    assert system.local_process_dead(system.HOST, dead)
    me = os.getpid()
    assert not system.local_process_dead(system.HOST, me, system.process_start(me))


def test_a_reused_pid_is_told_by_its_start_time() -> None:
    me = os.getpid()
    start = system.process_start(me)
    assert start.isdigit()
    assert system.local_process_dead(system.HOST, me, str(int(start) + 1))


def test_another_hosts_process_is_never_declared_dead() -> None:
    assert not system.local_process_dead(system.HOST + "-elsewhere", _dead_pid())


def test_owner_labels_round_trip() -> None:
    label = system.owner_label()
    assert system.parse_owner_label(label) == (system.HOST, os.getpid())
    assert label != system.owner_label()  # a fresh token each time
    assert system.owner_label(token=False) == f"{system.HOST}:{os.getpid()}"
    assert system.parse_owner_label("no-pid-here") is None


def test_writer_file_names_tell_whether_their_writer_exited() -> None:
    mine = system.writer_file_name(".jsonl")
    assert mine.endswith(".jsonl")
    assert not system.writer_finished(mine)  # this process
    dead = f"{system.HOST}-{_dead_pid()}-0123abcd.tsv"
    assert system.writer_finished(dead)
    assert not system.writer_finished(f"other.host-{_dead_pid()}-0123abcd.tsv")
    assert not system.writer_finished("snapshot.tsv")


def test_base_chain_walks_real_runners(tmp_path: Path) -> None:
    base = LocalRunner(data_dir=tmp_path / "styx_tmp")
    outer = CachingRunner(CachingRunner(base, tmp_path / "a"), tmp_path / "b")
    chain = list(system.base_chain(outer))
    assert chain[0] is outer
    assert chain[-1] is base
    assert len(chain) == 3
    assert system.innermost(outer) is base
    assert system.innermost(base) is base


def test_innermost_stops_at_the_first_object_with_the_attribute() -> None:
    class Layer:
        def __init__(self, base: object | None = None) -> None:
            if base is not None:
                self.base = base

    core = Layer()
    real = Layer(core)
    real.output_dir = Path("/out")  # type: ignore[attr-defined]
    outer = Layer(Layer(real))
    assert system.innermost(outer, having="output_dir") is real
    assert system.innermost(outer, having="missing") is core


def test_an_object_inventing_attributes_ends_the_walk() -> None:
    class Endless:
        @property
        def base(self) -> Endless:
            return Endless()

    assert len(list(system.base_chain(Endless()))) == system.MAX_WRAPPERS + 1


def test_atomic_write_replaces_whole_and_leaves_nothing_on_failure(
    tmp_path: Path,
) -> None:
    target = tmp_path / "sub" / "state.json"
    system.atomic_write(target, "old", make_parents=True)
    system.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), system.atomic_writer(target) as handle:
        handle.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_atomic_write_never_writes_through_a_planted_temp_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    for i in range(
        20
    ):  # links at plausible temp names change nothing: names are random
        (tmp_path / f".state.{i}.tmp").symlink_to(victim)
    system.atomic_write(tmp_path / "state", "data", fsync=False)
    assert victim.read_text() == "keep"
    assert (tmp_path / "state").read_text() == "data"


def test_link_or_copy_tree_links_files_and_keeps_symlinks(tmp_path: Path) -> None:
    source = tmp_path / "entry"
    (source / "deep").mkdir(parents=True)
    (source / "deep" / "a.txt").write_text("a")
    (source / "link").symlink_to("deep/a.txt")
    target = tmp_path / "copy"
    system.link_or_copy_tree(source, target)
    assert (target / "deep" / "a.txt").read_text() == "a"
    assert os.path.samefile(target / "deep" / "a.txt", source / "deep" / "a.txt")
    assert os.readlink(target / "link") == "deep/a.txt"


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    # Readable by the other members of a shared cache, as a plain open() makes it.
    old = os.umask(0o022)
    try:
        system.atomic_write(tmp_path / "shared", "x")
        with system.atomic_writer(tmp_path / "streamed", "wb") as raw:
            raw.write(b"y")
        system.atomic_write(tmp_path / "private", b"z", permissions=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "streamed").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600
