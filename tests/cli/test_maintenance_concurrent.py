"""Two `gc` runs and a `verify` at once, while real pipelines hit and commit.

None of them may fail a pipeline step, and none may fail another: cron jobs
of two users (or two hosts) on one shared cache overlap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from clihelpers import cli, make_runner, write_block
from test_gc_concurrent import _finish, _prefill, _split_json, _start_workers

from conftest import require
from styxcache.gc_safety import claim as _claim
from styxcache.hashing import ContentHasher
from styxcache.store import CacheStore, remove_tree


def _loop(command: str, log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    script = (
        'n=0; while [ ! -e "$STOP" ] || [ "$n" -lt 2 ]; do '
        f'"$CLI" {command} --json >> "{log}" || exit $?; n=$((n+1)); done'
    )
    return subprocess.Popen(
        ["sh", "-c", script], env=env, stderr=subprocess.PIPE, text=True
    )


def test_two_gcs_and_a_verify_while_pipelines_run(tmp_path: Path) -> None:
    script = shutil.which("styxcache", path=str(Path(sys.executable).parent))
    require(script is not None, "the styxcache console script (pip install -e .)")
    assert script is not None
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("subject-01\n")
    old_keys = _prefill(cache, tmp_path, source)
    stop = tmp_path / "stop"
    env = {**os.environ, "STOP": str(stop), "CLI": script, "STYXCACHE_DIR": str(cache)}
    # Empty shard folders, old enough to be swept while the others scan them.
    for n in range(40):
        shard = cache / f"{n:02x}"
        shard.mkdir(exist_ok=True)
    logs = [tmp_path / "gc1.jsonl", tmp_path / "gc2.jsonl", tmp_path / "verify.jsonl"]
    loops = [
        _loop("gc --max-size 20K --staging-age 0s", logs[0], env),
        _loop("gc --max-size 20K --staging-age 0s", logs[1], env),
        _loop("verify --full", logs[2], env),
    ]
    try:
        results = _finish(_start_workers(cache, tmp_path, source, 2, 30, "old"))
    finally:
        stop.touch()
        errors = [loop.communicate(timeout=300)[1] for loop in loops]
    assert [loop.returncode for loop in loops] == [0, 0, 0], errors
    assert all(r["problems"] == [] for r in results), results
    reports = [json.loads(d) for log in logs[:2] for d in _split_json(log.read_text())]
    removed = [item["key"] for r in reports for item in r["removed"]]
    assert removed, "gc removed nothing: the test proved nothing"
    assert len(removed) == len(set(removed)), "an entry was removed twice"
    assert set(removed) <= set(old_keys)
    verified = [json.loads(d) for d in _split_json(logs[2].read_text())]
    assert all(v["damaged"] == [] for v in verified), verified
    assert cli("verify", "--full", "--cache-dir", str(cache)).exit_code == 0


class _CollectingHasher(ContentHasher):
    """Hashes like `ContentHasher`, but `gc` takes the entry just before a read."""

    def __init__(self, store: CacheStore, key: str) -> None:
        super().__init__()
        self.store, self.key = store, key

    def hash_file(self, path: Path | str, size: int | None = None) -> str:
        claimed = _claim(self.store, self.store.entry_dir(self.key))
        if claimed is not None:
            remove_tree(claimed)
        return super().hash_file(path, size)


def test_verify_of_an_entry_gc_removes_mid_read_is_not_an_error(
    tmp_path: Path,
) -> None:
    from styxcache.cli.verify_command import _verify_one

    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    write_block(make_runner(cache, tmp_path / "scratch"), source, size=100)
    store = CacheStore(cache)
    [key] = store.iter_keys()
    assert _verify_one(store, key, True, _CollectingHasher(store, key)) is None
    assert list(store.iter_keys()) == []
