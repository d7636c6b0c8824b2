"""Scheduler replicas as real processes sharing a real PostgreSQL run store.

Each replica is `styxcache schedule run CONFIG --state postgresql://...`
(password from `PGPASSWORD`, as an operator would set it). Targets append
every start to a log file, so the tests count real starts per run key and
compare them with the rows in the database. Waiting is polling for a
condition with a bounded deadline; nothing asserts on timing.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_server import USER, PgServer

HERE = Path(__file__).resolve().parent
LEASE = "2"
DEADLINE = 120.0

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll `condition` until it returns something truthy."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Cluster:
    """Replica processes of one test, the run log and the database."""

    def __init__(self, server: PgServer, database: str, folder: Path) -> None:
        self.server = server
        self.database = database
        self.folder = folder
        self.run_log = folder / "runs.log"
        self.run_log.touch()
        self.url = f"postgresql://{USER}@127.0.0.1:{server.port}/{database}"
        self.replicas: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, config: Path, count: int) -> None:
        env = {
            **os.environ,
            "PGPASSWORD": self.server.password,
            "STYX_RUN_LOG": str(self.run_log),
            "PYTHONPATH": os.pathsep.join(
                [str(HERE), os.environ.get("PYTHONPATH", "")]
            ),
            "COLUMNS": "400",  # one log record per line
        }
        for index in range(count):
            err = self.folder / f"replica{len(self.replicas)}-{index}.log"
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from styxcache.cli import main; main()",
                    "schedule",
                    "run",
                    str(config),
                    "--state",
                    self.url,
                    "--lease-seconds",
                    LEASE,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err.open("wb"),
                cwd=self.folder,
            )
            self.replicas.append((proc, err))
        for proc, err in self.replicas:
            wait_for(
                lambda p=proc, e=err: (
                    "scheduler started" in e.read_text() or p.poll() is not None
                ),
                "replicas to start",
            )
            assert proc.poll() is None, err.read_text()

    def stop(self) -> None:
        for proc, _ in self.replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, err in self.replicas:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    f"replica did not stop: {err.read_text()}"
                ) from None

    def kill_all(self) -> None:
        for proc, _ in self.replicas:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def starts(self) -> list[tuple[str, int, int, str]]:
        rows = []
        for line in self.run_log.read_text().splitlines():
            key, attempt, pid, event = line.rsplit(" ", 3)
            rows.append((key, int(attempt), int(pid), event))
        return rows

    def rows(self) -> list[dict[str, Any]]:
        dsn = self.url
        with psycopg.connect(
            dsn, password=self.server.password, row_factory=psycopg.rows.dict_row
        ) as conn:
            try:
                return conn.execute(
                    "SELECT key, entry, nominal, item, state, reason, attempt, owner"
                    " FROM styxcache.runs ORDER BY entry, nominal"
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                return []

    def stderr(self) -> str:
        return "\n".join(err.read_text() for _, err in self.replicas)


@pytest.fixture
def cluster(pg_server: PgServer, tmp_path: Path) -> Iterator[Cluster]:
    database = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    made = Cluster(pg_server, database, tmp_path)
    try:
        yield made
    finally:
        made.kill_all()
        if not pg_server.running():
            pg_server.start()
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _config(folder: Path, body: str) -> Path:
    path = folder / "schedule.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            state_dir: unused-state
            shutdown_timeout_seconds: 10
            max_sleep_seconds: 1
            executor: {kind: threads, max_workers: 8}
            """
        )
        + textwrap.dedent(body),
        encoding="utf-8",
    )
    return path


def _entries(names: list[str], target: str) -> str:
    return "schedules:\n" + "".join(
        # overlap: allow, because these tests are about claims, not overlap: a
        # catch-up burst on a loaded machine must not be skipped as
        # "previous run still running".
        f"  - {{name: {n}, interval_seconds: 1, target: '{target}',"
        " catchup: all, max_catchup: 1000, overlap: allow}\n"
        for n in names
    )


def _assert_each_fire_exactly_once(cluster: Cluster, names: list[str]) -> None:
    rows = cluster.rows()
    starts = cluster.starts()
    started = collections.Counter(
        key for key, _, _, event in starts if event == "start"
    )
    twice = {k: n for k, n in started.items() if n > 1}
    assert not twice, f"fires started more than once: {twice}"
    by_series: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(
        list
    )
    for row in rows:
        by_series[row["entry"], row["item"]].append(row)
    assert {entry for entry, _ in by_series} == set(names)
    for (name, item), fires in by_series.items():
        assert len(fires) >= 3, f"{name}#{item}: only {len(fires)} fires"
        nominals = [round(r["nominal"]) for r in fires]
        # One row per nominal second, none skipped (catchup: all).
        assert nominals == list(range(nominals[0], nominals[-1] + 1)), name
        assert {r["state"] for r in fires} == {"ok"}, [
            (r["key"], r["state"], r["reason"]) for r in fires if r["state"] != "ok"
        ]
        for row in fires:
            # The expanding fire ("*") runs no target; items and plain runs once.
            assert started[row["key"]] == (0 if item == "*" else 1), row


def test_three_replicas_run_every_fire_exactly_once(cluster: Cluster) -> None:
    names = [f"e{i}" for i in range(6)]
    fan_out = (
        "  - {name: fan, interval_seconds: 1, target: 'replica_jobs:short',"
        " expand_from: 'replica_jobs:subjects', catchup: all, max_catchup: 1000,"
        " overlap: allow}\n"
    )
    config = _config(cluster.folder, _entries(names, "replica_jobs:short") + fan_out)
    cluster.start(config, 3)
    wait_for(
        lambda: sum(r["state"] == "ok" for r in cluster.rows()) >= 60,
        "60 fires to finish",
    )
    cluster.stop()
    _assert_each_fire_exactly_once(cluster, [*names, "fan"])
    owners = {r["owner"] for r in cluster.rows()}
    assert owners, "no runs recorded"
    assert "Traceback" not in cluster.stderr()


def test_killed_replica_run_is_finished_by_another_by_the_retry_rule(
    cluster: Cluster,
) -> None:
    # One fire, a few seconds after every replica has started.
    anchor = time.time() + 12
    config = _config(
        cluster.folder,
        f"""\
        schedules:
          - name: victim
            interval_seconds: 3600
            anchor: {anchor}
            target: 'replica_jobs:hang_first'
            retries: 1
        """,
    )
    cluster.start(config, 3)
    first = wait_for(
        lambda: [s for s in cluster.starts() if s[1] == 1], "the first attempt"
    )
    key, _, pid, _ = first[0]
    victim = next(p for p, _ in cluster.replicas if p.pid == pid)
    os.kill(pid, signal.SIGKILL)
    victim.wait(timeout=30)
    wait_for(
        lambda: [s for s in cluster.starts() if s[3] == "done"],
        "a survivor to finish the retry",
    )
    cluster.stop()
    starts = [s for s in cluster.starts() if s[3] == "start"]
    assert [(k, a) for k, a, _, _ in starts] == [(key, 1), (key, 2)]
    assert starts[1][2] != pid
    (row,) = cluster.rows()
    assert (row["state"], row["attempt"]) == ("ok", 2)
    assert "retry 1 of 1" in row["reason"]
    assert "lease" in row["reason"]
    assert row["owner"].split(":")[1] == str(starts[1][2])


def test_database_restart_mid_run_runs_no_fire_twice_and_loses_none(
    cluster: Cluster, pg_server: PgServer
) -> None:
    names = [f"d{i}" for i in range(4)]
    config = _config(cluster.folder, _entries(names, "replica_jobs:short"))
    cluster.start(config, 3)
    wait_for(
        lambda: sum(r["state"] == "ok" for r in cluster.rows()) >= 12,
        "fires before the outage",
    )
    pg_server.stop("fast")  # disconnects every replica, runs in flight
    try:
        wait_for(
            lambda: all(
                "cannot reach the PostgreSQL run store" in err.read_text()
                for _, err in cluster.replicas
            ),
            "every replica to notice the outage",
        )
    finally:
        pg_server.start()
    back = time.time()
    wait_for(
        lambda: all(
            any(r["entry"] == n and r["nominal"] > back + 2 for r in cluster.rows())
            for n in names
        ),
        "fires after the restart",
    )
    cluster.stop()
    _assert_each_fire_exactly_once(cluster, names)
    log = cluster.stderr()
    for _, err in cluster.replicas:
        assert err.read_text().count("cannot reach the PostgreSQL run store") == 1
    assert log.count("reachable again") >= len(cluster.replicas)
    assert pg_server.password not in log
