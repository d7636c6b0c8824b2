"""Benchmark styxcache.scheduler against APScheduler 3.11, side by side.

    pip install 'styxcache[bench]'          # apscheduler 3.11
    python benchmarks/scheduler_bench.py    # about two minutes
    python benchmarks/scheduler_bench.py --quick

Four measurements, each run on both schedulers in turn in this process:

1. registering 10,000 cron entries (ours: register_task plus the first
   run_pending, which persists them and computes their next fires; theirs:
   add_job on a started, paused BackgroundScheduler), median of 3;
2. CPU used while idle with 1,000 daily entries registered, over 5 s;
3. lateness (callback start minus nominal time) of 600 fires spread over
   30 s, 10 worker threads each;
4. a herd of 10,000 entries due in the same second, three times each: how
   many run, how many are dropped, how long until the last one was handed
   to the pool (the dispatch; goal: under 0.5 s) and until the last
   callback started.

Goal for 1: ours at least 4x faster (the speed-up is printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor as ApsThreadPool
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger as ApsCron
from apscheduler.triggers.date import DateTrigger

from styxcache.scheduler import RunContext, Scheduler, ThreadExecutor

UTC = dt.timezone.utc
QUIET = logging.getLogger("bench.quiet")
QUIET.setLevel(logging.ERROR)
QUIET.propagate = False
logging.getLogger("apscheduler").setLevel(logging.ERROR)


def crons(n: int) -> list[str]:
    # Varied expressions, so no scheduler can get away with one computation.
    return [f"{i % 60} {(i // 60) % 24} * * {i % 7}" for i in range(n)]


def noop() -> None:
    pass


# ---------------------------------------------------------------- 1. register


def register_ours(n: int, state: Path) -> float:
    scheduler = Scheduler(executor=ThreadExecutor(10), state_dir=state, logger=QUIET)
    started = time.perf_counter()
    for i, expr in enumerate(crons(n)):
        scheduler.register_task(f"job{i}", expr, noop)
    scheduler.run_pending()
    took = time.perf_counter() - started
    scheduler.close()
    return took


def register_aps(n: int) -> float:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start(paused=True)
    started = time.perf_counter()
    for i, expr in enumerate(crons(n)):
        scheduler.add_job(
            noop, ApsCron.from_crontab(expr, timezone="UTC"), id=f"job{i}"
        )
    took = time.perf_counter() - started
    scheduler.shutdown(wait=False)
    return took


# -------------------------------------------------------------------- 2. idle


def idle_cpu(start: Callable[[], Callable[[], None]], seconds: float) -> float:
    stop = start()
    time.sleep(0.5)  # let start-up work finish before measuring
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    stop()
    return cpu / wall


def idle_ours(state: Path) -> Callable[[], None]:
    scheduler = Scheduler(executor=ThreadExecutor(10), state_dir=state, logger=QUIET)
    for i in range(1000):
        scheduler.register_task(f"daily{i}", f"{i % 60} 3 * * *", noop)
    scheduler.start()
    return lambda: (scheduler.shutdown(timeout=5), scheduler.ledger.close())  # type: ignore[func-returns-value]


def idle_aps() -> Callable[[], None]:
    scheduler = BackgroundScheduler(timezone="UTC")
    for i in range(1000):
        scheduler.add_job(
            noop, ApsCron.from_crontab(f"{i % 60} 3 * * *", timezone="UTC")
        )
    scheduler.start()
    return lambda: scheduler.shutdown(wait=False)


# ---------------------------------------------------------------- 3. lateness


def spread_times(n: int, span: float, lead: float) -> list[float]:
    rng = random.Random(8)
    base = time.time() + lead
    # Whole milliseconds, so both schedulers see exactly the same instants.
    return sorted(round(base + rng.uniform(0, span), 3) for _ in range(n))


def lateness_ours(times: list[float], state: Path) -> list[float]:
    late: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def target(ctx: RunContext) -> None:
        delay = time.time() - ctx.nominal_time.timestamp()
        with lock:
            late.append(delay)
            if len(late) == len(times):
                done.set()

    scheduler = Scheduler(executor=ThreadExecutor(10), state_dir=state, logger=QUIET)
    for i, when in enumerate(times):
        # A one-off fire: a long period anchored at the instant.
        scheduler.register_task(
            f"f{i}", 86_400.0, target, anchor=when, pass_context=True
        )
    scheduler.start()
    done.wait(timeout=times[-1] - time.time() + 30)
    scheduler.shutdown(timeout=5)
    scheduler.ledger.close()
    return late


def lateness_aps(times: list[float]) -> list[float]:
    late: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def target(nominal: float) -> None:
        delay = time.time() - nominal
        with lock:
            late.append(delay)
            if len(late) == len(times):
                done.set()

    scheduler = BackgroundScheduler(
        timezone="UTC", executors={"default": ApsThreadPool(10)}
    )
    scheduler.start()
    for when in times:
        run_date = dt.datetime.fromtimestamp(when, UTC)
        scheduler.add_job(target, DateTrigger(run_date), args=[when])
    done.wait(timeout=times[-1] - time.time() + 30)
    scheduler.shutdown(wait=False)
    return late


# -------------------------------------------------------------------- 4. herd


def herd_ours(n: int, lead: float, state: Path) -> dict[str, float]:
    starts: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def target() -> None:
        now = time.time()
        with lock:
            starts.append(now)
            if len(starts) == n:
                done.set()

    due = float(int(time.time() + lead))
    pool = _TimedThreads(10)
    scheduler = Scheduler(executor=pool, state_dir=state, logger=QUIET)
    for i in range(n):
        scheduler.register_task(f"h{i}", 86_400.0, target, anchor=due)
    scheduler.run_pending()  # persist before the herd comes due
    scheduler.start()
    done.wait(timeout=due - time.time() + 30)
    scheduler.shutdown(timeout=10)
    counts = scheduler.ledger.count_by_state()
    scheduler.ledger.close()
    return {
        "ran": len(starts),
        "dropped": n - len(starts),
        "dispatch_s": (max(starts) - due) if starts else float("nan"),
        "handed_s": pool.last - due,
        "ledger_ok": counts.get("ok", 0),
    }


class _TimedThreads(ThreadExecutor):
    """Our thread pool, noting when the last run was handed to it."""

    last = float("nan")

    def submit(self, fn: Any, arg: Any, /, on_done: Any = None) -> Any:
        self.last = time.time()
        return super().submit(fn, arg, on_done=on_done)

    def submit_many(self, calls: Any) -> Any:
        futures = super().submit_many(calls)
        self.last = time.time()
        return futures


class _TimedApsPool(ApsThreadPool):  # type: ignore[misc]
    """APScheduler's thread pool, noting when the last job was handed to it."""

    last = float("nan")

    def _do_submit_job(self, job: Any, run_times: Any) -> Any:
        self.last = time.time()
        return super()._do_submit_job(job, run_times)


def herd_aps(n: int, lead: float) -> dict[str, float]:
    starts: list[float] = []
    missed: list[int] = []
    lock = threading.Lock()
    finished = threading.Event()

    def target() -> None:
        now = time.time()
        with lock:
            starts.append(now)
            if len(starts) + len(missed) == n:
                finished.set()

    def on_missed(_event: Any) -> None:
        with lock:
            missed.append(1)
            if len(starts) + len(missed) == n:
                finished.set()

    due = float(int(time.time() + lead))
    pool = _TimedApsPool(10)
    scheduler = BackgroundScheduler(timezone="UTC", executors={"default": pool})
    scheduler.add_listener(on_missed, EVENT_JOB_MISSED)
    scheduler.start()
    run_date = dt.datetime.fromtimestamp(due, UTC)
    for _ in range(n):
        scheduler.add_job(target, DateTrigger(run_date))
    finished.wait(timeout=due - time.time() + 30)
    scheduler.shutdown(wait=False)
    return {
        "ran": len(starts),
        "dropped": len(missed),
        "dispatch_s": (max(starts) - due) if starts else float("nan"),
        "handed_s": pool.last - due,
    }


# -------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> str:
    return (
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, seconds long"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    n_register = 1000 if args.quick else 10_000
    n_herd = 1000 if args.quick else 10_000
    n_spread, span = (60, 3.0) if args.quick else (600, 30.0)
    idle_s = 1.0 if args.quick else 5.0
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    print(f"machine: {results['machine']}")

    with tempfile.TemporaryDirectory(prefix="sched-bench-") as tmp:
        root = Path(tmp)
        counter = iter(range(1_000_000))

        def fresh() -> Path:
            return root / f"state{next(counter)}"

        ours_reg, aps_reg = [], []
        for _ in range(3):  # alternate, so drift in machine load hits both
            ours_reg.append(register_ours(n_register, fresh()))
            aps_reg.append(register_aps(n_register))
        reg = {
            "ours_s": statistics.median(ours_reg),
            "aps_s": statistics.median(aps_reg),
        }
        reg["ratio_ours_over_aps"] = reg["ours_s"] / reg["aps_s"]
        results["register"] = reg
        reg["speedup"] = reg["aps_s"] / reg["ours_s"]
        print(
            f"\n1. register {n_register} cron entries (median of 3): "
            f"ours {reg['ours_s']:.3f} s, APScheduler {reg['aps_s']:.3f} s, "
            f"ours is {reg['speedup']:.1f}x faster (goal: >= 4x)"
        )

        idle = {
            "ours_cpu_fraction": idle_cpu(lambda: idle_ours(fresh()), idle_s),
            "aps_cpu_fraction": idle_cpu(idle_aps, idle_s),
        }
        results["idle"] = idle
        print(
            f"2. idle CPU with 1000 daily entries over {idle_s:.0f} s: "
            f"ours {idle['ours_cpu_fraction'] * 100:.3f} %, "
            f"APScheduler {idle['aps_cpu_fraction'] * 100:.3f} % of one core"
        )

        times = spread_times(n_spread, span, lead=2.0)
        late_ours = lateness_ours(times, fresh())
        times = spread_times(n_spread, span, lead=1.0)
        late_aps = lateness_aps(times)
        spread: dict[str, float] = {}
        for name, values in (("ours", late_ours), ("aps", late_aps)):
            spread[f"{name}_fired"] = len(values)
            spread[f"{name}_p50_ms"] = (
                pct(values, 0.50) * 1000 if values else float("nan")
            )
            spread[f"{name}_p99_ms"] = (
                pct(values, 0.99) * 1000 if values else float("nan")
            )
            spread[f"{name}_max_ms"] = max(values) * 1000 if values else float("nan")
        results["spread"] = spread
        print(
            f"3. lateness of {n_spread} fires over {span:.0f} s: "
            f"ours p50 {spread['ours_p50_ms']:.2f} ms, p99 {spread['ours_p99_ms']:.2f} ms, "
            f"max {spread['ours_max_ms']:.2f} ms ({spread['ours_fired']:.0f} fired); "
            f"APScheduler p50 {spread['aps_p50_ms']:.2f} ms, p99 {spread['aps_p99_ms']:.2f} ms, "
            f"max {spread['aps_max_ms']:.2f} ms ({spread['aps_fired']:.0f} fired)"
        )

        runs: dict[str, list[dict[str, float]]] = {"ours": [], "aps": []}
        for _ in range(3):  # alternate; the machine's load drifts
            runs["ours"].append(herd_ours(n_herd, 6.0, fresh()))
            runs["aps"].append(herd_aps(n_herd, 4.0))
        herd = {
            name: {
                "ran_total": sum(r["ran"] for r in rs),
                "dropped_total": sum(r["dropped"] for r in rs),
                "median_last_start_s": statistics.median(r["dispatch_s"] for r in rs),
                "median_last_handed_s": statistics.median(r["handed_s"] for r in rs),
                "runs": rs,
            }
            for name, rs in runs.items()
        }
        results["herd"] = herd
        for name, label in (("ours", "ours"), ("aps", "APScheduler")):
            h = herd[name]
            print(
                f"4. herd of {n_herd} due in one second x3, {label}: "
                f"ran {h['ran_total']:.0f}, dropped {h['dropped_total']:.0f}, "
                f"last handed to the pool {h['median_last_handed_s']:.3f} s and "
                f"last callback started {h['median_last_start_s']:.3f} s after due"
                " (medians)"
            )

    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
