"""One contract for every run store: SQLite `Ledger` and `PostgresStore`.

Each test runs against both stores (as APScheduler runs its data-store tests
against every store). `open_store()` opens another handle on the same
backing store, as a second scheduler process would. Tests that only make
sense with leases (failover, outages, schema versions) are at the end and
run on PostgreSQL only. Time comes from a `FakeClock`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_server import PgServer

from styxcache.scheduler import (
    FakeClock,
    InlineExecutor,
    Ledger,
    RunRecord,
    RunStore,
    Scheduler,
)
from styxcache.scheduler.runstore import run_key
from styxcache.scheduler.stores import StoreUnavailableError

MINUTE = 60.0
LEASE = 30.0

OpenStore = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: FakeClock,
) -> Iterator[OpenStore]:
    """Open a new handle on this test's store (one per simulated scheduler)."""
    server: PgServer | None = None
    schema = ""
    if backend == "postgresql":
        server = request.getfixturevalue("pg_server")
        schema = request.getfixturevalue("pg_schema")
    yield from _opener(server, schema, tmp_path, clock)


@pytest.fixture
def pg_open(
    pg_server: PgServer, pg_schema: str, clock: FakeClock
) -> Iterator[OpenStore]:
    """Open a new handle on this test's PostgreSQL store."""
    yield from _opener(pg_server, pg_schema, Path("/nonexistent"), clock)


def _opener(
    server: PgServer | None, schema: str, tmp_path: Path, clock: FakeClock
) -> Iterator[OpenStore]:
    opened: list[Any] = []

    def open_() -> Any:
        store: Any
        if server is None:
            store = Ledger(tmp_path / "ledger.sqlite3")
        else:
            from styxcache.scheduler.pg_store import PostgresStore

            store = PostgresStore(
                server.dsn,
                schema=schema,
                heartbeat=False,
                clock=clock.time,
                lease_seconds=LEASE,
            )
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def _stored(store: Any, name: str, signature: str) -> Any:
    """Read a schedule's stored state through the protocol (an unchanged sync)."""
    return store.sync_entries([(name, signature, True, 0.0)])[name]


def _rec(key: str, entry: str = "e", nominal: float = 0.0, **kw: Any) -> RunRecord:
    return RunRecord(key=key, entry=entry, nominal=nominal, **kw)


# ------------------------------------------------------------- the protocol


def test_is_a_run_store(open_store: OpenStore) -> None:
    assert isinstance(open_store(), RunStore)


def test_claim_creates_each_key_once_across_handles(open_store: OpenStore) -> None:
    first, second = open_store(), open_store()
    assert first.owner != second.owner
    assert first.claim([_rec("a"), _rec("b")]) == [True, True]
    assert second.claim([_rec("b"), _rec("c"), _rec("a")]) == [False, True, False]
    assert first.get("a").owner == first.owner
    assert first.get("c").owner == second.owner
    assert first.get("missing") is None


def test_concurrent_claims_from_many_threads_win_each_key_once(
    open_store: OpenStore,
) -> None:
    stores = [open_store() for _ in range(3)]
    keys = [f"k{i:03d}" for i in range(150)]
    won: dict[str, list[str]] = {k: [] for k in keys}
    lock = threading.Lock()
    barrier = threading.Barrier(len(stores))

    def claim_all(store: Any, order: list[str]) -> None:
        barrier.wait()
        for start in range(0, len(order), 10):
            chunk = order[start : start + 10]
            flags = store.claim([_rec(k) for k in chunk])
            with lock:
                for key, ok in zip(chunk, flags, strict=True):
                    if ok:
                        won[key].append(store.owner)

    threads = [
        threading.Thread(target=claim_all, args=(s, keys if i % 2 == 0 else keys[::-1]))
        for i, s in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(len(owners) == 1 for owners in won.values()), won


def test_sync_entries_rules(open_store: OpenStore) -> None:
    store = open_store()
    new = store.sync_entries([("e", "sig", True, 100.0)])["e"]
    assert (new.since, new.watermark, new.enabled) == (100.0, 100.0, True)
    store.claim([_rec("x")], {"e": 160.0})
    # Stored watermark wins over a later `now` when nothing changed.
    again = open_store().sync_entries([("e", "sig", True, 500.0)])["e"]
    assert again.watermark == 160.0
    assert again.since == 100.0
    # A new trigger does not rerun the past; history keeps `since`.
    changed = store.sync_entries([("e", "sig2", True, 600.0)])["e"]
    assert (changed.watermark, changed.since) == (600.0, 100.0)
    # Disabled, then enabled again: starts from now.
    store.sync_entries([("e", "sig2", False, 700.0)])
    enabled = store.sync_entries([("e", "sig2", True, 800.0)])["e"]
    assert (enabled.watermark, enabled.since) == (800.0, 800.0)
    restarted = store.sync_entries([("e", "sig2", True, 900.0)], restart=["e"])["e"]
    assert (restarted.watermark, restarted.since) == (900.0, 900.0)
    # Syncing it unchanged reads back what is stored.
    assert _stored(store, "e", "sig2").watermark == 900.0


def test_watermark_only_moves_forward(open_store: OpenStore) -> None:
    store = open_store()
    store.sync_entries([("e", "sig", True, 100.0)])
    store.claim([_rec("a")], {"e": 300.0})
    store.claim([_rec("b")], {"e": 200.0})
    assert _stored(open_store(), "e", "sig").watermark == 300.0


def test_update_history_and_counts(open_store: OpenStore) -> None:
    store = open_store()
    records = [
        _rec(run_key("e", float(n)), nominal=float(n), state="running")
        for n in range(5)
    ]
    records.append(_rec(run_key("f", 2.0), entry="f", nominal=2.0, state="running"))
    store.claim(records)
    done = records[1]
    done.state, done.started, done.ended = "ok", 1.5, 2.5
    done.lateness, done.hits, done.misses = 0.5, 3, 1
    failed = records[3]
    failed.state, failed.error = "failed", "ValueError: boom"
    store.update([done, failed])
    reader = open_store()
    got = reader.get(done.key)
    assert got is not None
    assert (got.state, got.started, got.ended, got.lateness) == ("ok", 1.5, 2.5, 0.5)
    assert (got.hits, got.misses) == (3, 1)
    assert reader.count_by_state() == {"running": 4, "ok": 1, "failed": 1}
    assert reader.count_by_state("e") == {"running": 3, "ok": 1, "failed": 1}
    newest = [r.key for r in reader.history(limit=3)]
    # Newest nominal first; equal nominal times by key, descending.
    assert newest == [run_key("e", 4.0), run_key("e", 3.0), run_key("f", 2.0)]
    assert [r.key for r in reader.history(state="failed")] == [failed.key]
    assert len(reader.history(entry="e", limit=None)) == 5
    assert reader.history(entry="nope") == []


def test_pause_is_stored_and_shared(open_store: OpenStore) -> None:
    store = open_store()
    store.set_paused("e", True, 100.0)
    store.set_paused("e", True, 200.0)  # already paused: keeps the first instant
    store.set_paused("never-seen", True, 150.0)
    assert open_store().paused_entries() == {"e": 100.0, "never-seen": 150.0}
    store.set_paused("e", False, 300.0)
    assert open_store().paused_entries() == {"never-seen": 150.0}


def test_runs_of_a_closed_store_are_recovered_as_interrupted(
    open_store: OpenStore, clock: FakeClock
) -> None:
    ended = open_store()
    ended.claim([_rec("a", state="running"), _rec("b", state="planned")])
    ended.close()  # its scheduler stopped without finishing them
    survivor = open_store()
    survivor.claim([_rec("mine", state="running")])
    assert survivor.recover_orphans(clock.time()) == 2
    assert {survivor.get(k).state for k in ("a", "b")} == {"interrupted"}
    assert survivor.get("a").reason
    assert survivor.get("mine").state == "running"
    assert survivor.recover_orphans(clock.time()) == 0


# --------------------------------------------------------- with a scheduler


def _scheduler(store: Any, clock: FakeClock) -> Scheduler:
    return Scheduler(
        clock=clock,
        executor=InlineExecutor(),
        store=store,
        logger=logging.getLogger("test.contract"),
    )


def _states(store: Any, entry: str) -> list[str]:
    return [r.state for r in sorted(store.history(entry=entry, limit=None), key=_n)]


def _n(record: RunRecord) -> float:
    return record.nominal


def test_scheduler_runs_fires_on_time(open_store: OpenStore, clock: FakeClock) -> None:
    scheduler = _scheduler(open_store(), clock)
    ran: list[float] = []
    scheduler.register_task("e", MINUTE, lambda: ran.append(clock.time()))
    for _ in range(4):
        scheduler.run_pending()
        clock.advance(MINUTE)
    scheduler.run_pending()
    assert len(ran) == 4
    rows = scheduler.ledger.history(entry="e", limit=None)
    assert [r.state for r in rows] == ["ok"] * 4
    assert all(r.lateness == 0.0 for r in rows)


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        ("latest", ["ok"] + ["coalesced"] * 4 + ["ok"]),
        ("all", ["ok"] * 6),
        ("none", ["ok"] + ["missed"] * 4 + ["ok"]),
    ],
)
def test_restart_catches_up_from_the_stored_watermark(
    open_store: OpenStore, clock: FakeClock, catchup: str, expected: list[str]
) -> None:
    first = _scheduler(open_store(), clock)
    first.register_task("e", MINUTE, lambda: None, catchup=catchup)
    first.run_pending()
    clock.advance(MINUTE)
    first.run_pending()
    first.close()
    # Five fires while down: four past grace, the newest 30 s late (on time).
    clock.advance(4 * MINUTE + 90)
    second = _scheduler(open_store(), clock)
    second.register_task("e", MINUTE, lambda: None, catchup=catchup)
    second.run_pending()
    assert _states(second.ledger, "e") == expected


def test_two_schedulers_sharing_a_store_run_each_fire_once(
    open_store: OpenStore, clock: FakeClock
) -> None:
    ran: list[str] = []
    schedulers = [_scheduler(open_store(), clock) for _ in range(2)]
    for index, scheduler in enumerate(schedulers):
        scheduler.register_task(
            "e", MINUTE, lambda i=index: ran.append(f"s{i}@{clock.time()}")
        )
    for step in range(6):
        for scheduler in schedulers if step % 2 else schedulers[::-1]:
            scheduler.run_pending()
        clock.advance(MINUTE)
    assert len(ran) == 5
    assert {r.split("@")[1] for r in ran} == {
        str(r.nominal) for r in schedulers[0].ledger.history(entry="e")
    }
    assert _states(schedulers[1].ledger, "e") == ["ok"] * 5


def test_fan_out_items_are_claimed_once(
    open_store: OpenStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def items() -> list[dict[str, str]]:
        return [{"key": "s1"}, {"key": "s2"}, {"key": "s3"}]

    schedulers = [_scheduler(open_store(), clock) for _ in range(2)]
    for scheduler in schedulers:
        scheduler.register_task(
            "fan",
            MINUTE,
            lambda ctx: seen.append(ctx.item_key),
            expand_from=items,
            pass_context=True,
        )
    for scheduler in schedulers:
        scheduler.run_pending()
    clock.advance(MINUTE)
    for scheduler in schedulers:
        scheduler.run_pending()
    assert sorted(seen) == ["s1", "s2", "s3"]
    rows = schedulers[0].ledger.history(entry="fan", limit=None)
    assert sorted(r.item for r in rows) == ["*", "s1", "s2", "s3"]


def test_pause_on_one_scheduler_holds_for_all(
    open_store: OpenStore, clock: FakeClock
) -> None:
    ran: list[str] = []
    schedulers = [_scheduler(open_store(), clock) for _ in range(2)]
    for index, scheduler in enumerate(schedulers):
        scheduler.register_task("e", MINUTE, lambda i=index: ran.append(f"s{i}"))
        scheduler.run_pending()
    schedulers[0].pause("e")
    clock.advance(MINUTE)
    for scheduler in schedulers[::-1]:
        scheduler.run_pending()
    assert ran == []
    schedulers[1].resume("e")
    clock.advance(MINUTE)
    for scheduler in schedulers:
        scheduler.run_pending()
    assert len(ran) == 1
    assert _states(schedulers[0].ledger, "e") == ["skipped", "ok"]


def test_trigger_now_is_recorded_like_a_fire(
    open_store: OpenStore, clock: FakeClock
) -> None:
    ran: list[float] = []
    scheduler = _scheduler(open_store(), clock)
    scheduler.register_task("e", 3600.0, lambda: ran.append(clock.time()))
    scheduler.run_pending()
    clock.advance(5)
    (record,) = scheduler.trigger("e")
    assert ran == [clock.time()]
    stored = open_store().get(record.key)
    assert stored is not None
    assert (stored.state, stored.reason) == ("ok", "triggered by hand")


# -------------------------------------------- PostgreSQL: leases and outages


def test_a_lapsed_lease_is_taken_over_by_the_retry_rule(
    pg_open: OpenStore, clock: FakeClock
) -> None:
    dead, survivor = pg_open(), pg_open()
    record = _rec("e@1", nominal=1.0, state="running", started=clock.time())
    assert dead.claim([record]) == [True]
    clock.advance(LEASE / 2)
    survivor.heartbeat()
    assert survivor.adopt_orphans(clock.time(), {"e": 1}) == []  # lease still valid
    clock.advance(LEASE)
    survivor.heartbeat()
    (taken,) = survivor.adopt_orphans(clock.time(), {"e": 1})
    adopted, attempt = taken
    assert attempt == 2
    assert adopted.owner == survivor.owner
    assert "retry 1 of 1" in adopted.reason
    # The dead one's late write is fenced off.
    record.state = "ok"
    dead.update([record])
    assert survivor.get("e@1").state == "running"
    # The survivor dies too: no retries left, so it is interrupted.
    third = pg_open()
    clock.advance(3 * LEASE)
    third.heartbeat()
    assert third.adopt_orphans(clock.time(), {"e": 1}) == []
    row = third.get("e@1")
    assert row.state == "interrupted"
    assert "no retries left of 1" in row.reason


def test_a_survivor_scheduler_restarts_lost_runs_and_items(
    pg_open: OpenStore, clock: FakeClock
) -> None:
    subjects = [{"key": "s1", "age": 30}, {"key": "s2", "age": 41}]
    seen: list[tuple[str, int, dict[str, Any]]] = []

    def target(ctx: Any) -> None:
        seen.append((ctx.key, ctx.attempt, dict(ctx.item)))

    survivor = _scheduler(pg_open(), clock)
    survivor.register_task(
        "fan",
        3600.0,
        target,
        expand_from=lambda: subjects,
        pass_context=True,
        retries=1,
    )
    survivor.register_task("plain", 3600.0, target, pass_context=True)
    survivor.run_pending()
    # Another scheduler claimed these, then died: a running item, a running
    # plain run and a queued one that never started.
    dead = pg_open()
    nominal = clock.time()
    dead.claim(
        [
            _rec(
                run_key("fan", nominal, "s2"),
                "fan",
                nominal,
                item="s2",
                state="running",
            ),
            _rec(run_key("plain", nominal), "plain", nominal, state="running"),
            _rec(run_key("plain", nominal + 1), "plain", nominal + 1, state="planned"),
        ]
    )
    clock.advance(2 * LEASE)
    survivor.ledger.heartbeat()
    survivor.run_pending()
    assert sorted(seen) == [
        (run_key("fan", nominal, "s2"), 2, {"key": "s2", "age": 41}),
        (run_key("plain", nominal + 1), 1, {}),
    ]
    plain = survivor.ledger.get(run_key("plain", nominal))
    assert plain.state == "interrupted"  # retries: 0
    assert survivor.ledger.get(run_key("fan", nominal, "s2")).state == "ok"


def test_no_take_over_until_connected_for_a_whole_lease(
    pg_open: OpenStore, clock: FakeClock
) -> None:
    dead = pg_open()
    dead.claim([_rec("e@1", state="running")])
    clock.advance(10 * LEASE)
    newcomer = pg_open()  # connected just now: others may not have renewed
    assert newcomer.adopt_orphans(clock.time(), {"e": 0}) == []
    clock.advance(LEASE)
    assert newcomer.adopt_orphans(clock.time(), {"e": 0}) == []  # marked, not adopted
    assert newcomer.get("e@1").state == "interrupted"


def test_only_known_entries_are_taken_over(
    pg_open: OpenStore, clock: FakeClock
) -> None:
    dead, survivor = pg_open(), pg_open()
    dead.claim([_rec("other@1", entry="other", state="running")])
    clock.advance(2 * LEASE)
    survivor.heartbeat()
    assert survivor.adopt_orphans(clock.time(), {"e": 3}) == []
    assert survivor.get("other@1").state == "running"


def test_schema_is_versioned_and_upgraded(
    pg_server: PgServer, pg_schema: str, clock: FakeClock
) -> None:
    import psycopg

    from styxcache.scheduler import pg_store
    from styxcache.scheduler.pg_schema import _MIGRATIONS

    # A database left at version 1 by an older styxcache.
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_schema}")
        conn.execute(f"CREATE TABLE {pg_schema}.schema_version (version INTEGER)")
        for statement in _MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(statement.replace("{s}", pg_schema))
        conn.execute(f"INSERT INTO {pg_schema}.schema_version VALUES (1)")
    store = pg_store.PostgresStore(pg_server.dsn, schema=pg_schema, heartbeat=False)
    store.set_paused("e", True, 1.0)
    assert store.paused_entries() == {"e": 1.0}
    store.close()
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        versions = conn.execute(
            f"SELECT version FROM {pg_schema}.schema_version ORDER BY 1"
        ).fetchall()
        assert [v for (v,) in versions] == list(range(1, pg_store.SCHEMA_VERSION + 1))
        conn.execute(f"INSERT INTO {pg_schema}.schema_version VALUES (999)")
    with pytest.raises(RuntimeError, match="schema version 999"):
        pg_store.PostgresStore(pg_server.dsn, schema=pg_schema, heartbeat=False)


def test_outage_stops_claiming_warns_once_and_catches_up(
    pg_open: OpenStore,
    clock: FakeClock,
    pg_server: PgServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = pg_open()
    scheduler = _scheduler(store, clock)
    ran: list[float] = []
    scheduler.register_task("e", MINUTE, lambda: ran.append(clock.time()))
    scheduler.run_pending()
    clock.advance(MINUTE)
    scheduler.run_pending()
    assert len(ran) == 1
    pg_server.stop()
    try:
        for _ in range(4):
            clock.advance(MINUTE)
            assert scheduler.run_pending() == 0  # claims nothing, raises nothing
        with pytest.raises(StoreUnavailableError):
            store.get("x")
    finally:
        pg_server.start()
    clock.advance(30)
    scheduler.run_pending()
    # Down from fire 2 to fire 5: catchup=latest runs the newest, coalesces the rest.
    assert _states(store, "e") == ["ok", "coalesced", "coalesced", "coalesced", "ok"]
    assert len(ran) == 2
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "styxcache.scheduler.pg_store" and "cannot reach" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "not claiming fires" in warnings[0]
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert pg_server.password not in caplog.text


def test_results_of_runs_that_end_during_an_outage_are_kept(
    pg_open: OpenStore, pg_server: PgServer
) -> None:
    store = pg_open()
    record = _rec("e@1", state="running")
    store.claim([record])
    pg_server.stop()
    try:
        record.state = "ok"
        store.update([record])  # kept, not raised
    finally:
        pg_server.start()
    assert store.heartbeat()
    assert pg_open().get("e@1").state == "ok"


def test_the_password_never_reaches_messages(
    pg_server: PgServer, pg_schema: str
) -> None:
    from styxcache.scheduler.pg_store import PostgresStore
    from styxcache.scheduler.stores import mask_dsn

    wrong = pg_server.dsn.replace(pg_server.password, "Wr0ngSecret")
    with pytest.raises(StoreUnavailableError) as caught:
        PostgresStore(wrong, schema=pg_schema, heartbeat=False)
    assert "Wr0ngSecret" not in str(caught.value)
    assert "password" in str(caught.value) or "authentication" in str(caught.value)
    assert pg_server.password not in mask_dsn(pg_server.dsn)
    store = PostgresStore(pg_server.dsn, schema=pg_schema, heartbeat=False)
    assert pg_server.password not in store.where
    store.close()


# ------------------------------------------------ selecting the store (YAML, CLI)


def test_yaml_state_and_cli_select_the_postgres_store(
    pg_server: PgServer,
    clock: FakeClock,
    write_yaml: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psycopg
    from click.testing import CliRunner

    from styxcache.cli import main as cli_main
    from styxcache.scheduler.pg_store import PostgresStore

    # The password comes from PGPASSWORD, not the file.
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    url = pg_server.dsn.replace(f":{pg_server.password}@", "@")
    config = write_yaml(
        f"""\
        state: {url}
        schedules:
          - name: yaml-entry
            interval_seconds: 60
            target: sched_jobs:record
        """
    )
    try:
        scheduler = Scheduler.from_yaml(config, clock=clock, executor=InlineExecutor())
        assert isinstance(scheduler.ledger, PostgresStore)
        assert pg_server.password not in scheduler.ledger.where
        scheduler.run_pending()
        clock.advance(MINUTE)
        scheduler.run_pending()
        scheduler.close()
        result = CliRunner().invoke(
            cli_main, ["schedule", "history", str(config), "--json"]
        )
        assert result.exit_code == 0, result.output
        assert '"entry": "yaml-entry"' in result.output
        result = CliRunner().invoke(
            cli_main,
            ["schedule", "history", str(config), "--store", url, "--entry", "nope"],
        )
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(
            cli_main, ["schedule", "run", str(config), "--state", "/tmp/folder"]
        )
        assert result.exit_code != 0
        assert "postgresql://" in result.output
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS styxcache CASCADE")


def test_state_must_be_a_database_url(write_yaml: Callable[[str], Path]) -> None:
    from styxcache.scheduler import ConfigError, load_config

    config = write_yaml(
        """\
        state: /mnt/nfs/state
        schedules: []
        """
    )
    with pytest.raises(ConfigError, match=r"state.*postgresql://"):
        load_config(config)


def test_store_and_ledger_are_one_setting(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not both"):
        Scheduler(store=Ledger(":memory:"), ledger=Ledger(":memory:"))


def test_masked_dsn_never_shows_a_password() -> None:
    from styxcache.scheduler.stores import mask_dsn

    assert mask_dsn("postgresql://u:s3cret@db:5433/x") == (
        "host=db port=5433 dbname=x user=u"
    )
    assert "s3cret" not in mask_dsn("host=db password=s3cret user=u")
    assert "s3cret" not in mask_dsn("postgresql://u:s3cret@db:bad:port/x?=")


def test_open_store_gives_the_sqlite_ledger_for_a_folder(tmp_path: Path) -> None:
    from styxcache.scheduler.stores import open_store as open_named

    store = open_named(tmp_path / "state")
    try:
        assert isinstance(store, Ledger)
        assert store.path == tmp_path / "state" / "ledger.sqlite3"
    finally:
        store.close()
