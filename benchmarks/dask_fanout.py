"""Wall time of a scheduled 64-item fan-out on 1, 2 and 4 Dask workers.

    pip install 'styxcache[dask]'
    python benchmarks/dask_fanout.py              # about a minute
    python benchmarks/dask_fanout.py --items 16 --repeats 1

Each item runs one tool through `CachingRunner(LocalRunner)` built on the
worker from the entry's `runner:` settings: `sh -c 'sleep 0.2; echo ...'`,
so an item costs about 0.2 s of waiting plus the cache's own work (keying,
lease, commit). Per worker count, on a `distributed.LocalCluster` of
single-threaded worker processes on 127.0.0.1:

* cold: a fresh cache, every item a miss (the tool runs 64 times);
* warm: the next fire on the same cache, every item a hit.

Wall time is from `run_pending()` (which expands and submits) until the
ledger holds every item's outcome; the cluster is started before timing.
Median of `--repeats` runs, each on a new cache.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from styxdefs import LocalRunner, Metadata

from styxcache.scheduler import FakeClock, RunContext, Scheduler

HERE = Path(__file__).resolve().parent
TOOL = Metadata(id="sleep-echo", name="sleep-echo", package="bench")
HOUR = 3600


def items() -> list[dict[str, Any]]:
    count = int(os.environ.get("BENCH_ITEMS", "64"))
    return [{"key": f"sub-{n:03d}", "value": f"sub-{n:03d}"} for n in range(count)]


def process_item(ctx: RunContext) -> None:
    # LocalRunner logs every command at DEBUG to stderr; keep the output readable.
    logging.getLogger(LocalRunner.logger_name).setLevel(logging.WARNING)
    pause = os.environ.get("BENCH_PAUSE", "0.2")
    execution = ctx.runner.start_execution(TOOL)
    execution.params({"@type": "bench/sleep-echo", "value": ctx["value"], "p": pause})
    execution.output_file("out.txt")
    execution.run(["sh", "-c", 'sleep "$1"; echo "$0" > out.txt', ctx["value"], pause])


def one_pass(scheduler: Scheduler, clock: FakeClock, expected: int) -> float:
    clock.advance(HOUR)
    started = time.perf_counter()
    scheduler.run_pending()
    if not scheduler.drain(timeout=600):
        raise RuntimeError("fan-out did not finish within 600 s")
    took = time.perf_counter() - started
    nominal = clock.time() - clock.time() % HOUR
    rows = [
        r
        for r in scheduler.ledger.history(entry="fanout")
        if r.item != "*" and abs(r.nominal - nominal) < 1
    ]
    bad = [r for r in rows if r.state != "ok"]
    if len(rows) != expected or bad:
        raise RuntimeError(f"{len(rows)} items, {len(bad)} not ok: {bad[:1]}")
    return took


def measure(workers: int, repeats: int, count: int) -> dict[str, Any]:
    import distributed

    cold: list[float] = []
    warm: list[float] = []
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(prefix="styxcache-bench-") as tmp:
                clock = FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
                quiet = logging.getLogger("bench.quiet")
                scheduler = Scheduler(
                    clock=clock, state_dir=Path(tmp) / "state", logger=quiet
                )
                scheduler.register_task(
                    "fanout",
                    HOUR,
                    "dask_fanout:process_item",
                    expand_from="dask_fanout:items",
                    executor=client,
                    runner={"cache_dir": str(Path(tmp) / "cache")},
                    max_fanout=max(count, 1),
                )
                scheduler.run_pending()
                cold.append(one_pass(scheduler, clock, count))
                warm.append(one_pass(scheduler, clock, count))
                scheduler.close()
    return {
        "workers": workers,
        "cold_s": round(statistics.median(cold), 2),
        "warm_s": round(statistics.median(warm), 2),
        "cold_samples": [round(x, 2) for x in cold],
        "warm_samples": [round(x, 2) for x in warm],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    # Worker processes import this module by name for the target.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]
    )
    os.environ["BENCH_ITEMS"] = str(args.items)
    os.environ["BENCH_PAUSE"] = str(args.pause)
    os.environ.setdefault("STYXCACHE_MEMO_DIR", tempfile.mkdtemp(prefix="memo-"))
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    logging.getLogger("distributed").setLevel(logging.ERROR)
    results = [measure(n, args.repeats, args.items) for n in args.workers]
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "items": args.items,
        "tool_pause_s": args.pause,
        "ideal_s": {
            r["workers"]: round(args.items * args.pause / r["workers"], 2)
            for r in results
        },
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    print(f"{args.items}-item fan-out, tool sleeps {args.pause}s; {machine}")
    print(f"{'workers':>7}  {'cold (misses)':>14}  {'warm (hits)':>12}  ideal cold")
    for r in results:
        ideal = args.items * args.pause / r["workers"]
        print(
            f"{r['workers']:>7}  {r['cold_s']:>12.2f} s  {r['warm_s']:>10.2f} s"
            f"  {ideal:>8.2f} s"
        )


if __name__ == "__main__":
    main()
