"""`styxcache gc` from another process while real pipelines hit and commit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from clihelpers import cli, make_runner, set_last_use, write_block

from conftest import require
from styxcache.inventory import scan_entries
from styxcache.store import CacheStore

WORKER = Path(__file__).with_name("pipeline_worker.py")
OLD = 24
"""Entries made before the pipelines start, last used ten days ago."""


def _prefill(cache: Path, tmp_path: Path, source: Path) -> list[str]:
    runner = make_runner(cache, tmp_path / "prefill")
    for n in range(OLD):
        write_block(runner, source, size=4096, n=n)
    keys = sorted(CacheStore(cache).iter_keys())
    assert len(keys) == OLD
    old = time.time() - 10 * 86400
    for key in keys:
        set_last_use(cache, key, old)
    return keys


def _start_workers(
    cache: Path,
    tmp_path: Path,
    source: Path,
    count: int,
    iterations: int,
    hits: str,
    *extra: str,
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(cache),
                str(tmp_path / f"scratch{w}"),
                str(source),
                str(w),
                str(iterations),
                str(OLD),
                hits,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(count)
    ]


def _finish(workers: list[subprocess.Popen[str]]) -> list[dict[str, object]]:
    results = []
    for proc in workers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _cron_gc_while_pipelines_run(tmp_path: Path, hits: str) -> None:
    script = shutil.which("styxcache", path=str(Path(sys.executable).parent))
    require(script is not None, "the styxcache console script (pip install -e .)")
    assert script is not None
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("subject-01\n")
    old_keys = _prefill(cache, tmp_path, source)
    stop = tmp_path / "stop"
    log = tmp_path / "gc.jsonl"
    # The cron job: `styxcache gc` again and again until the pipelines are done.
    loop = (
        'n=0; while [ ! -e "$STOP" ] || [ "$n" -lt 2 ]; do '
        '"$GC" gc --max-size 20K --json >> "$LOG" || exit 1; n=$((n+1)); done'
    )
    env = {
        **os.environ,
        "STOP": str(stop),
        "GC": script,
        "LOG": str(log),
        "STYXCACHE_DIR": str(cache),
    }
    collector = subprocess.Popen(
        ["sh", "-c", loop], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        results = _finish(_start_workers(cache, tmp_path, source, 2, 40, hits))
    finally:
        stop.touch()
        _, gc_err = collector.communicate(timeout=300)
    assert collector.returncode == 0, gc_err
    assert all(r["problems"] == [] for r in results), results
    if hits == "own":
        assert all(r["hits"] >= 20 for r in results), results
    reports = [json.loads(doc) for doc in _split_json(log.read_text())]
    assert len(reports) >= 2
    removed = {item["key"] for r in reports for item in r["removed"]}
    assert removed, "gc removed nothing: the test proved nothing"
    assert removed <= set(old_keys), "only entries not used recently may go"
    # Every entry left in the cache still verifies, content and all.
    result = cli("verify", "--full", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output


def test_gc_from_cron_while_pipelines_run(tmp_path: Path) -> None:
    """Pipelines commit and hit their fresh entries; gc trims the old ones."""
    _cron_gc_while_pipelines_run(tmp_path, "own")


def test_gc_from_cron_while_pipelines_hit_the_entries_it_trims(tmp_path: Path) -> None:
    _cron_gc_while_pipelines_run(tmp_path, "old")


def test_max_size_policy_trims_while_pipelines_commit(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("subject-02\n")
    old_keys = _prefill(cache, tmp_path, source)
    before = sum(e.size for e in scan_entries(CacheStore(cache)))
    results = _finish(
        _start_workers(cache, tmp_path, source, 2, 20, "own", str(before // 2))
    )
    assert all(r["problems"] == [] for r in results), results
    left = {e.key for e in scan_entries(CacheStore(cache))}
    # The old, unused entries were trimmed; everything used by the runs stayed.
    assert len(set(old_keys) - left) > 0
    result = cli("verify", "--full", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output


def _split_json(text: str) -> list[str]:
    """Split concatenated pretty-printed JSON documents."""
    decoder = json.JSONDecoder()
    docs, index = [], 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        obj, end = decoder.raw_decode(text, index)
        docs.append(json.dumps(obj))
        index = end
    return docs


def test_export_while_gc_clears_the_cache(tmp_path: Path) -> None:
    script = shutil.which("styxcache", path=str(Path(sys.executable).parent))
    require(script is not None, "the styxcache console script (pip install -e .)")
    assert script is not None
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("subject-03\n")
    _prefill(cache, tmp_path, source)
    env = {**os.environ, "STYXCACHE_DIR": str(cache)}
    archive = tmp_path / "out.tar.gz"
    exporter = subprocess.Popen(
        [script, "export", str(archive), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    collector = subprocess.run(
        [script, "gc", "--max-entries", "0", "--keep-recent", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    out, err = exporter.communicate(timeout=300)
    assert collector.returncode == 0, collector.stderr
    if exporter.returncode == 1 and "nothing to export" in err:
        assert not archive.exists()  # gc took everything first: said, not written
        return
    assert exporter.returncode == 0, err
    exported = json.loads(out)
    # Whatever the export managed to take is whole: every entry imports and verifies.
    target = tmp_path / "other"
    result = cli("import", "--cache-dir", str(target), str(archive), "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["imported"]) == len(exported["entries"])
    assert cli("verify", "--full", "--cache-dir", str(target)).exit_code == 0
