"""Dask over TLS: a real `dask scheduler` and `dask worker` with certificates.

A Dask scheduler runs any code a client sends, so its port is the trust
boundary: with TLS and client certificates, only certificate holders reach it.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from dist_helpers import LOOPBACK, Processes, free_port, lines, port_open, wait_for
from nats_security import make_certificates

from conftest import require
from styxcache.scheduler import (
    ConfigError,
    DaskExecutor,
    FakeClock,
    Scheduler,
    load_config,
)
from styxcache.scheduler.dask_executor import DaskTLS

try:
    import distributed
except ImportError:  # pragma: no cover - CI installs the dask extra
    distributed = None  # type: ignore[assignment]

HOUR = 3600


@pytest.fixture
def tls_cluster(
    tmp_path: Path, dist_env: dict[str, Path], processes: Processes
) -> Iterator[tuple[str, dict[str, Path]]]:
    """`dask scheduler --protocol tls` and one `dask worker`, both with certificates."""
    require(
        distributed is not None, "needs distributed (pip install 'styxcache[dask]')"
    )
    certs = make_certificates(tmp_path / "tls")
    node_tls = [
        "--tls-ca-file",
        str(certs["ca"]),
        "--tls-cert",
        str(certs["server"]),
        "--tls-key",
        str(certs["server-key"]),
    ]
    port = free_port()
    scheduler = processes.start(
        "dask-scheduler",
        [
            sys.executable,
            "-m",
            "dask",
            "scheduler",
            "--protocol",
            "tls",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--no-dashboard",
            *node_tls,
        ],
    )
    wait_for(lambda: port_open(port) or scheduler.poll() is not None, "dask scheduler")
    assert scheduler.poll() is None, processes.log("dask-scheduler")
    address = f"tls://{LOOPBACK}:{port}"
    processes.start(
        "dask-worker",
        [
            sys.executable,
            "-m",
            "dask",
            "worker",
            address,
            "--host",
            LOOPBACK,
            "--nthreads",
            "1",
            "--no-dashboard",
            *node_tls,
        ],
    )
    tls = DaskTLS(str(certs["ca"]), str(certs["client"]), str(certs["client-key"]))
    with distributed.Client(address, timeout=30, security=tls.security()) as client:
        client.wait_for_workers(1, timeout=60)
    yield address, certs


def test_yaml_entry_runs_on_a_tls_dask_cluster(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    tls_cluster: tuple[str, dict[str, Path]],
) -> None:
    address, certs = tls_cluster
    config = tmp_path / "schedule.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            state_dir: state
            executor: inline
            dask:
              tls_ca_file: tls/ca.pem          # relative to this file
              tls_cert_file: tls/client.pem
              tls_key_file: tls/client-key.pem
            schedules:
              - name: secure
                interval_seconds: 3600
                target: dist_jobs:run_item
                executor: {address}
                runner: {{cache_dir: cache}}
            """
        )
    )
    assert load_config(config).dask == DaskTLS(
        str(certs["ca"]), str(certs["client"]), str(certs["client-key"])
    )
    scheduler = Scheduler.from_yaml(config, clock=clock)
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        (row,) = scheduler.ledger.history(entry="secure")
        assert (row.state, row.misses) == ("ok", 1), row.error
        assert lines(dist_env["DIST_TOOL"]) == ["secure"]
        (run,) = lines(dist_env["DIST_RUNS"])
        assert int(run.split()[1]) != os.getpid()  # it ran on the Dask worker
    finally:
        scheduler.close()


def test_without_a_trusted_certificate_the_scheduler_is_out_of_reach(
    tmp_path: Path, tls_cluster: tuple[str, dict[str, Path]]
) -> None:
    address, certs = tls_cluster
    # An attacker's own certificate (another CA) is refused by the scheduler.
    own = make_certificates(tmp_path / "attacker")
    forged = DaskTLS(str(certs["ca"]), str(own["client"]), str(own["client-key"]))
    with pytest.raises((OSError, TimeoutError)):
        distributed.Client(
            address, timeout=3, security=forged.security(), set_as_default=False
        )
    plain = address.replace("tls://", "tcp://")
    with pytest.raises((OSError, TimeoutError)):
        distributed.Client(plain, timeout=3, set_as_default=False)
    # With the certificate, from code:
    tls = DaskTLS(str(certs["ca"]), str(certs["client"]), str(certs["client-key"]))
    executor = DaskExecutor.connect(address, timeout=30, tls=tls)
    try:
        assert executor.client.submit(sum, [1, 2]).result(timeout=30) == 3
    finally:
        executor.shutdown()


def test_dask_section_errors_name_the_field(tmp_path: Path) -> None:
    config = tmp_path / "schedule.yaml"
    config.write_text("dask: {tls_ca_file: ca.pem}\nschedules: []\n")
    with pytest.raises(ConfigError, match="schedule 'dask', field 'tls_cert_file'"):
        load_config(config)
    config.write_text("dask: {tls_ca: ca.pem}\nschedules: []\n")
    with pytest.raises(ConfigError, match="field 'tls_ca'"):
        load_config(config)
    with pytest.raises(ValueError, match="tls:// scheduler address"):
        DaskExecutor.connect("tcp://127.0.0.1:9", tls=DaskTLS("a", "b", "c"))
