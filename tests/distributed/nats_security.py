"""Helpers of the NATS security tests: certificates, a secured server, a spy client."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from styxcache.scheduler.nats_connect import NatsSettings

USER = "scheduler"
PASSWORD = "pw-9f3c1a7e55d2"
KEY = "k" * 8 + "0123456789abcdef0123456789abcdef"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("styxcache test CA"))
        .issuer_name(_name("styxcache test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # The "server" certificate also serves Dask nodes, which both listen and
    # connect: it carries both usages.
    server_usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    for who, usages in (
        ("server", server_usages),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"styxcache test {who}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if who == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[who] = folder / f"{who}.pem"
        paths[f"{who}-key"] = folder / f"{who}-key.pem"
        paths[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(paths[f"{who}-key"], key)
    return paths


def server_config(port: int, certs: Mapping[str, Path]) -> str:
    """nats-server configuration: loopback, mutual TLS, one password user."""
    return f"""
listen: 127.0.0.1:{port}
max_payload: 1MB
tls {{
  cert_file: "{certs["server"]}"
  key_file: "{certs["server-key"]}"
  ca_file: "{certs["ca"]}"
  verify: true
  timeout: 5
}}
authorization {{
  users = [ {{ user: "{USER}", password: "{PASSWORD}" }} ]
}}
"""


class Spy:
    """A plain nats-py client on its own loop thread: records, publishes, asks."""

    def __init__(self, settings: NatsSettings, subjects: tuple[str, ...] = ()) -> None:
        import nats

        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def connect() -> Any:
            nc = await nats.connect(**settings.connect_options(), connect_timeout=10)
            for subject in subjects:
                await nc.subscribe(subject, cb=self._record)
            await nc.flush()
            return nc

        self.nc = self._run(connect())

    async def _record(self, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.subject, msg.data, dict(msg.headers or {})))

    def received(self, prefix: str = "") -> list[tuple[str, bytes, dict[str, str]]]:
        with self._lock:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def _run(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def publish(
        self, subject: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        async def send() -> None:
            await self.nc.publish(subject, body, headers=dict(headers or {}) or None)
            await self.nc.flush()

        self._run(send())

    def request(
        self,
        subject: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5,
    ) -> tuple[bytes, dict[str, str], str] | None:
        """Send a request; None when nobody answered in time."""

        async def ask() -> tuple[bytes, dict[str, str], str] | None:
            try:
                msg = await self.nc.request(
                    subject, body, timeout=timeout, headers=dict(headers or {}) or None
                )
            except Exception:  # nats.errors.TimeoutError / NoRespondersError
                return None
            return msg.data, dict(msg.headers or {}), msg.subject

        result: tuple[bytes, dict[str, str], str] | None = self._run(
            ask(), timeout + 10
        )
        return result

    def close(self) -> None:
        try:
            self._run(self.nc.drain(), 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
