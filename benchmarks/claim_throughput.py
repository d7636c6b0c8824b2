"""Claim throughput of the run stores: fires per second with 1 and 3 replicas.

    python benchmarks/claim_throughput.py            # starts a throwaway PostgreSQL
    python benchmarks/claim_throughput.py --dsn postgresql://user@host/db
    python benchmarks/claim_throughput.py --entries 20 --steps 50 --repeat 1  # quicker

The median of `--repeat` rounds (default 3) is reported.

Each replica is a separate process running the real `Scheduler` (inline
executor, no-op targets) on a simulated timeline that every replica shares:
`--entries` schedules fire every minute and each replica advances its
`FakeClock` one minute `--steps` times, calling `run_pending()` after each
step. So all replicas race to claim the same `entries x steps` fires: each
claim is one transaction per wake (the fires due then, plus the watermarks),
and each finished run is written back, as in production. The figure is fires
settled per second of wall time, from the moment every replica is ready to
the moment the last one is done; every fire must end up run exactly once
(checked). The SQLite ledger on the local disk is measured the same way as a
baseline (several processes on one host is all it supports).

Without `--dsn` the server comes from Debian's `postgresql` package
(`/usr/lib/postgresql/*/bin`), in a temporary folder, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from styxcache.scheduler import FakeClock, InlineExecutor, Ledger, Scheduler
from styxcache.scheduler.pg_store import PostgresStore

T0 = 1_700_000_000.0
MINUTE = 60.0


def _noop() -> None:
    return None


def _open(kind: str, where: str, schema: str) -> Any:
    if kind == "postgresql":
        return PostgresStore(where, schema=schema)
    return Ledger(Path(where) / "ledger.sqlite3")


def _replica(
    kind: str,
    where: str,
    schema: str,
    entries: int,
    steps: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    logging.disable(logging.WARNING)
    store = _open(kind, where, schema)
    clock = FakeClock(T0)
    scheduler = Scheduler(clock=clock, executor=InlineExecutor(), store=store)
    for index in range(entries):
        scheduler.register_task(f"e{index:04d}", MINUTE, _noop)
    scheduler.run_pending()  # registers the entries (not timed)
    ready.release()
    go.wait()
    started = 0
    for _ in range(steps):
        clock.advance(MINUTE)
        started += scheduler.run_pending()
    out.put((started, time.perf_counter()))
    scheduler.close()


def measure(kind: str, where: str, replicas: int, entries: int, steps: int) -> float:
    """Run `replicas` processes over one fresh store; return fires per second."""
    ctx = mp.get_context("spawn")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    folder = tempfile.mkdtemp(prefix="styx-claim-") if kind == "sqlite" else where
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_replica,
            args=(kind, folder, schema, entries, steps, ready, go, out),
        )
        for _ in range(replicas)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    begin = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    elapsed = max(end for _, end in results) - begin
    total = sum(n for n, _ in results)
    expected = entries * steps
    # The store must hold exactly one ok run per fire, however many raced.
    store = _open(kind, folder, schema)
    counts = store.count_by_state()
    store.close()
    if total != expected or counts.get("ok") != expected:
        raise SystemExit(
            f"{kind} x{replicas}: {total} starts, {counts} rows; expected {expected}"
        )
    return expected / elapsed


def _server() -> tuple[Any, str]:
    path = Path(__file__).resolve().parent.parent / "tests/scheduler/pg_server.py"
    spec = importlib.util.spec_from_file_location("pg_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bindir = module.find_bin()
    if bindir is None:
        raise SystemExit("no PostgreSQL here: apt-get install postgresql, or --dsn")
    server = module.PgServer(bindir)
    server.start(durable=True)  # fsync on, as in production
    return server, server.dsn


def main() -> None:
    """Measure and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="PostgreSQL to use (default: start one)")
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; the median is reported"
    )
    args = parser.parse_args()
    server = None
    dsn = args.dsn
    if dsn is None:
        server, dsn = _server()
    rates: dict[str, list[float]] = {}
    try:
        # Rounds interleave the four set-ups, so load from other jobs on the
        # machine hits them alike.
        for _ in range(args.repeat):
            for kind, where in (("sqlite", ""), ("postgresql", dsn)):
                for replicas in (1, 3):
                    rate = measure(kind, where, replicas, args.entries, args.steps)
                    rates.setdefault(f"{kind} x{replicas}", []).append(rate)
                    print(
                        f"{kind:>10} x{replicas}: {rate:8.1f} fires/s", file=sys.stderr
                    )
    finally:
        if server is not None:
            server.destroy()
    print(
        json.dumps(
            {
                "fires": args.entries * args.steps,
                "entries": args.entries,
                "steps": args.steps,
                "rounds": args.repeat,
                "fires_per_second_median": {
                    k: round(statistics.median(v), 1) for k, v in rates.items()
                },
                "fires_per_second_all": {
                    k: [round(x, 1) for x in v] for k, v in rates.items()
                },
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": mp.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
