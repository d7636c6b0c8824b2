"""Smaller security findings: pickle caches, printing data, unusable ledgers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import pty
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from styxdefs import LocalRunner, Metadata

from conftest import run_tool
from styxcache import CachingRunner
from styxcache.cli import main
from styxcache.scheduler import FakeClock, InlineExecutor, Scheduler
from styxcache.scheduler.ledger import Ledger, LedgerError
from styxcache.scheduler.memo_cache import Cache, UnsafeCacheFileError, pickle_reader

# Item 7: scheduler.Cache and pickle files others could have written ----------


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def _planted_cache(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "value.pkl"
    marker = tmp_path / "code-ran"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path, marker


@pytest.mark.parametrize("how", ["group-writable", "world-writable", "other-owner"])
def test_pickle_cache_refuses_a_file_others_could_write(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, marker = _planted_cache(tmp_path)
    if how == "other-owner":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root (CI runs as root)")
        path.chmod(0o600)
        os.chown(path, 4242, -1)
    else:
        path.chmod(0o620 if how == "group-writable" else 0o602)
    with pytest.raises(UnsafeCacheFileError, match="refusing to unpickle"):
        pickle_reader(path)
    calls: list[int] = []
    cache = Cache(lambda: calls.append(1) or "fresh", dt.timedelta(hours=1), path=path)
    with caplog.at_level(logging.ERROR, logger="styxcache.scheduler.memo"):
        assert cache() == "fresh"
    assert calls == [1] and not marker.exists()
    assert "refusing to unpickle" in caplog.text and str(path) in caplog.text
    # The source's value replaced the planted file with a private one.
    assert path.stat().st_uid == os.geteuid() and not path.stat().st_mode & 0o077


def test_pickle_cache_reuses_its_own_private_file(tmp_path: Path) -> None:
    path = tmp_path / "value.pkl"
    calls: list[int] = []
    source = lambda: calls.append(1) or {"n": len(calls)}  # noqa: E731
    assert Cache(source, dt.timedelta(hours=1), path=path)() == {"n": 1}
    assert not path.stat().st_mode & 0o077  # written private
    assert Cache(source, dt.timedelta(hours=1), path=path)() == {"n": 1}
    assert calls == [1]


# Item 9: printing never interprets data ------------------------------------

ODD = "x[/]y[bold]"
TOOL = Metadata(id=ODD, name=ODD, package="p[/]")


def _odd_cache(tmp_path: Path) -> tuple[Path, str]:
    cache = tmp_path / "c[/]ache[red]"
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "styx_tmp"), cache)
    for word in ("one", "two"):  # the second is a miss with an explanation
        out = run_tool(
            runner,
            TOOL,
            {"@type": ODD, "word[/]": word},
            outputs={"out": "out[red].txt"},
            cargs=lambda _p, w=word: ["sh", "-c", f"echo {w} > 'out[red].txt'"],
        )
    key = out["out"].parent.name
    return cache, key


def test_markup_in_names_and_paths_is_printed_as_it_is(tmp_path: Path) -> None:
    cache, key = _odd_cache(tmp_path)
    listing = subprocess.run(
        ["styxcache", "ls", "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert ODD in listing.stdout and "Traceback" not in listing.stderr
    commands = [
        ["show", key],
        ["stats"],
        ["explain"],
        ["gc", "--max-entries", "0", "--keep-recent", "0s", "--dry-run"],
    ]
    for args in commands:
        result = CliRunner().invoke(main, [*args, "--cache-dir", str(cache)])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args,
            result.output,
        )
        assert result.exit_code == 0, (args, result.output)
        printed = result.output.replace("\n", "")
        assert ODD in printed or key[:12] in printed, (args, result.output)
    show = CliRunner().invoke(main, ["show", key, "--cache-dir", str(cache)])
    assert f"p[/]/{ODD}" in show.output and "out[red].txt" in show.output
    assert "word[/]" in show.output
    explain = CliRunner().invoke(main, ["explain", "--cache-dir", str(cache)])
    assert ODD in explain.output
    damaged = cache / key[:2] / key / "out[red].txt"
    damaged.chmod(0o644)
    damaged.write_text("much longer than before\n")
    verify = CliRunner().invoke(main, ["verify", "--cache-dir", str(cache)])
    assert verify.exit_code == 1, verify.output  # found damage, printed it
    assert "out[red].txt" in verify.output.replace("\n", "")


def noop(*_args: object) -> None:
    """A schedule target."""


def fail_with_markup(*_args: object) -> None:
    """A schedule target whose error message looks like rich markup."""
    raise RuntimeError("boom x[/]y[bold]")


def _on_a_terminal(*args: str) -> tuple[int, str]:
    """Run the console script with stdout on a pseudo-terminal (rich tables)."""
    master, slave = pty.openpty()
    proc = subprocess.run(
        ["styxcache", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent), "COLUMNS": "200"},
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode() + proc.stderr


def test_schedule_list_and_history_print_data_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "jobs[/]x[bold]"  # "jobs[" / "]x[bold]"
    folder.mkdir(parents=True)
    config = folder / "jobs.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            state_dir: "{folder / "state"}"
            executor: inline
            schedules:
              - name: nightly
                interval_seconds: 60
                target: test_security_misc:fail_with_markup
            """
        )
    )
    code, listed = _on_a_terminal("schedule", "list", str(config))
    assert code == 0, listed
    assert "jobs[/]x[bold]" in listed and "Traceback" not in listed
    clock = FakeClock()
    scheduler = Scheduler.from_yaml(config, clock=clock, executor=InlineExecutor())
    scheduler.run_pending()
    clock.advance(120)
    scheduler.run_pending()
    scheduler.close()
    code, history = _on_a_terminal("schedule", "history", str(config))
    assert code == 0, history
    assert "boom x[/]y[bold]" in history and "Traceback" not in history
    piped = CliRunner().invoke(main, ["schedule", "history", str(config)])
    assert piped.exit_code == 0 and "boom x[/]y[bold]" in piped.output


# The ledger: corrupt and empty files ------------------------------------------


def _config_with_state(tmp_path: Path) -> Path:
    config = tmp_path / "jobs.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            state_dir: "{tmp_path / "state"}"
            executor: inline
            schedules:
              - name: nightly
                cron: "30 2 * * *"
                target: test_security_misc:noop
            """
        )
    )
    return config


def test_a_corrupt_ledger_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    config = _config_with_state(tmp_path)
    ledger = tmp_path / "state" / "ledger.sqlite3"
    ledger.parent.mkdir()
    ledger.write_bytes(b"this is not a database, just junk " * 200)
    with pytest.raises(LedgerError, match="cannot be read") as caught:
        Ledger(ledger)
    assert str(ledger) in str(caught.value) and "To recover" in str(caught.value)
    result = CliRunner().invoke(main, ["schedule", "history", str(config)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(ledger) in result.output and "To recover" in result.output
    for command in ("history", "run"):
        run = subprocess.run(
            ["styxcache", "schedule", command, str(config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        )
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert "DatabaseError" not in run.stderr and str(ledger) in run.stderr


def test_an_empty_ledger_file_is_refused_not_taken_for_a_new_one(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "state" / "ledger.sqlite3"
    ledger.parent.mkdir()
    ledger.write_bytes(b"")
    with pytest.raises(LedgerError, match="empty file"):
        Ledger(ledger)
    assert ledger.stat().st_size == 0  # left for the user to inspect
    config = _config_with_state(tmp_path)
    result = CliRunner().invoke(main, ["schedule", "history", str(config)])
    assert result.exit_code == 1 and "empty file" in result.output


def test_a_new_ledger_is_created_whole(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite3"
    first = Ledger(path)
    second = Ledger(path)  # a twin opening the same new ledger
    first.close()
    second.close()
    tables = {
        row[0]
        for row in sqlite3.connect(path).execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert {"runs", "entries"} <= tables
    assert (
        sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".new")) == []
    )
    assert json.dumps(sorted(tables))  # the file is a real SQLite database
