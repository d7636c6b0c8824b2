"""Seed 001's usage example as written, where runs go, test_mode, and run_pending.

Seed 001 builds `Scheduler(dispatcher)`: the first positional argument is where
runs go, not a routine. `run_pending()` runs the due callbacks before it returns
(seed 001 and the `schedule` library); the long-running loop keeps its pool.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from styxcache.scheduler import FakeClock, InlineExecutor, Scheduler, ThreadExecutor

SEED_001_EXAMPLE = """
from orchestrator.scheduler import Scheduler
from orchestrator.core.dispatcher import Dispatcher
dispatcher = Dispatcher()
scheduler = Scheduler(dispatcher)
def my_task():
    print("Task executed!")
# Register a task that runs every minute
scheduler.register_task("minute_task", "* * * * *", my_task)
# Run pending tasks (typically in a loop)
scheduler.run_pending()
"""

SEED_000_EXAMPLE = """
from datetime import timedelta
from pathlib import Path
from stackops.logger import get_logger
from stackops.utils.scheduler import Cache, CacheMemory, Scheduler
logger = get_logger("demo")
def fetch_snapshot() -> dict[str, float]:
    return {"btc": 100_000.0}
memory_cache = CacheMemory(
    source_func=fetch_snapshot,
    expire=timedelta(seconds=30),
    logger=logger,
)
disk_cache = Cache(
    source_func=fetch_snapshot,
    expire=timedelta(minutes=5),
    logger=logger,
    path=Path("tmp/snapshot.pkl"),
)
def routine(scheduler: Scheduler) -> None:
    logger.info("cycle=%s memory=%s", scheduler.cycle, memory_cache(fresh=False, tolerance_seconds=0))
    logger.info("cycle=%s disk=%s", scheduler.cycle, disk_cache(fresh=False, tolerance_seconds=0))
Scheduler(
    routine=routine,
    wait_ms=5_000,
    logger=logger,
    max_cycles=3,
).run()
"""

HERE = Path(__file__).resolve().parent


def test_seed_000_example_runs_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE / "seed000"))
    caplog.set_level("INFO", logger="demo")
    try:
        exec(compile(SEED_000_EXAMPLE, "seed-000", "exec"), {})
        from stackops.utils.scheduler import LAST
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "stackops"]:
            del sys.modules[name]
    (scheduler,) = LAST
    assert scheduler.cycle == 3
    assert scheduler.records[-1]["termination reason"] == "max_cycles=3 reached"
    messages = [r.getMessage() for r in caplog.records if r.name == "demo"]
    cycles = [m for m in messages if m.startswith("cycle=")]
    assert len(cycles) == 6
    assert cycles[0] == "cycle=0 memory={'btc': 100000.0}"
    assert cycles[-1] == "cycle=2 disk={'btc': 100000.0}"
    assert (tmp_path / "tmp" / "snapshot.pkl").exists()


@pytest.fixture
def seed_packages() -> Iterator[None]:
    sys.path.insert(0, str(HERE / "seed001"))
    try:
        yield
    finally:
        sys.path.remove(str(HERE / "seed001"))
        for name in [m for m in sys.modules if m.split(".")[0] == "orchestrator"]:
            del sys.modules[name]


def test_seed_001_example_runs_verbatim(seed_packages: None) -> None:
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(SEED_001_EXAMPLE, "seed-001", "exec"), namespace)
    scheduler = namespace["scheduler"]
    assert isinstance(scheduler, Scheduler)
    # Registered just now: nothing was due, so nothing ran.
    assert out.getvalue() == ""
    assert set(scheduler.jobs) == {"minute_task"}
    assert scheduler.routine is None
    scheduler.test_mode = True  # the seed's testing switch is accepted
    scheduler.close()


def test_seed_001_dispatcher_is_where_runs_go(
    seed_packages: None, clock: FakeClock
) -> None:
    from orchestrator.core.dispatcher import Dispatcher

    dispatcher = Dispatcher()
    scheduler = Scheduler(dispatcher, clock=clock)
    ran: list[str] = []
    scheduler.register_task("minute_task", "* * * * *", lambda: ran.append("x"))
    assert scheduler.run_pending() == 0
    clock.advance(60)
    assert scheduler.run_pending() == 1
    assert ran == ["x"] and len(dispatcher.dispatched) == 1
    (row,) = scheduler.ledger.history(entry="minute_task")
    assert row.state == "ok"
    scheduler.close()


def test_a_futures_executor_as_first_argument(clock: FakeClock) -> None:
    pool = cf.ThreadPoolExecutor(2)
    scheduler = Scheduler(pool, clock=clock)
    threads: list[int] = []
    scheduler.register_task("t", 60, lambda: threads.append(threading.get_ident()))
    clock.advance(60)
    assert scheduler.run_pending() == 1
    # run_pending waited: the callback ran (in the pool) before it returned.
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert scheduler.ledger.history(entry="t")[0].state == "ok"
    scheduler.close()
    pool.shutdown()


def test_dispatcher_and_executor_together_are_refused() -> None:
    with pytest.raises(TypeError, match="pass only one"):
        Scheduler(cf.ThreadPoolExecutor(1), executor=InlineExecutor())


def test_test_mode_runs_inline_in_the_calling_thread(
    seed_packages: None, clock: FakeClock
) -> None:
    from orchestrator.core.dispatcher import Dispatcher

    dispatcher = Dispatcher()
    scheduler = Scheduler(dispatcher, clock=clock)
    scheduler.test_mode = True
    threads: list[int] = []
    scheduler.register_task("t", 60, lambda: threads.append(threading.get_ident()))
    clock.advance(60)
    scheduler.run_pending()
    assert threads == [threading.get_ident()]
    assert dispatcher.dispatched == []  # no dispatcher, pool or message
    scheduler.close()


def test_run_pending_waits_for_the_pool(clock: FakeClock, tmp_path: Path) -> None:
    scheduler = Scheduler(clock=clock, state_dir=tmp_path / "s")  # default pool
    done = threading.Event()
    scheduler.register_task("t", 60, done.set)
    clock.advance(60)
    scheduler.run_pending()
    assert done.is_set()
    assert scheduler.ledger.history(entry="t")[0].state == "ok"
    scheduler.close()


def test_every_10s_through_1300_fake_seconds_fires_130_times(
    clock: FakeClock, tmp_path: Path
) -> None:
    # The default thread pool and overlap: forbid, driven faster than threads
    # could finish if run_pending did not wait for them.
    scheduler = Scheduler(clock=clock, state_dir=tmp_path / "s")
    calls: list[int] = []
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            calls.append(1)

    scheduler.register_task("tick", 10, tick)
    scheduler.run_pending()
    for _ in range(1300):
        clock.advance(1)
        scheduler.run_pending()
    assert len(calls) == 130
    assert scheduler.ledger.count_by_state("tick") == {"ok": 130}
    scheduler.close()


def test_run_pending_wait_false_hands_off(clock: FakeClock, tmp_path: Path) -> None:
    gate = threading.Event()
    scheduler = Scheduler(
        clock=clock, executor=ThreadExecutor(1), state_dir=tmp_path / "s"
    )
    scheduler.register_task("slow", 60, lambda: gate.wait(60))
    clock.advance(60)
    assert scheduler.run_pending(wait=False) == 1
    assert scheduler.ledger.history(entry="slow")[0].state == "running"
    gate.set()
    assert scheduler.drain(timeout=60)
    scheduler.close()


def test_lateness_is_measured_from_the_real_start(
    clock: FakeClock, tmp_path: Path
) -> None:
    scheduler = Scheduler(
        clock=clock, executor=InlineExecutor(), state_dir=tmp_path / "s"
    )

    def slow_start() -> None:
        clock.advance(2.0)  # the run itself takes two seconds

    scheduler.register_task("t", 60, slow_start)
    clock.advance(61.5)  # the fire at +60 s is picked up 1.5 s late
    scheduler.run_pending()
    (row,) = scheduler.ledger.history(entry="t")
    assert row.due is not None and row.started is not None and row.ended is not None
    assert row.started - row.due == pytest.approx(1.5)
    assert row.lateness == pytest.approx(1.5)
    assert row.ended - row.started == pytest.approx(2.0)
    scheduler.close()


def test_callback_may_call_run_pending(clock: FakeClock, tmp_path: Path) -> None:
    # A nested run_pending must not wait for the run it is called from.
    scheduler = Scheduler(
        clock=clock, executor=InlineExecutor(), state_dir=tmp_path / "s"
    )
    seen: list[int] = []

    def outer() -> None:
        seen.append(scheduler.run_pending())

    scheduler.register_task("outer", 60, outer)
    clock.advance(60)
    scheduler.run_pending()
    assert seen == [0]
    scheduler.close()


def test_a_herd_due_together_all_runs_once(clock: FakeClock, tmp_path: Path) -> None:
    # Fires due in the same instant go to the pool in one batch; none dropped.
    scheduler = Scheduler(
        clock=clock, executor=ThreadExecutor(4), state_dir=tmp_path / "s"
    )
    ran: list[int] = []
    lock = threading.Lock()

    def target() -> None:
        with lock:
            ran.append(1)

    due = clock.time() + 60
    for i in range(2000):
        scheduler.register_task(f"h{i}", 86_400.0, target, anchor=due)
    scheduler.run_pending()
    clock.advance(59.5)
    # Claimed half a second ahead, started at the due instant, waited for.
    assert scheduler.run_pending(lookahead=1.0) == 2000
    assert len(ran) == 2000
    assert scheduler.ledger.count_by_state() == {"ok": 2000}
    scheduler.close()
