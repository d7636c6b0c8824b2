"""Failure paths: misuse, failing tools, broken callbacks and damaged files.

Each bad input gets a clear error before anything is written; a failure
never loses or corrupts what is already cached.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from styxdefs import LocalRunner, Metadata, Runner, StyxRuntimeError

from conftest import run_tool
from styxcache import CacheEvent, CachePolicy, CacheStore, CachingRunner
from styxcache.events import EVENTS_DIR, read_events

TOOL = Metadata(id="echo-tool", name="Echo", package="test")


def make_runner(tmp_cache: Path, data_dir: Path, **kwargs: Any) -> CachingRunner:
    return CachingRunner(LocalRunner(data_dir=data_dir), tmp_cache, **kwargs)


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def echo(runner: Runner, counter: Path, text: str = "x", script: str = "") -> Path:
    out = run_tool(
        runner,
        TOOL,
        {"text": text},
        outputs={"out": "out.txt"},
        cargs=lambda _: [
            "sh",
            "-c",
            f'echo {text} > out.txt; echo run >> "{counter}"; echo said {text}'
            + script,
        ],
    )
    return out["out"]


def staged(cache: Path) -> list[Path]:
    incoming = cache / CacheStore.STAGING_DIR
    return sorted(incoming.iterdir()) if incoming.is_dir() else []


@pytest.fixture
def runner(tmp_cache: Path, data_dir: Path) -> CachingRunner:
    return make_runner(tmp_cache, data_dir)


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    return tmp_path / "runs"


# Misuse -------------------------------------------------------------------------


def test_base_that_is_not_a_runner(tmp_cache: Path) -> None:
    for base in (None, "local", LocalRunner):
        with pytest.raises(TypeError, match="base must be a Styx Runner"):
            CachingRunner(base, tmp_cache)  # type: ignore[arg-type]
    assert not tmp_cache.exists()


def test_policy_of_the_wrong_type(tmp_cache: Path, data_dir: Path) -> None:
    with pytest.raises(TypeError, match="policy must be a CachePolicy, got dict"):
        make_runner(tmp_cache, data_dir, policy={"keep_failed": 1})
    assert not tmp_cache.exists()


def test_input_file_after_output_file(runner: CachingRunner, tmp_path: Path) -> None:
    late = tmp_path / "late.txt"
    late.write_text("x\n")
    execution = runner.start_execution(TOOL)
    execution.params({"src": str(late)})
    execution.output_file(".")
    with pytest.raises(
        RuntimeError, match=r"test/echo-tool.*late\.txt.*already settled"
    ):
        execution.input_file(late)


@pytest.mark.parametrize(
    "name",
    [".styxcache.done", ".styxcache.manifest.json", ".styxcache.stdout.gz"],
)
def test_empty_or_reserved_output_names(
    runner: CachingRunner, tmp_cache: Path, name: str
) -> None:
    execution = runner.start_execution(TOOL)
    execution.params({"n": 1})
    with pytest.raises(ValueError, match=r"empty|reserved by styxcache"):
        execution.output_file(name)
    assert list(runner.store.iter_keys()) == []
    assert staged(tmp_cache) == []


def test_mutable_input_that_does_not_exist(
    runner: CachingRunner, tmp_path: Path
) -> None:
    missing = tmp_path / "gone.nii"
    execution = runner.start_execution(TOOL)
    execution.params({"src": str(missing)})
    with pytest.raises(FileNotFoundError, match=r"gone\.nii"):
        execution.input_file(missing, mutable=True)


# Failing tools --------------------------------------------------------------------


def test_failing_tool_keeps_its_error_and_the_cache_intact(
    runner: CachingRunner, counter: Path, tmp_cache: Path
) -> None:
    good = echo(runner, counter, "good")
    before = good.read_text()
    with pytest.raises(StyxRuntimeError) as info:
        echo(runner, counter, "bad", script="; echo broken >&2; exit 4")
    assert info.value.return_code == 4
    assert "broken" in str(info.value)
    assert good.read_text() == before
    assert runner.store.is_hit(good.parent.name)
    assert len(list(runner.store.iter_keys())) == 1
    assert staged(tmp_cache) == []
    # A failure is never cached: it runs (and fails) again.
    with pytest.raises(StyxRuntimeError):
        echo(runner, counter, "bad", script="; exit 4")
    assert runs(counter) == 3
    echo(runner, counter, "good")
    assert runs(counter) == 3


def test_tool_that_edits_its_input_is_not_cached(
    runner: CachingRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("original\n")
    counter = tmp_path / "runs"

    def call() -> dict[str, Path]:
        return run_tool(
            runner,
            TOOL,
            {"src": str(source)},
            inputs={"src": {}},
            outputs={"out": "out.txt"},
            cargs=lambda resolved: [
                "sh",
                "-c",
                f'cp "$1" out.txt; echo more >> "$1"; echo run >> "{counter}"',
                "sh",
                resolved["src"],
            ],
        )

    with caplog.at_level(logging.WARNING, logger="styxcache"):
        out = call()
    assert "changed while the tool ran" in caplog.text
    assert str(source) in caplog.text
    assert out["out"].read_text() == "original\n"
    assert not runner.store.is_hit(out["root"].name)


# Callbacks and side files ---------------------------------------------------------


def test_on_event_callback_that_raises_does_not_break_runs(
    tmp_cache: Path, data_dir: Path, counter: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[CacheEvent] = []

    def broken(event: CacheEvent) -> None:
        seen.append(event)
        raise RuntimeError("callback bug")

    runner = make_runner(tmp_cache, data_dir, on_event=broken)
    with caplog.at_level(logging.ERROR, logger="styxcache"):
        first = echo(runner, counter)
        second = echo(runner, counter)
    assert first == second
    assert first.read_text() == "x\n"
    assert [e.kind for e in seen] == ["miss", "hit"]
    assert runs(counter) == 1
    assert "on_event callback failed" in caplog.text
    assert runner.stats.hits == 1
    assert runner.stats.misses == 1


def test_events_are_recorded_and_read_back(
    runner: CachingRunner, counter: Path, tmp_cache: Path
) -> None:
    echo(runner, counter)
    echo(runner, counter)
    kinds = [e.kind for e in read_events(tmp_cache)]
    assert kinds == ["miss", "hit"]


def test_damaged_event_files_do_not_break_reading(
    runner: CachingRunner, counter: Path, tmp_cache: Path
) -> None:
    echo(runner, counter)
    echo(runner, counter)
    folder = tmp_cache / EVENTS_DIR
    good = CacheEvent(kind="hit", tool="t/x", key="k", time=123.0).to_json()
    (folder / "torn.jsonl").write_text(good + "\n" + good[: len(good) // 2])
    (folder / "binary.jsonl").write_bytes(
        b"\xff\xfe\x00garbage\n" + good.encode() + b"\n"
    )
    (folder / "odd.jsonl").write_text(
        "\n".join(
            [
                "[1, 2]",
                '"just a string"',
                "null",
                "42",
                '{"kind": "hit"}',
                '{"kind": "explode", "tool": "t", "key": "k"}',
                '{"kind": "hit", "tool": "t", "key": "k", "saved_s": "lots"}',
                '{"kind": "hit", "tool": 5, "key": "k"}',
                "{not json",
                "",
            ]
        )
    )
    (folder / "folder.jsonl").mkdir()
    events = list(read_events(tmp_cache))
    assert sorted(e.kind for e in events) == ["hit", "hit", "hit", "miss"]
    assert sum(1 for e in events if e.tool == "t/x") == 2
    assert [
        e.time for e in read_events(tmp_cache, since=1000.0) if e.tool == "t/x"
    ] == []
    # The runner keeps working and keeps appending.
    echo(runner, counter)
    assert len(list(read_events(tmp_cache))) == 5


def test_unwritable_event_folder_only_warns(
    tmp_cache: Path, data_dir: Path, counter: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_cache.mkdir()
    (tmp_cache / EVENTS_DIR).write_text("a file where the folder should be\n")
    runner = make_runner(tmp_cache, data_dir)
    with caplog.at_level(logging.WARNING, logger="styxcache"):
        echo(runner, counter)
        echo(runner, counter)
    assert runs(counter) == 1
    assert caplog.text.count("cannot write cache events") == 1
    assert list(read_events(tmp_cache)) == []


def test_unusable_memo_only_warns(
    tmp_cache: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "memo-file"
    blocker.write_text("not a folder\n")
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    counter = tmp_path / "runs"
    with caplog.at_level(logging.WARNING, logger="styxcache"):
        runner = make_runner(
            tmp_cache, data_dir, policy=CachePolicy(memo_dir=blocker / "memo")
        )
        for _ in range(2):
            run_tool(
                runner,
                TOOL,
                {"src": str(source)},
                inputs={"src": {}},
                outputs={"out": "out.txt"},
                cargs=lambda r: [
                    "sh",
                    "-c",
                    f'cp "$1" out.txt; echo 1 >> "{counter}"',
                    "sh",
                    r["src"],
                ],
            )
    assert "digest memo" in caplog.text
    assert runs(counter) == 1


def test_handler_error_on_a_hit_leaves_the_entry_intact(
    runner: CachingRunner, counter: Path
) -> None:
    out = echo(runner, counter)

    def exploding(line: str) -> None:
        raise RuntimeError(f"handler bug on {line!r}")

    execution = runner.start_execution(TOOL)
    execution.params({"text": "x"})
    execution.output_file("out.txt")
    with pytest.raises(RuntimeError, match="handler bug"):
        execution.run(
            [
                "sh",
                "-c",
                f'echo x > out.txt; echo run >> "{counter}"; echo said x',
            ],
            handle_stdout=exploding,
        )
    assert runner.store.is_hit(out.parent.name)
    assert runner.store.lookup(out.parent.name).manifest is not None
    assert echo(runner, counter) == out
    assert runs(counter) == 1
    manifest = json.loads((out.parent / CacheStore.MANIFEST).read_text())
    assert manifest["stdout_lines"] == 1


def test_handler_error_on_a_miss_does_not_truncate_the_stored_output(
    runner: CachingRunner, counter: Path
) -> None:
    script = f'for i in 1 2 3 4 5; do echo line $i; done; echo run >> "{counter}"'
    received: list[str] = []

    def exploding(line: str) -> None:
        received.append(line)
        raise RuntimeError("handler bug")

    execution = runner.start_execution(TOOL)
    execution.params({"lines": 5})
    entry = execution.output_file(".")
    with pytest.raises(RuntimeError, match="handler bug"):
        execution.run(["sh", "-c", script], handle_stdout=exploding)
    assert received == ["line 1"]  # no more lines after its error
    # The tool succeeded: its result is stored with all its output.
    assert runner.store.is_hit(entry.name)
    lines: list[str] = []
    execution = runner.start_execution(TOOL)
    execution.params({"lines": 5})
    execution.output_file(".")
    execution.run(["sh", "-c", script], handle_stdout=lines.append)
    assert runs(counter) == 1
    assert lines == [f"line {i}" for i in range(1, 6)]


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "fewer lines"])
def test_damaged_output_log_is_quarantined_and_recomputed(
    runner: CachingRunner,
    counter: Path,
    tmp_cache: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def call() -> tuple[Path, list[str]]:
        lines: list[str] = []
        out = run_tool(
            runner,
            TOOL,
            {"lines": 3},
            outputs={"out": "out.txt"},
            cargs=lambda _: [
                "sh",
                "-c",
                f'echo a; echo b; echo c; echo 1 > out.txt; echo run >> "{counter}"',
            ],
            stdout=lines,
        )
        return out["out"], lines

    out, first = call()
    log = out.parent / CacheStore.STDOUT_LOG
    data = log.read_bytes()
    log.chmod(0o644)
    if damage == "delete":
        log.unlink()
    elif damage == "truncate":
        log.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        log.write_bytes(b"not gzip at all\n")
    else:
        with gzip.open(log, "wt") as handle:
            handle.write("a\n")
    with caplog.at_level(logging.WARNING, logger="styxcache"):
        again, second = call()
    assert "is damaged" in caplog.text
    assert CacheStore.STDOUT_LOG in caplog.text
    assert again == out
    assert second == first == ["a", "b", "c"]
    assert runs(counter) == 2
    assert len(list((tmp_cache / CacheStore.QUARANTINE_DIR).glob("*.reason"))) == 1
    # Repaired: the next call is a hit again.
    _, third = call()
    assert third == first
    assert runs(counter) == 2
