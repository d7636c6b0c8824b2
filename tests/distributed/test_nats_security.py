"""Trusted distributed runs: a real nats-server with mutual TLS and a password user.

Anyone who can publish to the server is the attacker here: the spy client
below connects with valid server credentials (as a colleague on the lab
network would) but does not hold the message signing key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from dist_helpers import (
    HERE,
    LOOPBACK,
    WORKER,
    Processes,
    free_port,
    lines,
    nats_binary,
    port_open,
    start_nats_worker,
    wait_for,
)
from nats_security import PASSWORD, Spy

from conftest import require
from styxcache.cli import main
from styxcache.scheduler import (
    FakeClock,
    NatsDispatcher,
    NatsSettings,
    RunContext,
    Scheduler,
)
from styxcache.scheduler.runs import RunLostError, RunRequest, execute_run
from styxcache.scheduler.signing import MessageAuth
from styxcache.scheduler.wire import encode_report, encode_task

HOUR = 3600
WRONG_KEY = b"not-the-shared-key-but-long-enough"


def schedule_file(tmp_path: Path, settings: NatsSettings, extra: str = "") -> Path:
    """One file for the scheduler and the worker: entries, server, key."""
    nats = {
        "url": settings.url,
        "name": settings.name,
        "lost_after_seconds": settings.lost_after_seconds,
        "user": settings.user,
        "password_file": settings.password_file,
        "tls_ca_file": settings.tls_ca_file,
        "tls_cert_file": settings.tls_cert_file,
        "tls_key_file": settings.tls_key_file,
        "key_file": settings.key_file,
    }
    path = tmp_path / "schedule.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            state_dir: state
            nats: {json.dumps(nats)}
            schedules:
              - name: known
                interval_seconds: 3600
                target: dist_jobs:run_item
                dispatch: nats
                runner: {{cache_dir: cache}}
            """
        )
        + extra
    )
    return path


def context(schedule: str, key: str, value: str) -> RunContext:
    return RunContext(
        schedule=schedule,
        key=key,
        nominal_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        item={"value": value},
        item_key=value,
    )


def test_forged_replayed_and_unknown_messages_are_refused_and_the_real_run_works(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    processes: Processes,
    secure_nats: tuple[NatsSettings, dict[str, Path]],
) -> None:
    settings, files = secure_nats
    config = schedule_file(tmp_path, settings)
    worker = start_nats_worker(processes, settings.url, "w1", "--schedule", str(config))
    spy = Spy(settings, ("styxcache.runs.>", "styxcache.results.>"))
    scheduler = Scheduler.from_yaml(config, clock=clock)
    auth = MessageAuth(files["key"].read_text().strip().encode())
    forger = MessageAuth(WRONG_KEY)
    try:
        # The happy path: over mutual TLS, with a password, signed both ways.
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        (row,) = scheduler.ledger.history(entry="known")
        assert (row.state, row.misses) == ("ok", 1)
        assert lines(dist_env["DIST_TOOL"]) == ["known"]
        wait_for(lambda: len(spy.received("styxcache.results.")) >= 2, "results")
        task_subject, task_body, task_headers = spy.received("styxcache.runs.")[0]
        assert task_subject == "styxcache.runs.known"
        assert b"dist_jobs" not in task_body  # no code reference on the wire
        result = next(
            m for m in spy.received("styxcache.results.") if b'"result"' in m[1]
        )

        # Forged tasks: none of them may run anything.
        subject = "styxcache.runs.known"
        forged = encode_task(context("known", "known@forged", "forged"))
        spy.publish(subject, forged)  # unsigned
        spy.publish(subject, forged, forger.sign(subject, forged, run="known@forged"))
        spy.publish(task_subject, task_body, task_headers)  # replayed
        other = "styxcache.runs.elsewhere"
        spy.publish(subject, forged, auth.sign(other, forged, run="known@forged"))
        stale = MessageAuth(auth_key(files), clock=lambda: 1_000_000.0)
        spy.publish(subject, forged, stale.sign(subject, forged, run="known@forged"))
        # Signed with the real key, but naming code or an entry it lacks.
        old = json.dumps(
            {"v": 1, "target": "os:system", "schedule": "known", "key": "k"}
        ).encode()
        spy.publish(subject, old, auth.sign(subject, old, run="k"))
        evil = encode_task(context("evil", "evil@1", "evil"))
        spy.publish(subject, evil, auth.sign(subject, evil, run="evil@1"))
        # A genuine probe after them: once it is done, they were all seen.
        probe = encode_task(context("known", "known@probe", "probe"))
        spy.publish(subject, probe, auth.sign(subject, probe, run="known@probe"))
        wait_for(
            lambda: any(
                b"known@probe" in m[1] and b'"result"' in m[1]
                for m in spy.received("styxcache.results.")
            ),
            "the probe's result",
        )
        assert lines(dist_env["DIST_TOOL"]) == ["known", "probe"]
        assert [line.split()[0] for line in lines(dist_env["DIST_RUNS"])] == [
            row.key,
            "known@probe",
        ]

        # Forged results: the scheduler's pending run is never settled by them.
        dispatcher = scheduler.executor_for(scheduler.jobs["known"])
        assert isinstance(dispatcher, NatsDispatcher)
        pending = dispatcher.submit(
            execute_run,
            RunRequest("dist_jobs:run_item", context("nobody", "nobody@1", "x")),
        )
        results = "styxcache.results.nobody"
        fake = encode_report("result", "nobody@1", 1, "attacker:1", _ok())
        before = dispatcher.auth.counts()
        spy.publish(results, fake)
        spy.publish(results, fake, forger.sign(results, fake, run="nobody@1"))
        spy.publish(result[0], result[1], result[2])  # replay of a real result
        wait_for(
            lambda: _grew(
                before,
                dispatcher.auth.counts(),
                "unsigned",
                "bad-signature",
                "replayed",
            ),
            "the forged results to be refused",
        )
        with pytest.raises(RunLostError):
            pending.result(timeout=30)  # lost (nobody ran it), never "ok"

        # Forged control: no answer, no reload. Signed control: both work.
        config.write_text(
            config.read_text()
            + "  - {name: second, interval_seconds: 60, target: dist_jobs:run_item,"
            " dispatch: nats}\n"
        )
        status = json.dumps({"command": "status"}).encode()
        assert spy.request("styxcache.control.lab", status, timeout=1) is None
        assert spy.request("styxcache.scheduler.lab", b"{}", timeout=1) is None
        spy.publish("styxcache.control.reload", b"{}")
        reload_forged = forger.sign("styxcache.control.reload", b"{}")
        spy.publish("styxcache.control.reload", b"{}", reload_forged)
        wait_for(
            lambda: (
                dispatcher.auth.counts().get("unsigned", 0)
                >= before.get("unsigned", 0) + 4
            ),
            "the forged control messages to be refused",
        )
        assert sorted(scheduler.jobs) == ["known"]
        answer = spy.request(
            "styxcache.control.reload",
            b"{}",
            auth.sign("styxcache.control.reload", b"{}"),
        )
        assert answer is not None
        auth.check(answer[2], answer[0], answer[1], run="")  # the reply is signed
        assert json.loads(answer[0]) == {"ok": True, "error": ""}
        assert sorted(scheduler.jobs) == ["known", "second"]
        health = spy.request(
            "styxcache.scheduler.lab",
            b"{}",
            auth.sign("styxcache.scheduler.lab", b"{}"),
        )
        assert health is not None
        reply = json.loads(health[0])
        assert reply["ok"] is True and reply["name"] == "lab"
        assert reply["dropped"]["unsigned"] >= 4
    finally:
        spy.close()
        scheduler.close()
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    log = " ".join(processes.log("w1").split())  # log records may be wrapped
    refused = json.loads(
        log.split("messages refused: ")[1].split("}")[0].replace("'", '"') + "}"
    )
    assert refused == {
        "unsigned": 1,
        "bad-signature": 2,  # wrong key; signed for another subject
        "replayed": 1,
        "stale": 1,
        "malformed": 1,  # the old format naming os:system
        "unknown-entry": 1,
    }
    assert "refused run evil@1: entry 'evil' is not registered" in log


def auth_key(files: dict[str, Path]) -> bytes:
    return files["key"].read_text().strip().encode()


def _ok() -> object:
    from styxcache.scheduler import RunOutcome

    return RunOutcome(ok=True)


def _grew(before: dict[str, int], after: dict[str, int], *reasons: str) -> bool:
    return all(after.get(r, 0) > before.get(r, 0) for r in reasons)


def test_a_wrong_password_is_never_echoed(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    processes: Processes,
    secure_nats: tuple[NatsSettings, dict[str, Path]],
) -> None:
    settings, _files = secure_nats
    wrong = tmp_path / "wrong.password"
    wrong.write_text("Wr0ng-pa55word-xyz\n")
    host = settings.url.split("://")[1]
    caplog.set_level(logging.DEBUG)
    attempts = [
        dataclasses.replace(settings, password_file=str(wrong)),
        dataclasses.replace(
            settings,
            url=f"tls://scheduler:Wr0ng-pa55word-xyz@{host}",
            user=None,
            password_file=None,
        ),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            NatsDispatcher(attempt, connect_timeout=5)
        assert "Wr0ng-pa55word-xyz" not in str(caught.value)
        assert PASSWORD not in str(caught.value)
    assert "tls://scheduler:***@" in str(caught.value)
    assert "Wr0ng-pa55word-xyz" not in caplog.text

    # The worker command line says why, without the password either.
    config = schedule_file(tmp_path, settings)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER,
            "worker",
            "--schedule",
            str(config),
            "--path",
            str(HERE),
            "--password-file",
            str(wrong),
            "--connect-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "Wr0ng-pa55word-xyz" not in done.stdout + done.stderr
    assert "Authorization" in done.stdout + done.stderr or "cannot" in done.stderr


def test_without_a_key_nothing_starts_unless_insecure_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dist_env: dict[str, Path]
) -> None:
    for name in ("STYXCACHE_NATS_KEY", "STYXCACHE_NATS_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("STYXCACHE_NATS_INSECURE_NO_SIGNING", raising=False)
    # Refused before connecting (nothing listens on this port).
    with pytest.raises(OSError, match="insecure-no-signing"):
        NatsDispatcher(NatsSettings(url="nats://127.0.0.1:9"))
    runner = CliRunner()
    args = ["worker", "--nats", "nats://127.0.0.1:9", "--allow", "a=dist_jobs:run_item"]
    result = runner.invoke(main, args)
    assert result.exit_code != 0
    assert "no NATS signing key" in result.output
    # A key every local user can read protects nothing.
    key = tmp_path / "shared.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o644)
    result = runner.invoke(main, [*args, "--key-file", str(key)])
    assert result.exit_code != 0 and "chmod o-rw" in result.output
    assert "0123456789abcdef" not in result.output
    key.chmod(0o600)
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    short.chmod(0o600)
    result = runner.invoke(main, [*args, "--key-file", str(short)])
    assert result.exit_code != 0 and "at least 16" in result.output
    # A worker runs registered entries only: no file, no allowlist, no start.
    result = runner.invoke(main, ["worker", "--nats", "nats://127.0.0.1:9"])
    assert result.exit_code != 0 and "--allow NAME=module:function" in result.output
    result = runner.invoke(main, ["worker", "--schedule", "nightly"])
    assert result.exit_code != 0 and "--only NAME" in result.output
    # The insecure mode is explicit and says what it gives up.
    insecure = NatsSettings(url="nats://127.0.0.1:9", insecure_no_signing=True)
    assert insecure.message_auth().enabled is False
    monkeypatch.setenv("STYXCACHE_NATS_INSECURE_NO_SIGNING", "1")
    assert NatsSettings().message_auth().enabled is False


def test_every_worker_option_has_help_text() -> None:
    import click

    from styxcache.cli.worker import worker

    missing = [
        p.name
        for p in worker.params
        if isinstance(p, click.Option) and not (p.help or "").strip()
    ]
    assert missing == []
    text = CliRunner().invoke(main, ["worker", "--help"]).output
    for option in ("--subject-prefix", "--queue", "--concurrency", "--key-file"):
        line = next(x for x in text.splitlines() if x.strip().startswith(option))
        assert len(line.split(option, 1)[1].strip()) > 10, line


def test_connect_options_carry_each_kind_of_credential(tmp_path: Path) -> None:
    seed = tmp_path / "user.nk"
    seed.write_text("SUAEXAMPLE\n")
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    token = tmp_path / "token"
    token.write_text("tok-123456\n")
    settings = NatsSettings(
        url="nats://127.0.0.1:4222",
        token_file=str(token),
        nkey_seed_file=str(seed),
        creds_file=str(creds),
    )
    options = settings.connect_options(environ={})
    assert options["token"] == "tok-123456"
    assert options["nkeys_seed"] == str(seed)
    assert options["user_credentials"] == str(creds)
    assert "tls" not in options
    assert settings.secrets(environ={}) == ("tok-123456",)
    password = NatsSettings(url="nats://127.0.0.1:4222", user="u")
    assert (
        password.connect_options(environ={"STYXCACHE_NATS_PASSWORD": "pw-env"})[
            "password"
        ]
        == "pw-env"
    )
    with_password = NatsSettings(url="nats://u:s3cret@127.0.0.1:4222")
    assert with_password.display_url == "nats://u:***@127.0.0.1:4222"
    # A reload logs old and new settings: never with the password.
    assert "s3cret" not in repr(with_password) + str(with_password)
    assert NatsSettings(url="nats://t0ken@h:1").display_url == "nats://***@h:1"


def test_schedule_run_refuses_nats_without_a_key_unless_told(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dist_env: dict[str, Path],
    nats_url: str,
) -> None:
    for name in (
        "STYXCACHE_NATS_KEY",
        "STYXCACHE_NATS_KEY_FILE",
        "STYXCACHE_NATS_INSECURE_NO_SIGNING",
    ):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "open.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            state_dir: state
            nats: {{url: "{nats_url}", name: open}}
            schedules:
              - {{name: a, interval_seconds: 3600, target: dist_jobs:run_item,
                  dispatch: nats, runner: none}}
            """
        )
    )
    command = [sys.executable, "-c", WORKER, "schedule", "run", str(config)]
    refused = subprocess.run(
        [*command, "--max-cycles", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0
    assert "no NATS signing key" in " ".join(refused.stderr.split())
    allowed = subprocess.run(
        [*command, "--max-cycles", "1", "--insecure-no-signing"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "NOT signed" in " ".join(allowed.stderr.split())


@pytest.mark.parametrize("login", ["token", "nkey"])
def test_token_and_nkey_logins(
    tmp_path: Path, processes: Processes, nats_key: Path, login: str
) -> None:
    import os

    nkeys = None
    if login == "nkey":
        found = importlib.util.find_spec("nkeys") is not None
        require(found, "needs nkeys (pip install 'styxcache[nats]')")
        import nkeys
    binary = nats_binary()
    require(binary is not None, "needs the nats-server binary")
    assert binary is not None
    secret = tmp_path / f"{login}.secret"
    if nkeys is not None:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        public = nkeys.from_seed(bytearray(seed)).public_key.decode()
        secret.write_bytes(seed + b"\n")
        authorization = f'users = [ {{ nkey: "{public}" }} ]'
        field = "nkey_seed_file"
    else:
        secret.write_text("tok-5f1e9a3c77\n")
        authorization = 'token: "tok-5f1e9a3c77"'
        field = "token_file"
    secret.chmod(0o600)
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nauthorization {{ {authorization} }}\n"
    )
    server = processes.start("nats-server", [binary, "-c", str(config)])
    wait_for(lambda: port_open(port) or server.poll() is not None, "nats-server")
    assert server.poll() is None, processes.log("nats-server")
    url = f"nats://{LOOPBACK}:{port}"
    settings = NatsSettings(url=url, key_file=str(nats_key), **{field: str(secret)})
    NatsDispatcher(settings, connect_timeout=10).shutdown()
    with pytest.raises(OSError) as caught:
        NatsDispatcher(NatsSettings(url=url, key_file=str(nats_key)), connect_timeout=5)
    assert "tok-5f1e9a3c77" not in str(caught.value)


def test_a_worker_takes_its_entries_from_its_own_file_only(
    tmp_path: Path, dist_env: dict[str, Path]
) -> None:
    config = tmp_path / "publish-only.yaml"
    config.write_text(
        "schedules:\n"
        "  - {name: brief, interval_seconds: 60, dispatch_type: goal,"
        " goal_config: {instruction: x}}\n"
        "  - {name: job, interval_seconds: 60, target: dist_jobs:run_item,"
        " dispatch: nats, runner: none}\n"
    )
    runner = CliRunner()
    result = runner.invoke(
        main, ["worker", "--schedule", str(config), "--only", "brief"]
    )
    # Publish entries are for other services: a worker never runs them.
    assert (
        result.exit_code != 0 and "not an entry of this worker: brief" in result.output
    )
    result = runner.invoke(
        main, ["worker", "--schedule", str(config), "--allow", "bad=os:nope"]
    )
    assert result.exit_code != 0 and "has no attribute" in result.output
