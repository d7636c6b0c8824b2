"""Small command-line points a new user hit (issue 13, item 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import cli, make_runner, write_block


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    write_block(make_runner(cache, tmp_path / "scratch"), source, size=10)
    return cache


def test_export_with_nothing_matching_says_so_and_writes_nothing(
    cache: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "none.tar.gz"
    result = cli(
        "export", "--cache-dir", str(cache), "--tool", "no/such-tool", str(archive)
    )
    assert result.exit_code == 1
    assert "nothing to export" in result.output
    assert not archive.exists()
    assert list(tmp_path.glob("*.partial")) == []
    result = cli(
        "export", "--cache-dir", str(cache), "--used-since", "2099-01-01", str(archive)
    )
    assert result.exit_code == 1
    assert not archive.exists()


COMMANDS = [
    ("stats",),
    ("ls",),
    ("verify",),
    ("gc", "--dry-run"),
    ("clear", "--yes"),
    ("explain",),
    ("export", "x.tar.gz"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_folder_that_is_not_a_cache_is_named_as_such(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "notes.txt").write_text("mine\n")
    args = [str(tmp_path / a) if a.endswith(".tar.gz") else a for a in command[1:]]
    result = cli(command[0], "--cache-dir", str(home), *args)
    assert result.exit_code == 2
    assert "holds no styxcache cache" in " ".join(result.output.split())
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt", "thesis"]


def test_an_empty_folder_is_accepted_with_a_note(tmp_path: Path) -> None:
    empty = tmp_path / "new-cache"
    empty.mkdir()
    result = cli("ls", "--cache-dir", str(empty), "--json")
    assert result.exit_code == 0
    assert "holds no cache yet" in result.stderr
    assert json.loads(result.stdout)["total"] == 0


@pytest.mark.parametrize(
    "command",
    [("stats",), ("ls",), ("verify",), ("gc", "--dry-run"), ("explain",)],
    ids=lambda c: c[0],
)
def test_json_output_is_one_document(cache: Path, command: tuple[str, ...]) -> None:
    result = cli(command[0], "--cache-dir", str(cache), *command[1:], "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # one document, not JSON lines
    assert isinstance(document, dict)
    assert document["cache_dir"] == str(cache)
