"""Trustworthy entries: verification, quarantine, read-only outputs, stale tools,
inputs changed mid-run, path params, refresh, max_age, tiers, explained misses."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from styxdefs import LocalRunner, Metadata

import styxcache
from conftest import run_tool
from styxcache import CacheEvent, CachePolicy, CachingRunner, Manifest

COPY = Metadata(id="copy", name="Copy a file", package="test")


class Pipeline:
    """A cache plus a counting copy tool, called like generated wrapper code."""

    def __init__(self, tmp: Path, **policy: Any) -> None:
        self.tmp = tmp
        self.counter = tmp / "runs.txt"
        self.events: list[CacheEvent] = []
        self.runner = CachingRunner(
            LocalRunner(data_dir=tmp / "styx_tmp"),
            tmp / "cache",
            policy=CachePolicy(**policy),
            on_event=self.events.append,
        )

    @property
    def runs(self) -> int:
        return len(self.counter.read_text().split()) if self.counter.exists() else 0

    def copy(
        self, infile: Path, *, extra: str = "", params: dict[str, Any] | None = None
    ) -> Path:
        out = run_tool(
            self.runner,
            COPY,
            {"infile": str(infile), **(params or {})},
            inputs={"infile": {}},
            outputs={"out": "out.txt"},
            cargs=lambda p: [
                "sh",
                "-c",
                f"echo 1 >> {self.counter}; cat {p['infile']} > out.txt{extra}",
            ],
        )
        return out["out"]


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


@pytest.fixture
def infile(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("hello\n")
    return path


def _entry(out: Path) -> Path:
    return out.parent


# Verified entries ----------------------------------------------------------------


def test_manifest_records_the_run(pipe: Pipeline, infile: Path) -> None:
    out = pipe.copy(infile)
    manifest = Manifest.read(_entry(out) / ".styxcache.manifest.json")
    assert manifest.format == 1
    assert manifest.tool == "test/copy"
    assert manifest.key == _entry(out).name
    assert manifest.payload["inputs"][0]["name"] == "in.txt"
    assert [(o.path, o.size) for o in manifest.outputs] == [("out.txt", 6)]
    assert manifest.exit_status == 0 and manifest.duration_s > 0
    assert manifest.created <= time.time()


@pytest.mark.parametrize(
    ("damage", "verify"),
    [
        ("delete_output", "size"),
        ("truncate_output", "size"),
        ("modify_output", "full"),
        ("delete_done", "size"),
        ("garble_manifest", "size"),
        ("delete_manifest", "size"),
    ],
)
def test_damaged_entry_is_quarantined_and_recomputed(
    tmp_path: Path,
    infile: Path,
    damage: str,
    verify: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = Pipeline(tmp_path, verify=verify)
    out = pipe.copy(infile)
    entry = _entry(out)
    os.chmod(out, 0o644)
    if damage == "delete_output":
        out.unlink()
    elif damage == "truncate_output":
        out.write_text("he")
    elif damage == "modify_output":
        out.write_text("HELLO\n")  # same size: only the content check sees it
    elif damage == "delete_done":
        (entry / ".styxcache.done").unlink()
    elif damage == "garble_manifest":
        (entry / ".styxcache.manifest.json").write_text("{not json")
    else:
        (entry / ".styxcache.manifest.json").unlink()
    again = pipe.copy(infile)
    assert again == out
    assert again.read_text() == "hello\n"
    assert pipe.runs == 2
    assert "damaged" in caplog.text
    quarantined = list((tmp_path / "cache" / ".quarantine").glob("*.reason"))
    assert len(quarantined) == 1
    # ...and the recomputed entry is a plain hit afterwards.
    pipe.copy(infile)
    assert pipe.runs == 2


def test_verify_size_does_not_read_outputs(tmp_path: Path, infile: Path) -> None:
    pipe = Pipeline(tmp_path, verify="size")
    out = pipe.copy(infile)
    os.chmod(out, 0o644)
    out.write_text("HELLO\n")
    pipe.copy(infile)
    assert pipe.runs == 1  # documented trade-off of the default


# Read-only outputs ----------------------------------------------------------------


def test_cached_outputs_are_read_only(
    pipe: Pipeline, infile: Path, tmp_path: Path
) -> None:
    out = pipe.copy(infile)
    assert not os.stat(out).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    if os.geteuid() == 0:
        # Root ignores permission bits: check as an ordinary user, as users run.
        for folder in (tmp_path, tmp_path / "cache", _entry(out).parent, _entry(out)):
            folder.chmod(0o755)
        result = subprocess.run(
            ["sh", "-c", 'echo x >> "$1"', "sh", str(out)],
            user=65534,
            group=65534,
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert "Permission denied" in result.stderr
    else:
        with pytest.raises(PermissionError):
            out.open("a")


def test_read_only_outputs_can_be_turned_off(tmp_path: Path, infile: Path) -> None:
    pipe = Pipeline(tmp_path, read_only_outputs=False)
    out = pipe.copy(infile)
    assert os.stat(out).st_mode & stat.S_IWUSR


# Stale-tool guard -------------------------------------------------------------------


def test_tool_upgraded_on_path_is_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mytool"
    tool.write_text("#!/bin/sh\necho v1 > out.txt\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "w"), tmp_path / "cache")
    meta = Metadata(id="mytool", name="mytool", package="test")

    def call() -> str:
        out = run_tool(
            runner, meta, {}, outputs={"out": "out.txt"}, cargs=lambda _: ["mytool"]
        )
        return out["out"].read_text()

    assert call() == "v1\n"
    assert call() == "v1\n"
    tool.write_text("#!/bin/sh\necho v2 > out.txt\n")
    assert call() == "v2\n"
    assert runner.stats.refreshed == 1
    assert call() == "v2\n"
    assert runner.stats.hits == 2


def test_wrapper_passing_a_new_flag_is_rerun(pipe: Pipeline, infile: Path) -> None:
    pipe.copy(infile)
    pipe.copy(infile, extra=" && echo newflag >/dev/null")
    assert pipe.runs == 2
    assert pipe.events[-1].kind == "refresh"
    assert "command line" in pipe.events[-1].reason


def test_command_check_can_be_turned_off(tmp_path: Path, infile: Path) -> None:
    pipe = Pipeline(tmp_path, check_command=False)
    pipe.copy(infile)
    pipe.copy(infile, extra=" && true")
    assert pipe.runs == 1


# Inputs changed during the run ---------------------------------------------------------


def test_input_changed_while_running_is_not_committed(
    pipe: Pipeline, infile: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = pipe.copy(infile, extra=f"; echo more >> {infile}")
    assert out.read_text() == "hello\n"  # the caller still gets this run's files
    assert "changed while the tool ran" in caplog.text
    assert not pipe.runner.store.is_hit(_entry(out).name)


# Paths hidden in string params --------------------------------------------------------


def _subjects_call(pipe: Pipeline, subjects: Path) -> str:
    meta = Metadata(id="recon", name="recon", package="freesurfer")
    out = run_tool(
        pipe.runner,
        meta,
        {"subjects_dir": str(subjects), "subject": "sub-01"},
        outputs={"out": "out.txt"},
        cargs=lambda _: [
            "sh",
            "-c",
            f"echo 1 >> {pipe.counter}; cat {subjects}/sub-01/x > out.txt",
        ],
    )
    return out["out"].read_text()


def test_unregistered_path_param_is_hashed(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path)
    subjects = tmp_path / "subjects"
    (subjects / "sub-01").mkdir(parents=True)
    (subjects / "sub-01" / "x").write_text("a\n")
    assert _subjects_call(pipe, subjects) == "a\n"
    assert _subjects_call(pipe, subjects) == "a\n"
    (subjects / "sub-01" / "x").write_text("b\n")
    assert _subjects_call(pipe, subjects) == "b\n"
    assert pipe.runs == 2
    assert "path param `subjects_dir` content changed" in pipe.events[-1].reason


def test_path_params_warn_keys_on_the_string(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = Pipeline(tmp_path, path_params="warn")
    subjects = tmp_path / "subjects"
    (subjects / "sub-01").mkdir(parents=True)
    (subjects / "sub-01" / "x").write_text("a\n")
    _subjects_call(pipe, subjects)
    (subjects / "sub-01" / "x").write_text("b\n")
    assert _subjects_call(pipe, subjects) == "a\n"  # stale, as the user chose
    assert "never registered" in caplog.text


# Refresh, bypass, max_age ------------------------------------------------------------------


def test_refresh_reruns_and_replaces(pipe: Pipeline, infile: Path) -> None:
    out = pipe.copy(infile)
    with styxcache.refresh():
        assert pipe.copy(infile) == out
    assert pipe.runs == 2
    assert pipe.events[-1].kind == "refresh"
    pipe.copy(infile)
    assert pipe.runs == 2  # the replaced entry serves hits


def test_bypass_neither_reads_nor_writes(
    pipe: Pipeline, infile: Path, tmp_path: Path
) -> None:
    with styxcache.bypass():
        out = pipe.copy(infile)
    assert tmp_path / "cache" not in out.parents
    assert not list(pipe.runner.store.iter_keys())
    pipe.copy(infile)
    with styxcache.bypass():
        pipe.copy(infile)
    assert pipe.runs == 3
    assert [e.kind for e in pipe.events] == ["bypass", "miss", "bypass"]


def test_max_age_recomputes_old_entries(tmp_path: Path, infile: Path) -> None:
    pipe = Pipeline(tmp_path, max_age=3600)
    out = pipe.copy(infile)
    manifest_path = _entry(out) / ".styxcache.manifest.json"
    data = json.loads(manifest_path.read_text())
    data["created"] -= 7200  # written two hours ago
    os.chmod(manifest_path, 0o644)
    manifest_path.write_text(json.dumps(data))
    pipe.copy(infile)
    assert pipe.runs == 2
    assert pipe.events[-1].kind == "refresh"
    assert "max_age" in pipe.events[-1].reason


# Tiers --------------------------------------------------------------------------------


def test_hit_in_read_only_tier_is_copied_into_main_cache(
    tmp_path: Path, infile: Path
) -> None:
    first = Pipeline(tmp_path)
    first.copy(infile)
    tier = tmp_path / "cache"
    main = tmp_path / "main-cache"
    events: list[CacheEvent] = []
    runner = CachingRunner(
        LocalRunner(data_dir=tmp_path / "w2"),
        main,
        read_only_caches=[tier],
        on_event=events.append,
    )
    out = run_tool(
        runner,
        COPY,
        {"infile": str(infile)},
        inputs={"infile": {}},
        outputs={"out": "out.txt"},
        cargs=lambda p: [
            "sh",
            "-c",
            f"echo 1 >> {first.counter}; cat {p['infile']} > out.txt",
        ],
    )["out"]
    assert first.runs == 1
    assert main in out.parents and out.read_text() == "hello\n"
    assert [e.kind for e in events] == ["hit"]
    tier_entry = tier / out.parent.parent.name / out.parent.name
    assert (tier_entry / "out.txt").stat().st_ino == out.stat().st_ino  # hard-linked


# Events, explanations, statistics ---------------------------------------------------------


def test_miss_names_nearest_entry_and_differences(
    pipe: Pipeline, infile: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="styxcache")
    pipe.copy(infile, params={"fractional_intensity": 0.5})
    pipe.copy(infile, params={"fractional_intensity": 0.4})
    reason = pipe.events[-1].reason
    assert "nearest entry" in reason
    assert "param `fractional_intensity` 0.5 -> 0.4" in reason
    assert reason in caplog.text
    infile.write_text("changed\n")
    pipe.copy(infile, params={"fractional_intensity": 0.4})
    assert "input `infile` content changed" in pipe.events[-1].reason


def test_env_allowlist_change_is_explained(
    tmp_path: Path, infile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FSLOUTPUTTYPE", raising=False)
    pipe = Pipeline(tmp_path, env_allowlist=("FSLOUTPUTTYPE",))
    pipe.copy(infile)
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    pipe.copy(infile)
    assert pipe.runs == 2
    assert "env FSLOUTPUTTYPE added" in pipe.events[-1].reason


def test_stats_and_event_files(pipe: Pipeline, infile: Path, tmp_path: Path) -> None:
    pipe.copy(infile)
    pipe.copy(infile)
    pipe.copy(infile)
    stats = pipe.runner.stats
    assert (stats.hits, stats.misses) == (2, 1)
    assert stats.bytes_served == 12
    assert stats.time_saved_s > 0
    assert stats.hit_rate == pytest.approx(2 / 3)
    files = list((tmp_path / "cache" / ".events").glob("*.jsonl"))
    assert len(files) == 1
    kinds = [json.loads(line)["kind"] for line in files[0].read_text().splitlines()]
    assert kinds == ["miss", "hit", "hit"]


def test_collect_events_sees_only_its_context(pipe: Pipeline, infile: Path) -> None:
    pipe.copy(infile)
    with styxcache.collect_events() as outer:
        pipe.copy(infile)
        with styxcache.collect_events() as inner:
            pipe.copy(infile, params={"n": 1})
    assert [e.kind for e in outer] == ["hit", "miss"]
    assert [e.kind for e in inner] == ["miss"]
