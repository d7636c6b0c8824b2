"""One contract for every `Executor`, run against each implementation.

As APScheduler runs one test suite against every data store, these tests
run against every executor a schedule can name: inline, threads, processes,
any `concurrent.futures` executor, a seed-001 dispatcher, a Dask cluster and
NATS workers (real `distributed` worker processes and a real nats-server
with a real worker process, all on 127.0.0.1). The scheduler only ever
submits `execute_run(RunRequest)`, so that is what the contract submits.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dist_helpers import LOOPBACK, Processes, lines, start_nats_worker

from conftest import require
from styxcache.scheduler import (
    DaskExecutor,
    Executor,
    FuturesExecutor,
    InlineExecutor,
    NatsDispatcher,
    NatsSettings,
    ProcessExecutor,
    ThreadExecutor,
)
from styxcache.scheduler.executors import DispatcherExecutor
from styxcache.scheduler.runs import RunContext, RunOutcome, RunRequest, execute_run

NOMINAL = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
OK, BOOM = "contract-ok", "contract-boom"
TARGETS = {OK: "dist_jobs:note_run", BOOM: "dist_jobs:boom"}
TIMEOUT = 120


@dataclass
class Subject:
    """An executor under test and what the contract may expect of it."""

    executor: Any
    owns: bool
    """It owns what runs the calls: `shutdown(wait=True)` waits for them and
    later submissions fail. (`inline` runs each call at once; a dispatcher
    belongs to the caller, who stops it.)"""
    any_call: bool
    """Runs any picklable call, not only `execute_run` (NATS sends data only)."""


class _Dispatcher:
    """A seed-001 dispatcher: runs each job on a thread of its own."""

    def dispatch(self, job: Callable[[], Any]) -> None:
        threading.Thread(target=self._run, args=(job,), daemon=True).start()

    @staticmethod
    def _run(job: Callable[[], Any]) -> None:
        # The job re-raises its target's error for the dispatcher's own
        # bookkeeping; the future already carries it.
        with contextlib.suppress(Exception):
            job()


def _dask(stack: list[Callable[[], None]]) -> Any:
    try:
        import distributed
    except ImportError:
        distributed = None
    require(
        distributed is not None, "needs distributed (pip install 'styxcache[dask]')"
    )
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        host=LOOPBACK,
        # A free loopback port (None would mean the default, 8787).
        dashboard_address=f"{LOOPBACK}:0",
    )
    stack.append(cluster.close)
    executor = DaskExecutor.connect(cluster.scheduler_address)
    executor.client.wait_for_workers(1)
    return executor


def _nats(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url: str = request.getfixturevalue("nats_url")
    key: Path = request.getfixturevalue("nats_key")
    processes: Processes = request.getfixturevalue("processes")
    allow = [f"--allow={name}={target}" for name, target in TARGETS.items()]
    start_nats_worker(
        processes,
        url,
        "contract-worker",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--key-file",
        str(key),
        "--concurrency",
        "2",
        *allow,
    )
    settings = NatsSettings(
        url=url, name="contract", lost_after_seconds=30.0, key_file=str(key)
    )
    return NatsDispatcher(settings)


KINDS = ["inline", "threads", "processes", "futures", "dispatcher", "dask", "nats"]


@pytest.fixture(params=KINDS)
def subject(
    request: pytest.FixtureRequest, tmp_path: Path, dist_env: dict[str, Path]
) -> Iterator[Subject]:
    kind = str(request.param)
    cleanup: list[Callable[[], None]] = []
    made: Subject
    if kind == "inline":
        made = Subject(InlineExecutor(), owns=False, any_call=True)
    elif kind == "threads":
        made = Subject(ThreadExecutor(2), owns=True, any_call=True)
    elif kind == "processes":
        made = Subject(ProcessExecutor(2), owns=True, any_call=True)
    elif kind == "futures":
        made = Subject(FuturesExecutor(cf.ThreadPoolExecutor(2)), True, True)
    elif kind == "dispatcher":
        made = Subject(DispatcherExecutor(_Dispatcher()), owns=False, any_call=True)
    elif kind == "dask":
        made = Subject(_dask(cleanup), owns=True, any_call=True)
    else:
        made = Subject(_nats(request, tmp_path), owns=True, any_call=False)
    try:
        yield made
    finally:
        made.executor.shutdown(wait=False, cancel_pending=True)
        for close in reversed(cleanup):
            close()


def _request(schedule: str, n: int = 0) -> RunRequest:
    context = RunContext(schedule=schedule, key=f"{schedule}@{n}", nominal_time=NOMINAL)
    return RunRequest(target=TARGETS[schedule], context=context, pass_context=True)


def _ran(dist_env: dict[str, Path]) -> list[str]:
    return [line.split()[0] for line in lines(dist_env["DIST_RUNS"])]


def test_is_an_executor(subject: Subject) -> None:
    assert isinstance(subject.executor, Executor)
    assert isinstance(subject.executor.name, str) and subject.executor.name


def test_the_outcome_comes_back_and_on_done_sees_it_once(
    subject: Subject, dist_env: dict[str, Path]
) -> None:
    seen: list[cf.Future[Any]] = []
    called = threading.Event()

    def on_done(future: cf.Future[Any]) -> None:
        seen.append(future)
        called.set()

    future = subject.executor.submit(execute_run, _request(OK), on_done=on_done)
    assert isinstance(future, cf.Future)
    outcome = future.result(timeout=TIMEOUT)
    assert isinstance(outcome, RunOutcome)
    assert outcome.ok, outcome.error
    # The callback may run on another thread just after the result is set.
    assert called.wait(TIMEOUT)
    assert seen == [future]
    assert _ran(dist_env) == [f"{OK}@0"]


def test_a_failing_target_is_a_failed_outcome_not_an_error(
    subject: Subject, dist_env: dict[str, Path]
) -> None:
    outcome = subject.executor.submit(execute_run, _request(BOOM)).result(TIMEOUT)
    assert not outcome.ok
    assert outcome.error == f"RuntimeError: {BOOM}@0 exploded on purpose"


def test_many_submissions_each_run_once(
    subject: Subject, dist_env: dict[str, Path]
) -> None:
    futures = [subject.executor.submit(execute_run, _request(OK, n)) for n in range(8)]
    outcomes = [f.result(timeout=TIMEOUT) for f in futures]
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert sorted(_ran(dist_env)) == sorted(f"{OK}@{n}" for n in range(8))


def test_a_call_that_raises_comes_back_through_the_future(subject: Subject) -> None:
    if not subject.any_call:
        with pytest.raises(TypeError, match="execute_run"):
            subject.executor.submit(int, "not a number")
        return
    # A builtin, so process and Dask workers can unpickle the call.
    error = subject.executor.submit(int, "not a number").exception(timeout=TIMEOUT)
    assert isinstance(error, ValueError)
    assert "not a number" in str(error)


def test_shutdown_waits_then_refuses_new_work(
    subject: Subject, dist_env: dict[str, Path]
) -> None:
    future = subject.executor.submit(execute_run, _request(OK))
    subject.executor.shutdown(wait=True)
    subject.executor.shutdown(wait=True)  # twice is harmless
    if not subject.owns:
        assert future.result(timeout=TIMEOUT).ok
        return
    assert future.done() and future.result().ok
    with pytest.raises(RuntimeError):
        subject.executor.submit(execute_run, _request(OK, 1))
