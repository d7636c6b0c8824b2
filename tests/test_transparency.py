"""Transparency: a wrapped runner behaves as its base runner, only faster on repeats.

Each test compares a real `LocalRunner` call through `CachingRunner` with the
same call through the bare `LocalRunner` (docs/design/transparency.md), with
real `sh` processes standing in for the tools.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from styxdefs import Execution, LocalRunner, Metadata, Runner

import styxcache
from styxcache import CacheEvent, CachePolicy, CacheStore, CachingRunner
from styxcache.cli import main
from styxcache.manifest import Manifest

BET = Metadata(id="bet", name="bet", package="fsl")
BET_SUFFIXES = (
    "",
    "_mask",
    "_overlay",
    "_skull",
    "_mesh",
    "_skull_mask",
    "_inskull_mask",
    "_inskull_mesh",
    "_inskull_mesh_off",
    "_outskin_mask",
    "_outskin_mesh",
    "_outskin_mesh_off",
    "_outskull_mask",
    "_outskull_mesh",
    "_outskull_mesh_off",
    "_vtk",
)
STATS = Metadata(id="fslstats", name="fslstats", package="fsl")
SENTENCE = Metadata(
    id="wb_command_volume_math",
    name="Evaluate expression on 3D / 4D volume files",
    package="workbench",
)


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def make(tmp_path: Path, **policy: Any) -> tuple[CachingRunner, list[CacheEvent]]:
    events: list[CacheEvent] = []
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "styx_tmp"),
        tmp_path / "cache",
        policy=CachePolicy(**policy),
        on_event=events.append,
    )
    return runner, events


def call(
    runner: Runner,
    metadata: Metadata,
    params: dict[str, Any],
    outputs: list[str],
    script: str,
    *,
    inputs: tuple[Path, ...] = (),
    stdout: list[str] | None = None,
) -> list[Path]:
    """A NiWrap-shaped call: output_file(".") first, then the declared names.

    `script` runs under `sh -c` with the inputs' local paths as $1, $2...
    """
    execution = runner.start_execution(metadata)
    execution.params(params)
    local = [execution.input_file(path) for path in inputs]
    paths = [
        Path(execution.output_file(".")),
        *map(Path, map(execution.output_file, outputs)),
    ]
    execution.run(
        ["sh", "-c", script, "sh", *local],
        handle_stdout=stdout.append if stdout is not None else None,
    )
    return paths


def bet(runner: Runner, source: Path, counter: Path) -> list[Path]:
    """FSL bet's shape: 16 declared outputs, one written without flags."""
    names = [f"brain{suffix}.nii.gz" for suffix in BET_SUFFIXES]
    return call(
        runner,
        BET,
        {"infile": str(source), "maskfile": "brain"},
        names,
        f'cp "$1" brain.nii.gz; echo run >> "{counter}"',
        inputs=(source,),
    )


# (1) when a run is committed ---------------------------------------------------------


def test_bet_writing_one_of_sixteen_outputs_is_cached(tmp_path: Path) -> None:
    source = tmp_path / "T1.nii.gz"
    source.write_bytes(b"head")
    counter = tmp_path / "runs"
    runner, events = make(tmp_path)
    first = bet(runner, source, counter)
    second = bet(runner, source, counter)
    assert runs(counter) == 1
    assert [e.kind for e in events] == ["miss", "hit"]
    assert first == second
    # The hit serves exactly what the run left: one file, fifteen absent.
    assert [p.exists() for p in second[1:]] == [True] + [False] * 15
    assert second[1].read_bytes() == b"head"
    entry = second[0]
    manifest = Manifest.read(entry / CacheStore.MANIFEST)
    assert [o.path for o in manifest.outputs] == ["brain.nii.gz"]
    assert sorted(manifest.absent) == sorted(p.name for p in second[2:])
    # The bare runner leaves the same set of files.
    bare = bet(LocalRunner(data_dir=tmp_path / "bare"), source, counter)
    assert [p.exists() for p in bare[1:]] == [p.exists() for p in second[1:]]
    # A file that appears where bet wrote none (a later tool writing beside
    # its input) is not served as bet's.
    second[2].write_text("someone else's mask")
    third = bet(runner, source, counter)
    assert not third[2].exists()
    assert events[-1].kind == "miss"
    assert "was not written by the tool" in events[-1].reason


def test_show_lists_absent_outputs(tmp_path: Path) -> None:
    source = tmp_path / "T1.nii.gz"
    source.write_bytes(b"head")
    runner, _ = make(tmp_path)
    entry = bet(runner, source, tmp_path / "runs")[0]
    cache = str(tmp_path / "cache")
    shown = CliRunner().invoke(main, ["show", entry.name, "--cache-dir", cache])
    assert shown.exit_code == 0, shown.output
    assert "Declared, not written" in shown.stdout
    assert "brain_mask.nii.gz" in shown.stdout
    as_json = CliRunner().invoke(
        main, ["show", entry.name, "--json", "--cache-dir", cache]
    )
    absent = json.loads(as_json.stdout)["absent"]
    assert "brain_outskull_mesh_off.nii.gz" in absent
    assert len(absent) == 15
    explained = CliRunner().invoke(main, ["explain", "--cache-dir", cache])
    assert explained.exit_code == 0, explained.output
    assert "declared, not written by the tool" in explained.stdout
    assert "brain_skull.nii.gz" in explained.stdout
    as_json = CliRunner().invoke(main, ["explain", "--json", "--cache-dir", cache])
    [miss] = json.loads(as_json.stdout)["misses"]
    assert len(miss["absent"]) == 15


def test_declared_outputs_and_nothing_written_is_not_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # FSL tools can exit 0 after an error: an empty result is never served.
    source = tmp_path / "T1.nii.gz"
    source.write_bytes(b"head")
    counter = tmp_path / "runs"
    runner, events = make(tmp_path)
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="styxcache"):
            call(
                runner,
                BET,
                {"infile": str(source)},
                ["brain.nii.gz", "brain_mask.nii.gz"],
                f'echo run >> "{counter}"',
                inputs=(source,),
            )
    assert runs(counter) == 2
    assert [e.kind for e in events] == ["miss", "miss"]
    # One warning per tool; the second call's note is at INFO.
    warned = [
        r
        for r in caplog.records
        if "wrote none of its declared outputs" in r.getMessage()
    ]
    assert [r.levelno for r in warned] == [logging.WARNING]
    assert "brain_mask.nii.gz" in caplog.text


def test_stdout_only_tool_is_cached(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    runner, _ = make(tmp_path)
    for _ in range(2):
        lines: list[str] = []
        call(
            runner,
            STATS,
            {"x": 1},
            [],
            f'echo 42; echo run >> "{counter}"',
            stdout=lines,
        )
        assert lines == ["42"]
    assert runs(counter) == 1


def test_all_outputs_required_is_an_opt_in(tmp_path: Path) -> None:
    source = tmp_path / "T1.nii.gz"
    source.write_bytes(b"head")
    counter = tmp_path / "runs"
    runner, _ = make(tmp_path, required_outputs="all")
    bet(runner, source, counter)
    bet(runner, source, counter)
    assert runs(counter) == 2
    with pytest.raises(ValueError, match="required_outputs"):
        CachePolicy(required_outputs="some")  # type: ignore[arg-type]


# (2) output names outside the output folder ---------------------------------------------


def fslstats(
    runner: Runner, source: Path, counter: Path, lines: list[str]
) -> list[Path]:
    """NiWrap's fslstats: its output name is built from the absolute input path."""
    return call(
        runner,
        STATS,
        {"input_file": str(source)},
        [f"{source}_stats.txt"],
        f'wc -c < "$1"; echo run >> "{counter}"',
        inputs=(source,),
        stdout=lines,
    )


def test_declared_outside_and_never_written_is_cached(tmp_path: Path) -> None:
    source = tmp_path / "in.nii.gz"
    source.write_bytes(b"12345")
    counter = tmp_path / "runs"
    bare_lines: list[str] = []
    bare = fslstats(
        LocalRunner(data_dir=tmp_path / "bare"), source, counter, bare_lines
    )
    runner, events = make(tmp_path)
    for _ in range(2):
        lines: list[str] = []
        got = fslstats(runner, source, counter, lines)
        assert got[1] == bare[1] == Path(f"{source}_stats.txt")
        assert lines == bare_lines == ["5"]
        assert not got[1].exists()
    assert runs(counter) == 2  # the bare run and one cached run
    assert [e.kind for e in events] == ["miss", "hit"]


def writes_outside(runner: Runner, target: Path, counter: Path) -> list[Path]:
    """A tool told to write `<prefix>.txt`, with an absolute prefix."""
    prefix = str(target.with_suffix(""))
    return call(
        runner,
        STATS,
        {"prefix": prefix},
        [f"{prefix}.txt"],
        f'echo result > "{prefix}.txt"; echo run >> "{counter}"',
    )


def test_written_outside_is_cached_and_never_touched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "result.txt"
    target.parent.mkdir()
    counter = tmp_path / "runs"
    runner, events = make(tmp_path)
    first = writes_outside(runner, target, counter)
    assert first[1] == target
    assert target.read_text() == "result\n"
    mode = target.stat().st_mode
    assert mode & stat.S_IWUSR  # never made read-only
    writes_outside(runner, target, counter)
    assert runs(counter) == 1
    assert target.stat().st_mode == mode
    # Changed or removed outside: the tool runs again and writes it again.
    target.write_text("edited\n")
    writes_outside(runner, target, counter)
    assert target.read_text() == "result\n"
    target.unlink()
    writes_outside(runner, target, counter)
    assert target.read_text() == "result\n"
    assert runs(counter) == 3
    assert [e.kind for e in events] == ["miss", "hit", "refresh", "refresh"]
    entry = first[0]
    assert not any(p.name == "result.txt" for p in entry.rglob("*"))


def test_name_leaving_with_dotdot_runs_uncached_where_the_base_puts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = tmp_path / "runs"
    runner, events = make(tmp_path)
    script = f'echo up > ../up.txt; echo in > in.txt; echo run >> "{counter}"'
    with caplog.at_level(logging.WARNING, logger="styxcache"):
        for _ in range(2):
            root, inside, up = call(
                runner, STATS, {"n": 1}, ["in.txt", "../up.txt"], script
            )
            assert up.read_text() == "up\n"
            assert up.resolve() == (tmp_path / "styx_tmp" / "up.txt")
            assert inside.read_text() == "in\n"
            assert inside.parent == root
    assert runs(counter) == 2
    assert [e.kind for e in events] == ["bypass", "bypass"]
    assert caplog.text.count("leaves the output folder") == 1  # once per tool


# (3) bypass returns the base runner's execution -----------------------------------------


class _Recording(Runner):
    def __init__(self, data_dir: Path) -> None:
        self.inner = LocalRunner(data_dir=data_dir)
        self.started: list[Execution] = []

    def start_execution(self, metadata: Metadata) -> Execution:
        execution = self.inner.start_execution(metadata)
        self.started.append(execution)
        return execution


def test_bypass_returns_the_base_execution_and_counts_it(tmp_path: Path) -> None:
    base = _Recording(tmp_path / "styx_tmp")
    events: list[CacheEvent] = []
    runner = CachingRunner(
        base,
        tmp_path / "cache",
        policy=CachePolicy(bypass_tools=frozenset({"fsl/fslstats"})),
        on_event=events.append,
    )
    with styxcache.bypass():
        execution = runner.start_execution(BET)
    assert execution is base.started[-1]
    execution.output_file(".")
    execution.run(["true"])
    denied = runner.start_execution(STATS)
    assert denied is base.started[-1]
    denied.run(["true"])
    assert runner.stats.bypassed == 2
    assert [(e.kind, e.tool, e.ok) for e in events] == [
        ("bypass", "fsl/bet", True),
        ("bypass", "fsl/fslstats", True),
    ]


# (4) inputs rewritten with identical bytes while the tool runs -----------------------


@pytest.mark.parametrize(
    "rewrite",
    [
        'touch "$1"',
        'cat "$1" > "$1.tmp" && mv "$1.tmp" "$1"',  # rsync's way: a new inode
        'cp "$1" "$1.tmp" && cat "$1.tmp" > "$1" && rm "$1.tmp"',  # in place
    ],
)
def test_input_rewritten_with_identical_bytes_is_kept(
    tmp_path: Path, rewrite: str
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("same bytes\n")
    counter = tmp_path / "runs"
    runner, events = make(tmp_path)
    for _ in range(2):
        call(
            runner,
            STATS,
            {"src": str(source)},
            ["out.txt"],
            f'cp "$1" out.txt; {rewrite}; echo run >> "{counter}"',
            inputs=(source,),
        )
    assert runs(counter) == 1
    assert [e.kind for e in events] == ["miss", "hit"]


def test_concurrent_identical_rewrites_by_other_processes_run_once(
    tmp_path: Path,
) -> None:
    # Three processes each run the tool on one input while a fourth keeps
    # rewriting that input with the same bytes.
    source = tmp_path / "in.txt"
    source.write_text("same bytes\n" * 1000)
    counter = tmp_path / "runs"
    stop = tmp_path / "stop"
    rewriter = subprocess.Popen(
        [
            "sh",
            "-c",
            f'while [ ! -e "{stop}" ]; do cat "{source}" > "{source}.t" && '
            f'mv "{source}.t" "{source}"; done',
        ]
    )
    script = f'sleep 0.3; cp "$1" out.txt; echo run >> "{counter}"'
    code = "\n".join(
        [
            "import sys",
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})",
            "from pathlib import Path",
            "from styxdefs import LocalRunner",
            "from styxcache import CachingRunner",
            "from test_transparency import STATS, call",
            f"base = LocalRunner(data_dir={str(tmp_path / 'styx_tmp')!r})",
            f"runner = CachingRunner(base, {str(tmp_path / 'cache')!r})",
            f"source = Path({str(source)!r})",
            f"call(runner, STATS, {{'src': str(source)}}, ['out.txt'], {script!r},"
            " inputs=(source,))",
        ]
    )
    try:
        workers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
        assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    finally:
        stop.touch()
        rewriter.wait(timeout=30)
    assert runs(counter) == 1


# (8) no litter in the base runner's folder -------------------------------------------


class _SubclassedLocal(LocalRunner):
    """Not exactly LocalRunner, so its executions start eagerly (make folders)."""


@pytest.mark.parametrize("base_type", [LocalRunner, _SubclassedLocal])
def test_sentence_names_leave_no_folders(
    tmp_path: Path, base_type: type[LocalRunner]
) -> None:
    data_dir = tmp_path / "styx_tmp"
    runner = CachingRunner(base_type(data_dir=data_dir), tmp_path / "cache")
    counter = tmp_path / "runs"
    for _ in range(3):
        call(
            runner,
            SENTENCE,
            {"x": 1},
            ["out.nii"],
            f'echo 1 > out.nii; echo run >> "{counter}"',
        )
        assert not data_dir.exists() or list(data_dir.rglob("*")) == []
    assert runs(counter) == 1


# issue 12 item 5: hits check an output's file type -------------------------------------


def test_output_replaced_by_same_size_symlink_is_not_served(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    runner, events = make(tmp_path)
    text = "x" * (len("/etc/passwd") - 1) + "\n"

    def tool() -> list[Path]:
        return call(
            runner,
            STATS,
            {"n": 1},
            ["out.txt"],
            f'printf "{text[:-1]}\\n" > out.txt; echo run >> "{counter}"',
        )

    out = tool()[1]
    assert out.stat().st_size == len("/etc/passwd")
    os.chmod(out.parent, 0o755)
    out.unlink()
    out.symlink_to("/etc/passwd")
    assert out.lstat().st_size == len(text)
    served = tool()[1]
    assert runs(counter) == 2
    assert not served.is_symlink()
    assert served.read_text() == text
    assert events[-1].kind == "miss"
    assert "not a regular file" in events[-1].reason


# issue 13 item 10: the failed run's note appears once ------------------------------------


def test_failed_run_note_is_given_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner, _ = make(tmp_path)
    with (
        caplog.at_level(logging.DEBUG, logger="styxcache"),
        pytest.raises(Exception) as info,
    ):
        call(runner, STATS, {"n": 1}, ["out.txt"], "echo partial > out.txt; exit 3")
    notes = getattr(info.value, "__notes__", [])
    said = [
        r
        for r in caplog.records
        if r.levelno >= logging.INFO and "kept in" in r.getMessage()
    ]
    assert len(notes) + len(said) == 1


# a hit whose entry vanishes is a miss -------------------------------------------------


def test_entry_removed_between_lookup_and_run_reruns(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    runner, _ = make(tmp_path)
    script = f'echo out > out.txt; echo line; echo run >> "{counter}"'
    call(runner, STATS, {"n": 1}, ["out.txt"], script)
    execution = runner.start_execution(STATS)
    execution.params({"n": 1})
    root = Path(execution.output_file("."))
    out = Path(execution.output_file("out.txt"))
    assert runner.store.remove(root.name)  # what a concurrent clear does
    lines: list[str] = []
    execution.run(["sh", "-c", script, "sh"], handle_stdout=lines.append)
    assert lines == ["line"]
    assert out.read_text() == "out\n"
    assert runs(counter) == 2


def test_cache_that_cannot_stage_runs_the_tool_uncached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = tmp_path / "runs"
    runner, events = make(tmp_path)
    incoming = tmp_path / "cache" / CacheStore.STAGING_DIR
    incoming.rmdir()
    incoming.write_text("not a folder\n")  # what a broken or hostile cache holds
    with caplog.at_level(logging.WARNING, logger="styxcache"):
        for _ in range(2):
            root, out = call(
                runner,
                STATS,
                {"n": 1},
                ["out.txt"],
                f'echo 1 > out.txt; echo run >> "{counter}"',
            )
            assert out.read_text() == "1\n"
            assert out.parent == root
    assert runs(counter) == 2
    assert [e.kind for e in events] == ["bypass", "bypass"]
    assert caplog.text.count("cannot stage a run") == 1
