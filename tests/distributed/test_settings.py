"""Entry settings for distributed runs: validation, wire format, process pools."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
from dist_helpers import lines

from styxcache.scheduler import (
    ConfigError,
    FakeClock,
    InlineExecutor,
    ProcessExecutor,
    RunContext,
    RunnerSpec,
    RunOutcome,
    Scheduler,
    load_config,
)
from styxcache.scheduler.runs import RunRequest
from styxcache.scheduler.wire import (
    WireError,
    decode_report,
    decode_task,
    encode_report,
    encode_task,
)

HOUR = 3600


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedule.yaml"
    path.write_text(textwrap.dedent(text))
    return path


ENTRY = textwrap.dedent(
    """\
    schedules:
      - name: subjects
        interval_seconds: 3600
        target: dist_jobs:run_item
    """
)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("executor: dask:/nohost", "schedule 'subjects', field 'executor'"),
        ("executor: gpus", "schedule 'subjects', field 'executor'"),
        ("runner: {cache: /x}", "schedule 'subjects', field 'runner.cache'"),
        ("runner: {base: local}", "schedule 'subjects', field 'runner.cache_dir'"),
        ("runner: {cache_dir: c, base: docker}", "field 'runner.base'"),
        (
            "runner: {cache_dir: c, policy: {verify: all}}",
            "field 'runner.policy.verify'",
        ),
        ("runner: {cache_dir: c, policy: {hasher: x}}", "field 'runner.policy.hasher'"),
        (
            "runner: {cache_dir: c, policy: {lease_seconds: -1}}",
            "field 'runner.policy.lease_seconds'",
        ),
        ("retries: -1", "schedule 'subjects', field 'retries'"),
        ("retries: 1.5", "schedule 'subjects', field 'retries'"),
        ("dispatch: kafka", "schedule 'subjects', field 'dispatch'"),
        ("{dispatch: nats, executor: threads}", "field 'dispatch'"),
    ],
)
def test_bad_distributed_settings_name_entry_and_field(
    tmp_path: Path, dist_env: dict[str, Path], extra: str, where: str
) -> None:
    pairs = extra.strip("{}").split(", ") if extra.startswith("{") else [extra]
    body = ENTRY + "".join(f"    {pair}\n" for pair in pairs)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "nats: nats://127.0.0.1:4222\n" + body))
    assert where in str(caught.value)
    assert not (tmp_path / ".styxcache-schedule").exists()  # nothing written


def test_nats_settings_default_and_are_checked(
    tmp_path: Path, dist_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seeds 002/003's files name no server: the environment's, else loopback.
    monkeypatch.delenv("STYXCACHE_NATS_URL", raising=False)
    config = load_config(write(tmp_path, ENTRY + "    dispatch: nats\n"))
    assert config.nats is not None and config.nats.url == "nats://127.0.0.1:4222"
    monkeypatch.setenv("STYXCACHE_NATS_URL", "nats://127.0.0.1:4333")
    config = load_config(write(tmp_path, ENTRY + "    dispatch: nats\n"))
    assert config.nats is not None and config.nats.url == "nats://127.0.0.1:4333"
    with pytest.raises(ConfigError, match="schedule 'nats', field 'tls_key_file'"):
        load_config(write(tmp_path, "nats: {tls_cert_file: c.pem}\n" + ENTRY))
    with pytest.raises(ConfigError, match="schedule 'nats', field 'name'"):
        load_config(write(tmp_path, "nats: {name: reload}\n" + ENTRY))
    with pytest.raises(ConfigError, match="schedule 'nats', field 'password'"):
        # Secrets never go in the file itself: password_file or the environment.
        load_config(write(tmp_path, "nats: {password: hunter2}\n" + ENTRY))
    with pytest.raises(ConfigError, match="schedule 'nats', field 'url'"):
        load_config(write(tmp_path, "nats: {url: localhost}\n" + ENTRY))
    with pytest.raises(ConfigError, match="schedule 'nats', field 'lost_after'"):
        load_config(write(tmp_path, "nats: {lost_after: 3}\n" + ENTRY))


def test_settings_parse_and_paths_are_relative_to_the_file(
    tmp_path: Path, dist_env: dict[str, Path]
) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            executor: {kind: "dask://127.0.0.1:8786"}
            nats: {url: "nats://127.0.0.1:4222", name: lab, lost_after_seconds: 5}
            defaults:
              runner: {cache_dir: cache, policy: {extra: {salt: "1"}, env_allowlist: [A]}}
              retries: 2
            schedules:
              - {name: a, interval_seconds: 60, target: "dist_jobs:run_item", dispatch: nats}
              - {name: b, interval_seconds: 60, target: "dist_jobs:run_item", executor: processes}
            """,
        )
    )
    assert config.executor.kind == "dask://127.0.0.1:8786"
    assert config.nats is not None and config.nats.lost_after_seconds == 5
    a, b = config.entries
    assert (a.executor, b.executor, a.retries) == ("nats", "processes", 2)
    assert a.runner is not None and a.runner.cache_dir == str(tmp_path / "cache")
    policy = a.runner.make_policy()
    assert (policy.extra, policy.env_allowlist) == ({"salt": "1"}, ("A",))
    # The spec survives JSON (NATS) unchanged.
    assert RunnerSpec.from_mapping(a.runner.as_dict()) == a.runner


def request(target: str = "dist_jobs:run_item", **item: object) -> RunRequest:
    context = RunContext(
        schedule="subjects",
        key="subjects@0.000000#a",
        nominal_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        item=dict(item),
        item_key="a",
        attempt=2,
    )
    return RunRequest(target, context, True, RunnerSpec(cache_dir="/c"))


def test_task_and_report_messages_round_trip() -> None:
    sent = request(value="v1")
    body = encode_task(sent.context)
    received = decode_task(body)
    assert received.context() == sent.context
    # A task names the entry and carries data: never code or runner settings.
    assert b"dist_jobs" not in body and b"cache_dir" not in body
    outcome = RunOutcome(ok=False, error="E: x", hits=1, misses=2, duration_s=0.5)
    report = decode_report(encode_report("result", "k", 2, "host:1", outcome))
    assert (report.kind, report.attempt, report.outcome) == ("result", 2, outcome)
    with pytest.raises(WireError, match="version"):
        decode_task(b'{"v": 99}')
    with pytest.raises(WireError, match="version"):
        # The old format that carried a target to import is not read at all.
        decode_task(b'{"v": 1, "target": "os:system", "schedule": "s", "key": "k"}')
    with pytest.raises(WireError, match="not JSON"):
        decode_report(b"\xff")


def test_nats_needs_json_items() -> None:
    with pytest.raises(TypeError, match="must be JSON"):
        encode_task(request(value=object()).context)


def test_process_pool_workers_build_their_own_cached_runner(
    tmp_path: Path, dist_env: dict[str, Path]
) -> None:
    clock = FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    scheduler = Scheduler(
        clock=clock,
        executor=ProcessExecutor(2),
        state_dir=tmp_path / "state",
    )
    runner = {"cache_dir": str(tmp_path / "cache")}
    scheduler.register_task(
        "fan",
        HOUR,
        "dist_jobs:run_item",
        expand_from="dist_jobs:four_items",
        runner=runner,
    )
    scheduler.register_task("bad", HOUR, "dist_jobs:boom", runner=runner)
    try:
        for _ in range(2):
            clock.advance(HOUR)
            scheduler.run_pending()
            assert scheduler.drain(timeout=60)
        rows = [r for r in scheduler.ledger.history(entry="fan") if r.item != "*"]
        assert sorted((r.state, r.hits, r.misses) for r in rows) == (
            [("ok", 0, 1)] * 4 + [("ok", 1, 0)] * 4
        )
        assert len(lines(dist_env["DIST_TOOL"])) == 4
        bad = scheduler.ledger.history(entry="bad")
        assert [r.state for r in bad] == ["failed", "failed"]
        assert all("exploded on purpose" in r.error for r in bad)
    finally:
        scheduler.close()


def test_an_entry_executor_overrides_the_schedulers(
    tmp_path: Path, dist_env: dict[str, Path]
) -> None:
    clock = FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    scheduler = Scheduler(
        clock=clock, executor=InlineExecutor(), state_dir=tmp_path / "state"
    )
    scheduler.register_task(
        "pooled",
        HOUR,
        "dist_jobs:run_item",
        executor="threads",
        runner={"cache_dir": str(tmp_path / "cache")},
    )
    scheduler.register_task("here", HOUR, "dist_jobs:run_item")
    try:
        assert scheduler.executor_for(scheduler.jobs["pooled"]).name == "threads"
        assert scheduler.executor_for(scheduler.jobs["here"]).name == "inline"
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        pooled = scheduler.ledger.history(entry="pooled")
        assert [(r.state, r.misses) for r in pooled] == [("ok", 1)]
        # Without runner settings there is no ctx.runner to run the tool with.
        (here,) = scheduler.ledger.history(entry="here")
        assert here.state == "failed" and "NoneType" in here.error
    finally:
        scheduler.close()


def test_the_tests_refuse_connections_beyond_loopback() -> None:
    import socket

    with socket.socket() as sock, pytest.raises(AssertionError, match=r"10\.0\.0\.1"):
        sock.connect(("10.0.0.1", 4222))


def test_any_concurrent_futures_executor_can_run_an_entry(
    tmp_path: Path, dist_env: dict[str, Path]
) -> None:
    import concurrent.futures as cf

    clock = FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    pool = cf.ThreadPoolExecutor(2)
    scheduler = Scheduler(clock=clock, executor=pool, state_dir=tmp_path / "state")
    scheduler.register_task(
        "pooled", HOUR, "dist_jobs:run_item", runner={"cache_dir": str(tmp_path / "c")}
    )
    try:
        assert scheduler.executor.name == "ThreadPoolExecutor"
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        assert [r.state for r in scheduler.ledger.history(entry="pooled")] == ["ok"]
    finally:
        scheduler.close()
        pool.shutdown()


def test_schedule_list_shows_each_entrys_executor(
    tmp_path: Path, dist_env: dict[str, Path]
) -> None:
    import json

    from click.testing import CliRunner

    from styxcache.cli import main

    path = write(
        tmp_path,
        """\
        executor: processes
        nats: nats://127.0.0.1:4222
        schedules:
          - {name: a, interval_seconds: 60, target: "dist_jobs:run_item", runner: none}
          - name: b
            interval_seconds: 60
            target: dist_jobs:run_item
            dispatch: nats
            retries: 3
            runner: {cache_dir: cache}
        """,
    )
    result = CliRunner().invoke(main, ["schedule", "list", str(path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["schedules"]}
    assert (rows["a"]["executor"], rows["a"]["cache_dir"]) == ("processes", None)
    assert (rows["b"]["executor"], rows["b"]["retries"]) == ("nats", 3)
    assert rows["b"]["cache_dir"] == str(tmp_path / "cache")


def test_a_nats_entry_refuses_a_callable_target_at_registration(
    tmp_path: Path,
) -> None:
    scheduler = Scheduler(state_dir=tmp_path / "state", executor=InlineExecutor())
    try:
        with pytest.raises(ConfigError, match="schedule 'remote', field 'target'"):
            scheduler.register_task("remote", HOUR, print, executor="nats")
        assert scheduler.jobs == {}
    finally:
        scheduler.close()
