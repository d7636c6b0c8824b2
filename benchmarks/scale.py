"""Scale benchmark: a cache of 100,000 entries (issue 14).

Builds a cache of N entries and times what a user runs on it: `stats`,
`ls --limit 50`, the first row of a full `ls`, `gc --dry-run`, a real `gc`,
`verify`, `export` and `import`, each as the console script in its own
process (what a user waits for, interpreter start-up included; the start-up
of `styxcache --help` is measured alongside). It also times a hit and a miss
through `CachingRunner` with a do-nothing base runner (it writes its one
output in-process, so no process is spawned) on a 100-entry cache and on the
big one, side by side with the bare base runner.

The entries are written the way a miss writes them (`CacheStore.stage`, the
output, `Manifest` with `scan_outputs`, `CacheStore.commit`, `record_tool`,
a miss event in the process's event file), with the key computed by
`key.build_payload`, minus running a tool; a few hundred real misses through
`CachingRunner` are mixed in. Last uses are spread over 60 days.

Usage:
    python benchmarks/scale.py                   # 100,000 entries, ~2-3 minutes
    python benchmarks/scale.py --entries 20000   # smaller
    python benchmarks/scale.py --profile ls      # cProfile one command in-process
    python benchmarks/scale.py --only commands   # one part: commands, transfer, calls
    python benchmarks/scale.py --keep DIR --only calls   # reuse a cache built before

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styxdefs import Metadata, Runner
from styxdefs.local_runner import _LocalExecution

from styxcache import CachePolicy, CachingRunner
from styxcache.catalog import record_commit
from styxcache.events import CacheEvent, EventLog
from styxcache.hashing import ContentHasher
from styxcache.key import build_payload
from styxcache.manifest import Manifest, scan_outputs
from styxcache.store import CacheStore

TOOLS = [
    Metadata(id=f"tool{t}", name=f"tool {t}", package=f"pkg{t % 7}") for t in range(100)
]
DAY = 86400.0


class _NullExecution(_LocalExecution):
    """LocalRunner's execution, but `run` writes the output in this process."""

    def run(
        self, cargs: list[str], handle_stdout: Any = None, handle_stderr: Any = None
    ) -> None:
        (self.output_dir / "out.txt").write_text(cargs[-1])


class NullRunner(Runner):
    """A do-nothing base runner: no process, one small output file."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.count = 0
        self.logger = logging.getLogger("bench.null")

    def start_execution(self, metadata: Metadata) -> _NullExecution:
        self.count += 1
        return _NullExecution(
            self.logger, self.data_dir / f"{self.count}", metadata, None
        )


def call(runner: Runner, tool: Metadata, i: int) -> None:
    """One tool call the way a NiWrap wrapper makes it."""
    execution = runner.start_execution(tool)
    execution.params({"@type": f"{tool.package}/{tool.id}", "subject": i, "fwhm": 6.0})
    execution.output_file("out.txt")
    execution.run(["write", f"subject {i}\n"])


def fill(root: Path, count: int, *, start: int = 0) -> None:
    """Write `count` entries the way a miss does, minus running a tool."""
    store = CacheStore(root)
    events = EventLog(root)
    hasher = ContentHasher()
    now = time.time()
    for i in range(start, start + count):
        tool = TOOLS[i % len(TOOLS)]
        params = {"@type": f"{tool.package}/{tool.id}", "subject": i, "fwhm": 6.0}
        payload = build_payload(
            metadata=tool,
            image=None,
            env={},
            params=params,
            inputs=[],
            extra={},
            path_params="ignore",
            hash_path=lambda p: "",
        )
        key = payload.key()
        staging = store.stage(key)
        (staging / "out.txt").write_text(f"subject {i}\n" * (1 + i % 50))
        manifest = Manifest(
            key=key,
            tool=f"{tool.package}/{tool.id}",
            payload=payload.to_json(),
            outputs=scan_outputs(
                staging, skip=store.RESERVED, hash_file=hasher.hash_file
            ),
            fingerprint="0" * 64,
            fingerprint_parts={"cargs": "write"},
            duration_s=1.0 + i % 60,
            exit_status=0,
            created=now,
            last_used=now,
            version="bench",
        )
        (staging / store.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        entry = store.commit(staging, key)
        store.record_tool(manifest.tool, key)
        events.append(
            CacheEvent("miss", manifest.tool, key, duration_s=manifest.duration_s)
        )
        used = now - DAY - (i * 7919 % (60 * 86400))
        os.utime(entry, (used, used))
        # After the folder's time is set: the catalog's row notes it, as the
        # use a hit records would (catalog.record_use).
        record_commit(root, key, entry, manifest)


def _script() -> list[str]:
    found = shutil.which("styxcache", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "styxcache.cli"]


def timed(
    args: list[str], env: dict[str, str], *, first_line: bool = False
) -> tuple[float, float, float, int]:
    """Run the console script: seconds to the first row, to the end, CPU, rc.

    The process's CPU time (user + system) is less sensitive than wall time
    to other work on a shared machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*_script(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    first = 0.0
    if first_line:
        for header, _line in enumerate(proc.stdout, start=1):
            if header == 2:  # the header line, then the first row
                first = time.perf_counter() - started
                break
    proc.stdout.read()
    rc = proc.wait()
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return first, took, cpu, rc


def _per_call(fn: Callable[[int], None], n: int) -> tuple[float, float]:
    """Median wall time and median CPU time of the calling thread, per call.

    The thread's CPU time (user + system, `time.thread_time`) is the
    library's own work: unlike wall time, it does not grow when other
    processes share the machine's cores.
    """
    wall, cpu = [], []
    for i in range(n):
        c = time.thread_time()
        t = time.perf_counter()
        fn(i)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def hit_and_miss(
    work: Path, cache: Path, label: str, calls: int = 300
) -> dict[str, float]:
    """Median per-call times: bare base runner, miss, hit (warm); wall and CPU."""
    base = NullRunner(work / f"{label}-bare")
    bare, bare_cpu = _per_call(
        lambda i: call(base, TOOLS[i % 100], 10_000_000 + i), calls
    )
    runner = CachingRunner(
        NullRunner(work / f"{label}-scratch"), cache, policy=CachePolicy()
    )
    offset = 20_000_000 + hash(label) % 1_000_000 * 1000
    miss, miss_cpu = _per_call(
        lambda i: call(runner, TOOLS[i % 100], offset + i), calls
    )
    hit, hit_cpu = _per_call(lambda i: call(runner, TOOLS[i % 100], offset + i), calls)
    return {
        "bare": bare,
        "miss": miss,
        "hit": hit,
        "bare_cpu": bare_cpu,
        "miss_cpu": miss_cpu,
        "hit_cpu": hit_cpu,
    }


def profile(command: list[str], cache: Path) -> None:
    from styxcache.cli import main

    os.environ["STYXCACHE_DIR"] = str(cache)
    prof = cProfile.Profile()
    prof.enable()
    with contextlib.suppress(SystemExit):
        main(command, standalone_mode=False)
    prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(30)


def _baseline(script: str) -> tuple[float, float]:
    """Run a shell command: wall seconds and CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return took, cpu


def _transfer(
    work: Path,
    cache: Path,
    env: dict[str, str],
    rows: list[tuple[str, str, str]],
    figures: dict[str, Any],
) -> None:
    """Time export and import of the whole cache, beside `tar` and `gzip`.

    The baselines run on the same machine at the same moment: `tar -czf` of
    the cache's entry folders (what an export holds), `gzip -dc` of the
    export (decompression alone) and `tar -xzf` of it (decompression and
    writing every file). CPU seconds are shown too: on a shared machine
    they move less than wall time.
    """
    archive = work / "all.tar.gz"
    _, total, cpu, rc = timed(["export", str(archive)], env)
    size = archive.stat().st_size if archive.exists() else 0
    shards = " ".join(p.name for p in cache.iterdir() if len(p.name) == 2)
    tar_c, tar_c_cpu = _baseline(
        f"tar -czf {work / 'plain.tar.gz'} -C {cache} {shards}"
    )
    rows.append(
        (
            "export (all)",
            f"{total:.1f} s",
            f"CPU {cpu:.1f} s; {size / 2**20:.1f} MiB; exit {rc}; "
            f"`tar -czf` of the entry folders: {tar_c:.1f} s (CPU {tar_c_cpu:.1f} s)",
        )
    )
    figures["export"] = {"total": total, "cpu": cpu, "bytes": size}
    figures["tar -czf"] = {"total": tar_c, "cpu": tar_c_cpu}
    gunzip, gunzip_cpu = _baseline(f"gzip -dc {archive} > /dev/null")
    (work / "untarred").mkdir()
    untar, untar_cpu = _baseline(f"tar -xzf {archive} -C {work / 'untarred'}")
    target = work / "imported"
    _, total, cpu, rc = timed(["import", "--cache-dir", str(target), str(archive)], env)
    rows.append(
        (
            "import (all, verifies every digest)",
            f"{total:.1f} s",
            f"CPU {cpu:.1f} s ({len(os.sched_getaffinity(0))} CPUs); exit {rc}; "
            f"`tar -xzf`: {untar:.1f} s (CPU {untar_cpu:.1f} s), "
            f"`gzip -dc`: {gunzip:.1f} s",
        )
    )
    figures["import"] = {"total": total, "cpu": cpu}
    figures["tar -xzf"] = {"total": untar, "cpu": untar_cpu}
    figures["gzip -dc"] = {"total": gunzip, "cpu": gunzip_cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="Build (or reuse) the cache here.")
    parser.add_argument("--profile", help="cProfile one command (e.g. 'ls') and stop.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--only",
        action="append",
        choices=("commands", "transfer", "calls"),
        help="Run only this part (repeatable): the commands (stats, ls, gc, "
        "verify), export/import, or the hit and miss through CachingRunner.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="Where to build the caches (default: /dev/shm, a RAM disk, so the "
        "figures show styxcache's own cost, not the disk's).",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="styx-scale-", dir=args.dir))
    cache = args.keep or work / "cache"
    rows: list[tuple[str, str, str]] = []
    figures: dict[str, Any] = {"entries": args.entries}
    try:
        if not (cache / "done-filling").exists():
            started = time.perf_counter()
            fill(cache, args.entries)
            (cache / "done-filling").write_text("")
            print(
                f"filled {args.entries} entries in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
        if args.profile:
            profile(args.profile.split(), cache)
            return 0
        parts = set(args.only or ("commands", "transfer", "calls"))
        small = work / "small"
        fill(small, 100)
        env = {**os.environ, "STYXCACHE_DIR": str(cache)}
        _, startup, _, _ = timed(["--help"], env)
        figures["startup"] = startup
        # The same system calls done by C tools, side by side: what a listing
        # (one lstat per entry folder) and a size check (one per file) cost
        # on this machine at this moment.
        for name, script in (
            (
                "baseline: `find` entry folders by mtime, 50 newest",
                f"find {cache} -mindepth 2 -maxdepth 2 -printf '%T@ %p\\n' "
                "| sort -rn | head -50",
            ),
            (
                "baseline: `find` size of every file",
                f"find {cache} -mindepth 3 -printf '%s %p\\n' > /dev/null",
            ),
        ):
            took, cpu = _baseline(script)
            figures[name] = {"total": took, "cpu": cpu}
            rows.append((name, f"{took:.2f} s", f"CPU {cpu:.2f} s"))
        commands = [
            ("stats (first run: reads every event)", ["stats"], False),
            ("stats (again)", ["stats"], False),
            ("ls --limit 50", ["ls", "--limit", "50"], False),
            ("ls (everything): first row", ["ls"], True),
            (
                "gc --dry-run --max-entries 90%",
                ["gc", "--dry-run", "--max-entries", str(args.entries * 9 // 10)],
                False,
            ),
            ("verify (sizes)", ["verify"], False),
            (
                "gc --max-entries 90% (removes 10%)",
                [
                    "gc",
                    "--max-entries",
                    str(args.entries * 9 // 10),
                    "--keep-recent",
                    "0",
                ],
                False,
            ),
        ]
        for name, argv, first in commands if "commands" in parts else []:
            first_s, total, cpu, rc = timed(argv, env, first_line=first)
            figures[name] = {"first": first_s, "total": total, "cpu": cpu, "rc": rc}
            shown = (
                f"first row after {first_s:.2f} s (whole listing {total:.1f} s)"
                if first
                else f"{total:.2f} s"
            )
            rows.append((name, shown, f"CPU {cpu:.2f} s; exit {rc}"))
            print(rows[-1], file=sys.stderr)
        if "transfer" in parts:
            _transfer(work, cache, env, rows, figures)
        for label, where in (
            (("100 entries", small), (f"{args.entries} entries", cache))
            if "calls" in parts
            else ()
        ):
            got = hit_and_miss(work, where, label.split()[0])
            figures[label] = got
            rows.append(
                (
                    f"hit, {label}",
                    f"{got['hit'] * 1e3:.3f} ms",
                    f"CPU {got['hit_cpu'] * 1e3:.3f} ms",
                )
            )
            rows.append(
                (
                    f"miss, {label}",
                    f"{(got['miss'] - got['bare']) * 1e3:.3f} ms library time",
                    f"CPU {(got['miss_cpu'] - got['bare_cpu']) * 1e3:.3f} ms; "
                    f"bare base runner {got['bare'] * 1e3:.3f} ms",
                )
            )
        print(
            f"\ninterpreter + import start-up (`styxcache --help`): {startup:.2f} s\n"
        )
        print("| operation | time | notes |\n|---|---|---|")
        for row in rows:
            print(f"| {row[0]} | {row[1]} | {row[2]} |")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
