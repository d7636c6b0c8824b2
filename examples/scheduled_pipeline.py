"""Rerun a small pipeline on a schedule through CachingRunner(LocalRunner).

Loads examples/schedule.yaml, whose `subjects` entry fires every 2 seconds
and fans out to one run per subject. The first fire runs every tool (misses);
the second finds nothing changed and is served from the cache (hits).

    python examples/scheduled_pipeline.py               # real clock, ~4 s
    python examples/scheduled_pipeline.py --fake-clock  # instant, same result
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

from styxdefs import LocalRunner, set_global_runner

from styxcache import CachingRunner
from styxcache.scheduler import FakeClock, InlineExecutor, RunRecord, Scheduler

HERE = Path(__file__).resolve().parent
FIRES = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work-dir", type=Path, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument("--fake-clock", action="store_true", help="simulate time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="styxcache-sched-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for subject, lines in (("sub-01", "b\na\nc\n"), ("sub-02", "z\ny\n")):
        (data / f"{subject}.txt").write_text(lines)
    os.environ["PIPELINE_DATA"] = str(data)

    set_global_runner(
        CachingRunner(LocalRunner(data_dir=work / "styx"), work / "cache")
    )

    finished: list[RunRecord] = []
    done = threading.Event()

    def on_run(record: RunRecord) -> None:
        if record.entry == "subjects":
            finished.append(record)
            if (
                len({r.nominal for r in finished}) >= FIRES
                and len(finished) >= 2 * FIRES
            ):
                done.set()

    # A fake clock advances instantly while it waits, so runs must finish
    # inside the wait: run them inline in that mode.
    clock = FakeClock(dt.datetime.now(dt.timezone.utc)) if args.fake_clock else None
    executor = InlineExecutor() if args.fake_clock else None
    scheduler = Scheduler.from_yaml(
        HERE / "schedule.yaml", clock=clock, executor=executor, state_dir=work / "state"
    )
    scheduler.on_run = on_run
    scheduler.start()
    if not done.wait(timeout=60):
        print("the schedule did not fire twice within 60 s", file=sys.stderr)
        scheduler.shutdown(timeout=5)
        return 1
    scheduler.shutdown(timeout=10)

    print(f"\n{'fire (UTC)':<28}{'subject':<10}{'state':<7}{'hits':>5}{'misses':>7}")
    by_fire: dict[float, tuple[int, int]] = {}
    for r in sorted(finished, key=lambda r: (r.nominal, r.item)):
        when = dt.datetime.fromtimestamp(r.nominal, dt.timezone.utc).isoformat()
        print(f"{when:<28}{r.item:<10}{r.state:<7}{r.hits or 0:>5}{r.misses or 0:>7}")
        hits, misses = by_fire.get(r.nominal, (0, 0))
        by_fire[r.nominal] = (hits + (r.hits or 0), misses + (r.misses or 0))
    first, second = (by_fire[k] for k in sorted(by_fire)[:2])
    print(f"\nfirst fire: {first[0]} hits, {first[1]} misses")
    print(f"second fire: {second[0]} hits, {second[1]} misses")
    print(f"ledger: {work / 'state' / 'ledger.sqlite3'}")
    ok = first == (0, 4) and second == (4, 0)
    print("second run served from the cache" if ok else "unexpected cache counts")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
