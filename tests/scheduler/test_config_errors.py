"""Every error of a file at once, with file:line:column, entry and field; the
default cache of file entries; the generated key reference in the docs."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from styxdefs import LocalRunner, set_global_runner

from conftest import require
from styxcache.cli.app import main
from styxcache.scheduler import ConfigError, FakeClock, InlineExecutor, Scheduler
from styxcache.scheduler.config import (
    ENTRY_FIELDS,
    TOP_FIELDS,
    default_cache_dir,
    load_config,
    render_reference,
)

BAD = """\
state_dir: .st
bogus: 1
schedules:
  - name: off
    cron: "0 2 * *"
    target: nomod_for_sure:fn
    catchup: sometimes
  - name: good
    interval_seconds: 60
    target: os:getcwd
    overlap: yes
"""


def test_every_error_is_reported_with_its_position(
    write_yaml: Callable[[str], Path],
) -> None:
    path = write_yaml(BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    where = {(e.entry, e.field): (e.line, e.column) for e in errors}
    assert where == {
        (None, "bogus"): (2, 8),
        ("#1", "name"): (4, 11),
        ("#1", "cron"): (5, 11),
        ("#1", "target"): (6, 13),
        ("#1", "catchup"): (7, 14),
        ("good", "overlap"): (11, 14),
    }
    text = str(info.value)
    assert text.startswith("6 errors:")
    assert f"{path}:4:11: schedule '#1', field 'name'" in text
    # A YAML 1.1 boolean where text was expected says so, with the word.
    (name_error,) = [e for e in errors if e.field == "name"]
    assert "YAML read `off` as the boolean false" in str(name_error)
    (overlap_error,) = [e for e in errors if e.field == "overlap"]
    assert "YAML read `yes` as the boolean true" in str(overlap_error)


def test_yaml_syntax_error_names_the_file_and_position(
    write_yaml: Callable[[str], Path],
) -> None:
    path = write_yaml("schedules:\n  - name: a\n   cron: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:")
    assert info.value.line is not None and "<unicode string>" not in str(info.value)


def test_validate_prints_every_error(write_yaml: Callable[[str], Path]) -> None:
    path = write_yaml(BAD)
    result = CliRunner().invoke(main, ["schedule", "validate", str(path)])
    assert result.exit_code == 1
    assert "6 errors" in result.output
    assert f"{path}:7:14" in result.output


def test_file_entries_get_a_cache_unless_they_opt_out(
    write_yaml: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STYXCACHE_DIR", str(tmp_path / "default-cache"))
    path = write_yaml(
        """\
        schedules:
          - {name: plain, interval_seconds: 60, target: "os:getcwd"}
          - {name: own, interval_seconds: 60, target: "os:getcwd",
             runner: {cache_dir: mine}}
          - {name: uncached, interval_seconds: 60, target: "os:getcwd",
             runner: none}
        """
    )
    entries = {e.name: e for e in load_config(path).entries}
    assert default_cache_dir() == tmp_path / "default-cache"
    plain = entries["plain"]
    assert plain.runner is not None and plain.runner_is_default
    assert plain.runner.cache_dir == str(tmp_path / "default-cache")
    own = entries["own"]
    assert own.runner is not None and not own.runner_is_default
    assert own.runner.cache_dir == str(path.parent / "mine")
    assert entries["uncached"].runner is None
    # validate and list name the cache of each entry.
    validate = CliRunner().invoke(main, ["schedule", "validate", str(path)])
    assert validate.exit_code == 0, validate.output
    assert f"{tmp_path / 'default-cache'} (default)" in validate.output
    assert "uncached: no cache" in validate.output
    listed = CliRunner().invoke(main, ["schedule", "list", str(path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert f"{tmp_path / 'default-cache'} (default)" in listed.output


def test_a_file_entry_without_runner_runs_through_the_default_cache(
    write_yaml: Callable[[str], Path],
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    require(shutil.which("sort") is not None, "needs coreutils sort")
    cache = tmp_path / "default-cache"
    monkeypatch.setenv("STYXCACHE_DIR", str(cache))
    monkeypatch.setenv("SCHED_SORT_INPUT", str(tmp_path / "subjects.txt"))
    (tmp_path / "subjects.txt").write_text("b\na\n")
    set_global_runner(LocalRunner(data_dir=tmp_path / "styx"))
    path = write_yaml(
        """\
        schedules:
          - {name: nightly, interval_seconds: 86400, target: "sched_jobs:sort_subjects"}
        """
    )
    with caplog.at_level(logging.INFO, logger="styxcache.scheduler"):
        scheduler = Scheduler.from_yaml(
            path, clock=clock, executor=InlineExecutor(), state_dir=tmp_path / "s"
        )
    # The cache is named when the scheduler starts.
    assert f"nightly run through the cache {cache} (default)" in caplog.text
    scheduler.run_pending()
    for _ in range(2):
        clock.advance(86_400)
        scheduler.run_pending()
    rows = sorted(scheduler.ledger.history(entry="nightly"), key=lambda r: r.nominal)
    assert [(r.hits, r.misses) for r in rows] == [(0, 1), (1, 0)]
    assert any(cache.iterdir())
    scheduler.close()


def test_the_docs_reference_is_generated_from_the_loader_table() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scheduler.md").read_text()
    begin, end = "<!-- yaml-reference:begin -->", "<!-- yaml-reference:end -->"
    assert begin in doc and end in doc
    section = doc.split(begin, 1)[1].split(end, 1)[0].strip()
    # Regenerate with: python -c "from styxcache.scheduler.config_keys import
    # render_reference; print(render_reference())"
    assert section == render_reference().strip()
    for key in (*ENTRY_FIELDS, *TOP_FIELDS):
        assert f"`{key}`" in section
