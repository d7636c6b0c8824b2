"""Wrong results of styxcache 0.3.0, each fixed and pinned by a test.

Real `LocalRunner` executions of `sh -c` commands, real files, and (for the
read-only cache) a real child process running as an unprivileged user.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from styxdefs import Execution, LocalRunner, Metadata, Runner, StyxRuntimeError

from conftest import run_tool
from styxcache import (
    CacheDirectoryError,
    CachePolicy,
    CacheReadOnlyError,
    CacheStore,
    CachingRunner,
    ParamEncodingError,
)

TOOL = Metadata(id="copy-tool", name="Copy a file", package="test")
NOBODY = 65534


def make_runner(tmp_cache: Path, data_dir: Path, **policy: Any) -> CachingRunner:
    return CachingRunner(
        LocalRunner(data_dir=data_dir), tmp_cache, policy=CachePolicy(**policy)
    )


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def copy_named(
    runner: Runner,
    source: Path,
    counter: Path,
    *,
    resolve_parent: bool = False,
    params: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Copy the input to `copy_<input name>`, like tools that name outputs after inputs."""
    return run_tool(
        runner,
        TOOL,
        {"src": str(source), **(params or {})},
        inputs={"src": {"resolve_parent": resolve_parent}},
        outputs={"copy": f"copy_{source.name}"},
        cargs=lambda resolved: [
            "sh",
            "-c",
            f'cp "$1" "copy_$(basename "$1")"; echo run >> "{counter}"',
            "sh",
            resolved["src"],
        ],
    )


def staged(cache: Path) -> list[Path]:
    incoming = cache / CacheStore.STAGING_DIR
    return sorted(incoming.iterdir()) if incoming.is_dir() else []


# (1) resolve_parent keys on the folder's tree and the file's name ---------------


def test_resolve_parent_keys_on_file_name_and_whole_folder(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir)
    series = tmp_path / "series"
    series.mkdir()
    (series / "a.dcm").write_text("slice A\n")
    (series / "b.dcm").write_text("slice B\n")
    (series / "c.dcm").write_text("slice C\n")
    counter = tmp_path / "runs"

    a = copy_named(runner, series / "a.dcm", counter, resolve_parent=True)
    b = copy_named(runner, series / "b.dcm", counter, resolve_parent=True)
    assert runs(counter) == 2
    assert a["root"] != b["root"]
    assert a["copy"].read_text() == "slice A\n"
    assert b["copy"].read_text() == "slice B\n"

    again = copy_named(runner, series / "a.dcm", counter, resolve_parent=True)
    assert runs(counter) == 2
    assert again["root"] == a["root"]

    # A sibling the tool may read changes: another key.
    (series / "c.dcm").write_text("slice C, edited\n")
    edited = copy_named(runner, series / "a.dcm", counter, resolve_parent=True)
    assert runs(counter) == 3
    assert edited["root"] != a["root"]
    # A new sibling also counts.
    (series / "d.dcm").write_text("slice D\n")
    added = copy_named(runner, series / "a.dcm", counter, resolve_parent=True)
    assert runs(counter) == 4
    assert added["root"] not in (a["root"], edited["root"])


# (2) same bytes under another name is another run --------------------------------


def test_same_bytes_other_name_is_a_separate_run(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first = tmp_path / "x" / "sub-01.nii"
    second = tmp_path / "y" / "sub-02.nii"
    first.write_bytes(b"\x00same voxels\x01")
    second.write_bytes(b"\x00same voxels\x01")
    counter = tmp_path / "runs"

    one = copy_named(runner, first, counter)
    two = copy_named(runner, second, counter)
    assert runs(counter) == 2
    assert one["root"] != two["root"]
    assert one["copy"].name == "copy_sub-01.nii"
    assert two["copy"].name == "copy_sub-02.nii"
    assert one["copy"].read_bytes() == two["copy"].read_bytes() == first.read_bytes()

    # Same name and bytes in another folder: the location does not matter.
    (tmp_path / "z").mkdir()
    moved = tmp_path / "z" / "sub-01.nii"
    shutil.copy(first, moved)
    three = copy_named(runner, moved, counter)
    assert runs(counter) == 2
    assert three["copy"] == one["copy"]


# (3) params that are not JSON-native -------------------------------------------


class Shape(enum.Enum):
    SPHERE = "sphere"
    BOX = "box"


_PARAMS_SCRIPT = textwrap.dedent(
    """
    import datetime as dt, decimal, enum, json, sys
    from pathlib import Path, PurePosixPath
    from styxdefs import LocalRunner, Metadata
    from styxcache import CachingRunner
    from styxcache.canonical import canonical_json, encode_params

    class Shape(enum.Enum):
        SPHERE = "sphere"

    params = {
        "labels": {"csf", "gm", "wm", "lesion", "vessel", "bone", "air"},
        "ids": frozenset(range(40, 60)),
        "size": (2, 2, 1.5),
        "blob": b"\\x00\\xffraw",
        "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
        "day": dt.date(2024, 5, 1),
        "thr": decimal.Decimal("0.10"),
        "shape": Shape.SPHERE,
        "atlas": PurePosixPath("/atlases/mni.nii"),
        "lut": {3: "wm", 1: "csf", (2, "x"): "gm"},
        "nested": [{"b": {"q", "p"}, "a": None}],
    }
    runner = CachingRunner(LocalRunner(data_dir=sys.argv[2]), sys.argv[1])
    execution = runner.start_execution(
        Metadata(id="copy-tool", name="Copy a file", package="test")
    )
    execution.params(params)
    print(json.dumps({"json": canonical_json(encode_params(params)),
                      "key": execution.output_file(".").name}))
    """
)


def test_non_json_params_encode_identically_across_processes(tmp_path: Path) -> None:
    results = []
    for seed in ("0", "4242", "31337"):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _PARAMS_SCRIPT,
                str(tmp_path / "c"),
                str(tmp_path / "d"),
            ],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout))
    assert results[0] == results[1] == results[2]
    encoded = json.loads(results[0]["json"])
    assert encoded["labels"]["$set"] == sorted(
        ["csf", "gm", "wm", "lesion", "vessel", "bone", "air"], key=json.dumps
    )
    assert encoded["blob"] == {"$bytes": "00ff726177"}
    assert encoded["thr"] == {"$decimal": "0.10"}
    assert encoded["size"] == {"$tuple": [2, 2, 1.5]}


def test_param_types_change_the_key(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir)
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    counter = tmp_path / "runs"

    def key_for(value: Any) -> str:
        return copy_named(runner, source, counter, params={"opt": value})["root"].name

    variants = [
        [1, 2],
        (1, 2),
        {1, 2},
        "1",
        1,
        1.0,
        True,
        b"1",
        Shape.SPHERE,
        "sphere",
        decimal.Decimal("1"),
        dt.date(2024, 1, 1),
        "2024-01-01",
        Path("/a"),
        "/a",
        {1: "a"},
        {"1": "a"},
    ]
    keys = [key_for(value) for value in variants]
    assert len(set(keys)) == len(variants)
    assert runs(counter) == len(variants)
    # Equal values built differently: one key.
    assert key_for({2, 1}) == keys[2]
    assert key_for({"2": 0, "1": 0}) == key_for({"1": 0, "2": 0})
    assert key_for(dt.date(2024, 1, 1)) == keys[11]


class Opaque:
    """An object whose repr shows its memory address."""


@dataclasses.dataclass
class Settings:
    smoothing: float
    mask: object


UNKEYABLE = (
    ({"handle": Opaque()}, "params.handle"),
    ({"callback": lambda: None}, "params.callback"),
    ({"opts": {"levels": [1, Opaque()]}}, "params.opts.levels[1]"),
    ({"cfg": Settings(2.0, Opaque())}, "params.cfg.mask"),
)


def test_object_with_memory_address_repr_runs_uncached_by_default(
    tmp_cache: Path,
    data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """0.3.0 keyed these on their address (wrong hits); we run them uncached."""
    runner = make_runner(tmp_cache, data_dir)
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    counter = tmp_path / "runs"
    with caplog.at_level("WARNING", logger="styxcache"):
        for params, _name in UNKEYABLE:
            for _ in range(2):
                out = copy_named(runner, source, counter, params=params)
                assert out["copy"].read_text() == "x\n"
    # Every call ran (nothing served), nothing was stored.
    assert runs(counter) == 2 * len(UNKEYABLE)
    assert list(runner.store.iter_keys()) == []
    assert staged(tmp_cache) == []
    assert runner.stats.bypassed == 2 * len(UNKEYABLE)
    warnings = [
        r.getMessage() for r in caplog.records if "not cached" in r.getMessage()
    ]
    # One warning per tool, naming the param path of the first unkeyable call.
    assert len(warnings) == 1
    assert "`params.handle`" in warnings[0]


def test_object_with_memory_address_repr_is_refused_when_policy_says_error(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir, unkeyable_params="error")
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    counter = tmp_path / "runs"
    for params, name in UNKEYABLE:
        with pytest.raises(ParamEncodingError, match=r"memory address") as info:
            copy_named(runner, source, counter, params=params)
        assert isinstance(info.value, TypeError)
        assert f"`{name}`" in str(info.value)
    assert runs(counter) == 0
    assert list(runner.store.iter_keys()) == []
    assert staged(tmp_cache) == []


# (4) output names that leave the entry -----------------------------------------


class _EscapingExecution(Execution):
    """Wraps a LocalRunner execution; its mutable copy lands outside the output dir.

    Stands for a base runner that stages mutable inputs somewhere odd.
    """

    def __init__(self, base: Execution) -> None:
        self.base = base

    def input_file(
        self, host_file: Any, *, resolve_parent: bool = False, mutable: bool = False
    ) -> str:
        return self.base.input_file(
            host_file, resolve_parent=resolve_parent, mutable=mutable
        )

    def output_file(self, local_file: str, *, optional: bool = False) -> Any:
        return self.base.output_file(local_file, optional=optional)

    def mutable_copy(self, host_file: Any) -> Any:
        inner = self.base
        return Path(f"{inner.output_dir}/../{Path(host_file).name}")  # type: ignore[attr-defined]

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.base.params(params)

    def run(self, cargs: list[str], **kwargs: Any) -> None:
        self.base.run(cargs, **kwargs)


class _EscapingRunner(Runner):
    def __init__(self, data_dir: Path) -> None:
        self.base = LocalRunner(data_dir=data_dir)

    def start_execution(self, metadata: Metadata) -> Execution:
        return _EscapingExecution(self.base.start_execution(metadata))


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "..", "../x.txt", "a/../../x.txt", "sub/../../../x", "./../x"],
)
def test_output_name_leaving_the_entry_gets_the_base_runners_path(
    tmp_cache: Path, data_dir: Path, tmp_path: Path, name: str
) -> None:
    # Transparency (docs/design/transparency.md): never an error, never
    # redirected into the cache; tests/test_transparency.py runs such tools.
    runner = make_runner(tmp_cache, data_dir)
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    execution = runner.start_execution(TOOL)
    execution.params({"src": str(source)})
    execution.input_file(source)
    entry = execution.output_file(".")
    answer = execution.output_file(name)
    if name.startswith("/"):
        assert answer == Path(name)
    else:
        assert answer == Path(execution.base.output_dir) / name  # type: ignore[attr-defined]
    assert not Path(answer).is_relative_to(tmp_cache)
    assert list(runner.store.iter_keys()) == []
    assert staged(tmp_cache) == []
    # Names that only look odd stay inside and are fine.
    inside = execution.output_file("a/../b.txt")
    assert inside == entry / "b.txt"


def test_mutable_copy_leaving_the_entry_is_the_base_runners(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = CachingRunner(_EscapingRunner(data_dir), tmp_cache)
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    execution = runner.start_execution(TOOL)
    execution.params({"src": str(source)})
    execution.input_file(source, mutable=True)
    inner = execution.base.base  # type: ignore[attr-defined]
    assert execution.mutable_copy(source) == Path(f"{inner.output_dir}/../in.txt")
    assert list(runner.store.iter_keys()) == []
    assert staged(tmp_cache) == []


def test_mutable_copy_lands_inside_the_entry(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir)
    source = tmp_path / "header.nii"
    source.write_text("original\n")
    for _ in range(2):
        execution = runner.start_execution(TOOL)
        execution.params({"src": str(source)})
        local = execution.input_file(source, mutable=True)
        entry = execution.output_file(".")
        copy = execution.mutable_copy(source)
        execution.run(["sh", "-c", 'echo edited > "$1"', "sh", local])
        assert copy == entry / "header.nii"
        assert copy.read_text() == "edited\n"
    assert source.read_text() == "original\n"
    assert runner.stats.hits == 1


# (5) exit 0 but a required output is missing -----------------------------------


def test_missing_required_output_is_not_committed(
    tmp_cache: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Opt-in strictness; by default such a run is committed with the missing
    # output listed as absent (tests/test_transparency.py).
    runner = make_runner(tmp_cache, data_dir, required_outputs="all")
    counter = tmp_path / "runs"

    def call() -> dict[str, Path]:
        return run_tool(
            runner,
            TOOL,
            {"n": 1},
            outputs={"made": "made.txt", "forgotten": "sub/forgotten.nii.gz"},
            cargs=lambda _: [
                "sh",
                "-c",
                f'echo ok > made.txt; echo run >> "{counter}"',
            ],
        )

    with caplog.at_level(logging.WARNING, logger="styxcache"):
        out = call()
    key = out["root"].name
    assert "sub/forgotten.nii.gz" in caplog.text
    assert "not cached" in caplog.text
    assert "made.txt" not in caplog.text.split("missing:")[-1]
    assert not runner.store.is_hit(key)
    assert not (out["root"] / CacheStore.DONE_MARKER).exists()
    # The caller still gets what the tool did write.
    assert out["made"].read_text() == "ok\n"

    call()
    assert runs(counter) == 2
    assert runner.stats.hits == 0
    assert not runner.store.is_hit(key)


def test_missing_optional_output_is_committed(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir)
    counter = tmp_path / "runs"
    for _ in range(2):
        out = run_tool(
            runner,
            TOOL,
            {"n": 2},
            outputs={"made": "made.txt"},
            optional_outputs={"maybe": "maybe.txt"},
            cargs=lambda _: [
                "sh",
                "-c",
                f'echo ok > made.txt; echo run >> "{counter}"',
            ],
        )
    assert runs(counter) == 1
    assert runner.store.is_hit(out["root"].name)
    assert not out["maybe"].exists()


# (6) large output streams to disk --------------------------------------------------


def test_large_stdout_streams_with_flat_memory(tmp_cache: Path, data_dir: Path) -> None:
    runner = make_runner(tmp_cache, data_dir)
    line_count = 50_000
    line_length = 1000  # 50 MB in all
    count = [0]

    live_logs: list[Path] = []

    def counting(line: str) -> None:
        count[0] += 1
        if count[0] == 1:  # the tool is still running: where do lines go?
            live_logs.extend(
                (tmp_cache / CacheStore.STAGING_DIR).glob(f"*/{CacheStore.STDOUT_LOG}")
            )

    def call() -> None:
        execution = runner.start_execution(TOOL)
        execution.params({"lines": line_count})
        execution.output_file(".")
        execution.run(
            [
                "sh",
                "-c",
                f'yes "$(printf "%0{line_length - 1}d" 0)" | head -n {line_count}',
            ],
            handle_stdout=counting,
        )

    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count[0] == line_count
    assert len(live_logs) == 1  # streamed to the staged entry's log during the run
    assert peak < line_count * line_length / 10
    [key] = list(runner.store.iter_keys())
    log = runner.store.entry_dir(key) / CacheStore.STDOUT_LOG
    assert log.stat().st_size < line_count * line_length / 10  # compressed

    count[0] = 0
    call()
    assert runner.stats.hits == 1
    assert count[0] == line_count


# (7) failed runs are kept; hits leave nothing behind -------------------------------


def fail_tool(runner: Runner, token: str) -> None:
    run_tool(
        runner,
        TOOL,
        {"token": token},
        outputs={"out": "out.txt"},
        cargs=lambda _: [
            "sh",
            "-c",
            f"echo working on {token}; echo partial-{token} > partial.txt; exit 3",
        ],
    )


def test_failed_run_is_kept_for_inspection(tmp_cache: Path, data_dir: Path) -> None:
    runner = make_runner(tmp_cache, data_dir, keep_failed=2)
    failed = tmp_cache / CacheStore.FAILED_DIR
    kept: list[Path] = []
    for i, token in enumerate(("first", "second", "third")):
        with pytest.raises(StyxRuntimeError) as info:
            fail_tool(runner, token)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        [folder] = [p for p in failed.iterdir() if p.is_dir() and p not in kept]
        assert str(folder) in notes
        assert (folder / "partial.txt").read_text() == f"partial-{token}\n"
        assert "StyxRuntimeError" in (folder / ".styxcache.failed").read_text()
        with gzip.open(folder / CacheStore.STDOUT_LOG, "rt") as log:
            assert log.read() == f"working on {token}\n"
        kept.append(folder)
        # Make the order unambiguous whatever the clock's resolution.
        stamp = time.time() - 1000 + i * 100
        os.utime(folder, (stamp, stamp))
    remaining = sorted(p for p in failed.iterdir() if p.is_dir())
    assert remaining == sorted(kept[1:])
    assert list(runner.store.iter_keys()) == []
    assert staged(tmp_cache) == []
    assert runner.stats.misses == 3


def test_failed_run_not_kept_with_keep_failed_zero(
    tmp_cache: Path, data_dir: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir, keep_failed=0)
    with pytest.raises(StyxRuntimeError) as info:
        fail_tool(runner, "gone")
    assert not getattr(info.value, "__notes__", [])
    failed = tmp_cache / CacheStore.FAILED_DIR
    assert not failed.exists() or list(failed.iterdir()) == []
    assert staged(tmp_cache) == []


def test_hit_leaves_no_staging_and_no_base_folder(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir)
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    counter = tmp_path / "runs"
    for _ in range(3):
        out = copy_named(runner, source, counter)
        assert staged(tmp_cache) == []
        assert list(data_dir.iterdir()) == []
    assert runs(counter) == 1
    assert out["copy"].read_text() == "x\n"


# (8) missing inputs and unusable cache directories ------------------------------


def test_missing_input_is_named_before_anything_is_written(
    tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    runner = make_runner(tmp_cache, data_dir)
    missing = tmp_path / "nowhere" / "sub-01_T1w.nii.gz"
    counter = tmp_path / "runs"
    for resolve_parent in (False, True):
        with pytest.raises(FileNotFoundError) as info:
            copy_named(runner, missing, counter, resolve_parent=resolve_parent)
        message = str(info.value)
        assert "test/copy-tool" in message
        assert str(missing.parent if resolve_parent else missing) in message
    assert runs(counter) == 0
    assert list(runner.store.iter_keys()) == []
    assert staged(tmp_cache) == []


def test_cache_dir_that_cannot_be_created(tmp_path: Path, data_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    with pytest.raises(CacheDirectoryError, match=r"a-file"):
        CachingRunner(LocalRunner(data_dir=data_dir), blocker / "cache")
    with pytest.raises(CacheDirectoryError, match=r"not a directory"):
        CachingRunner(LocalRunner(data_dir=data_dir), blocker)
    assert blocker.read_text() == "not a folder\n"
    assert issubclass(CacheDirectoryError, OSError)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder outside pytest's private tmp tree that an unprivileged user can reach."""
    path = Path(tempfile.mkdtemp(prefix="styxcache-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody(work: Any) -> dict[str, Any]:
    """Run `work()` in a forked child as uid/gid 65534 and return its JSON result.

    Forking keeps the already-imported interpreter (which lives under /root,
    out of an unprivileged user's reach).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = json.dumps(work())
        except BaseException as exc:
            payload = json.dumps({"child_error": f"{type(exc).__name__}: {exc}"})
            status = 1
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(payload)
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(text)
    assert "child_error" not in result, result["child_error"]
    return result


def test_read_only_cache_serves_hits_and_runs_misses_uncached(
    shared_dir: Path,
) -> None:
    cache = shared_dir / "cache"
    source = shared_dir / "in.txt"
    source.write_text("shared input\n")
    source.chmod(0o644)
    scratch = shared_dir / "scratch"
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)
    counter = scratch / "runs"
    counter.touch()
    counter.chmod(0o666)
    owner = make_runner(cache, shared_dir / "owner-data")
    filled = copy_named(owner, source, counter)
    before = sorted(str(p) for p in cache.rglob("*"))

    def child() -> dict[str, Any]:
        messages: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                messages.append(f"{record.levelname}: {record.getMessage()}")

        logging.getLogger("styxcache").addHandler(Collect())
        result: dict[str, Any] = {}
        runner = make_runner(cache, scratch / "data", memo=False)
        result["writable"] = runner.writable
        hit = copy_named(runner, source, counter)
        result["hit"] = str(hit["copy"])
        result["hit_text"] = hit["copy"].read_text()
        result["hits"] = runner.stats.hits

        other = copy_named(runner, source, counter, params={"variant": 2})
        result["miss"] = str(other["copy"])
        result["miss_text"] = other["copy"].read_text()
        result["messages"] = messages

        strict = make_runner(
            cache, scratch / "data2", memo=False, read_only_miss="error"
        )
        try:
            copy_named(strict, source, counter, params={"variant": 3})
            result["strict"] = "no error"
        except CacheReadOnlyError as exc:
            result["strict"] = f"{type(exc).__name__}: {exc}"
        return result

    result = _as_nobody(child)
    assert result["writable"] is False
    assert result["hit"] == str(filled["copy"])
    assert result["hit_text"] == "shared input\n"
    assert result["hits"] == 1
    assert cache not in Path(result["miss"]).parents
    assert Path(result["miss"]).is_relative_to(scratch / "data")
    assert result["miss_text"] == "shared input\n"
    assert any(
        m.startswith("WARNING") and "read-only" in m and "uncached" in m
        for m in result["messages"]
    )
    assert result["strict"].startswith("CacheReadOnlyError")
    assert "read_only_miss" in result["strict"]
    # The owner's run, then only the uncached miss, ran the tool.
    assert runs(counter) == 2
    assert sorted(str(p) for p in cache.rglob("*")) == before


# (10) bypass_tools patterns ----------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "bypassed"),
    [
        ("fsl/Brain extraction", True),  # package/name
        ("fsl/bet", True),  # package/id
        ("fsl/*", True),
        ("fsl/b?t", True),
        ("*/bet", True),
        ("fsl/[ab]et", True),
        ("fsl/Brain*", True),
        ("fsl", False),
        ("bet", False),
        ("afni/*", False),
        ("fsl/BET", False),  # case matters
    ],
)
def test_bypass_tools_patterns(
    pattern: str, bypassed: bool, tmp_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    bet = Metadata(id="bet", name="Brain extraction", package="fsl")
    policy = CachePolicy(bypass_tools=frozenset({pattern}))
    assert policy.bypasses(bet) is bypassed
    runner = CachingRunner(LocalRunner(data_dir=data_dir), tmp_cache, policy=policy)
    counter = tmp_path / "runs"
    for _ in range(2):
        out = run_tool(
            runner,
            bet,
            {"n": 1},
            outputs={"out": "out.txt"},
            cargs=lambda _: ["sh", "-c", f'echo x > out.txt; echo run >> "{counter}"'],
        )
        assert out["out"].read_text() == "x\n"
    assert runs(counter) == (2 if bypassed else 1)
    assert (list(runner.store.iter_keys()) == []) is bypassed


# (11) the cache inside a hashed input folder ------------------------------------


def test_cache_inside_hashed_folder_is_left_out_of_its_digest(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "scan.nii").write_text("voxels\n")
    cache = project / ".styx-cache"
    data = project / "styx_tmp"
    runner = make_runner(cache, data)
    counter = tmp_path / "runs"
    first = copy_named(runner, project / "scan.nii", counter, resolve_parent=True)
    second = copy_named(runner, project / "scan.nii", counter, resolve_parent=True)
    assert runs(counter) == 1
    assert second["root"] == first["root"]
    assert runner.stats.hits == 1
    # Another runner on the same cache, started later, agrees.
    third = copy_named(
        make_runner(cache, data), project / "scan.nii", counter, resolve_parent=True
    )
    assert runs(counter) == 1
    assert third["root"] == first["root"]
    # A real change in the folder is still seen.
    (project / "notes.txt").write_text("new\n")
    copy_named(runner, project / "scan.nii", counter, resolve_parent=True)
    assert runs(counter) == 2
