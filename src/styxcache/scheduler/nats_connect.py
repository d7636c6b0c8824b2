"""NATS settings shared by the scheduler and its workers, and how to connect safely.

One `NatsSettings` describes the server (URL, credentials, TLS) and the
message security (the shared signing key, or the explicit insecure mode).
Secrets are never kept in the settings: they are read from files or from
the environment when connecting, and never appear in logs or errors
(`mask_url`, `redact`).

Environment variables (used when the settings do not say otherwise):

| Variable | Meaning |
|---|---|
| `STYXCACHE_NATS_URL` | server URL when a file has no `nats: url` |
| `STYXCACHE_NATS_PASSWORD` | password for `user` |
| `STYXCACHE_NATS_TOKEN` | authentication token |
| `STYXCACHE_NATS_KEY_FILE` / `STYXCACHE_NATS_KEY` | message signing key |
| `STYXCACHE_NATS_INSECURE_NO_SIGNING=1` | no signing (private test servers only) |
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from styxcache.errors import NatsSettingsError
from styxcache.scheduler.signing import MessageAuth, load_key

__all__ = [
    "ENV_INSECURE",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_URL",
    "NATS_KEYS",
    "NatsSettings",
    "NatsSettingsError",
    "mask_url",
    "redact",
]

ENV_URL = "STYXCACHE_NATS_URL"
ENV_PASSWORD = "STYXCACHE_NATS_PASSWORD"
ENV_TOKEN = "STYXCACHE_NATS_TOKEN"
ENV_INSECURE = "STYXCACHE_NATS_INSECURE_NO_SIGNING"

_SUBJECT = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_URL = re.compile(r"^(nats|tls|ws|wss)://\S+$")
_USERINFO = re.compile(r"(?P<scheme>[a-z]+://)(?P<info>[^@/\s]+)@")
_FILE_KEYS = (
    "password_file",
    "token_file",
    "nkey_seed_file",
    "creds_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "key_file",
)

NATS_KEYS = (
    "url",
    "name",
    "subject_prefix",
    "lost_after_seconds",
    "user",
    *_FILE_KEYS,
    "tls_hostname",
    "insecure_no_signing",
    "replay_window_seconds",
)
"""Keys a schedule file's `nats:` section may carry."""


def mask_url(url: str) -> str:
    """Hide the credentials of a URL (`nats://user:***@host`).

    Args:
        url: A server URL, possibly with `user:password@` or `token@`.

    Returns:
        The URL with the password (or a lone token) replaced by `***`.
    """

    def hide(match: re.Match[str]) -> str:
        info = match["info"]
        user = info.split(":", 1)[0] + ":***" if ":" in info else "***"
        return f"{match['scheme']}{user}@"

    return _USERINFO.sub(hide, url)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Remove secrets (and URL credentials) from a message.

    Args:
        text: An error or log message.
        secrets: Values that must not appear.

    Returns:
        The text with each secret replaced by `***`.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return mask_url(text)


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise OSError(
            f"cannot read the NATS {what} file {path}: {exc.strerror}"
        ) from None


def _secret(
    path: str | None, env: Mapping[str, str], variable: str, what: str
) -> str | None:
    """Read a secret from its file if one is set, else from `variable`."""
    return _read_secret(path, what) if path is not None else env.get(variable)


def _existing(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise OSError(f"the NATS {what} file {path} does not exist")
    return path


@dataclasses.dataclass(frozen=True)
class NatsSettings:
    """How to reach a NATS server and how messages are authenticated.

    Attributes:
        url: The server, for example `nats://127.0.0.1:4222` or
            `tls://nats.lab:4222`.
        name: This scheduler's name: it answers health checks on
            `<prefix>.scheduler.<name>` and commands on
            `<prefix>.control.<name>`.
        subject_prefix: First token of every subject.
        lost_after_seconds: A run with no word from a worker for this long
            is lost (recorded as interrupted, retried by `retries`).
        user: User name (the password comes from `password_file` or
            `$STYXCACHE_NATS_PASSWORD`).
        password_file: File holding the password.
        token_file: File holding an authentication token (else
            `$STYXCACHE_NATS_TOKEN`).
        nkey_seed_file: File holding an NKey seed.
        creds_file: A `.creds` file (JWT and NKey seed).
        tls_ca_file: CA bundle the server's certificate is checked against.
        tls_cert_file: Client certificate (mutual TLS).
        tls_key_file: The client certificate's key.
        tls_hostname: Name expected in the server's certificate (default:
            the URL's host).
        key_file: File holding the shared message signing key (else
            `$STYXCACHE_NATS_KEY_FILE` or `$STYXCACHE_NATS_KEY`).
        insecure_no_signing: Neither sign nor check messages. Anyone who
            can publish to the server can then start runs and forge their
            results; only for a private test server.
        replay_window_seconds: How old (or how far in the future) a signed
            message may be; its nonce is remembered that long.
    """

    url: str = "nats://127.0.0.1:4222"
    name: str = "default"
    subject_prefix: str = "styxcache"
    lost_after_seconds: float = 30.0
    user: str | None = None
    password_file: str | None = None
    token_file: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    key_file: str | None = None
    insecure_no_signing: bool = False
    replay_window_seconds: float = 120.0

    def __post_init__(self) -> None:
        """Check the settings that can be checked without reading files.

        Raises:
            NatsSettingsError: Naming the field.
        """
        if not isinstance(self.url, str) or not _URL.match(self.url):
            raise NatsSettingsError(
                f"must be a nats://host:port url, got {mask_url(str(self.url))!r}",
                "url",
            )
        for field in ("name", "subject_prefix"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _SUBJECT.match(value):
                raise NatsSettingsError(
                    f"must be dot-separated letters, digits, '_' or '-', got {value!r}",
                    field,
                )
        if self.name == "reload":
            # `<prefix>.control.reload` is the broadcast every scheduler hears.
            raise NatsSettingsError("'reload' is reserved", "name")
        for field in ("lost_after_seconds", "replay_window_seconds"):
            value = getattr(self, field)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0.1
            ):
                raise NatsSettingsError(
                    f"must be a finite number >= 0.1, got {value!r}", field
                )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise NatsSettingsError(
                "tls_cert_file and tls_key_file go together",
                "tls_cert_file" if self.tls_cert_file is None else "tls_key_file",
            )
        if not isinstance(self.insecure_no_signing, bool):
            raise NatsSettingsError(
                f"must be true or false, got {self.insecure_no_signing!r}",
                "insecure_no_signing",
            )

    @classmethod
    def from_mapping(
        cls,
        raw: Any,
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> NatsSettings:
        """Validate a `nats:` section (a URL string or a mapping).

        Args:
            raw: The section; None gives the defaults.
            base_dir: Folder relative file paths are resolved against.
            environ: Environment for `$STYXCACHE_NATS_URL` (default:
                `os.environ`).

        Returns:
            The settings.

        Raises:
            NatsSettingsError: Naming the offending key.
        """
        env = os.environ if environ is None else environ
        if raw is None:
            raw = {}
        if isinstance(raw, str):
            raw = {"url": raw}
        if not isinstance(raw, Mapping):
            raise NatsSettingsError("must be a server url or a mapping", "nats")
        unknown = sorted(set(raw) - set(NATS_KEYS))
        if unknown:
            raise NatsSettingsError(
                f"unknown key(s) {', '.join(map(repr, unknown))};"
                f" allowed: {', '.join(map(repr, NATS_KEYS))}",
                unknown[0],
            )
        values = dict(raw)
        values.setdefault("url", env.get(ENV_URL) or cls.url)
        for key in _FILE_KEYS:
            value = values.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise NatsSettingsError(f"must be a file path, got {value!r}", key)
            path = Path(value).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            values[key] = str(path)
        for key in ("user", "tls_hostname"):
            if key in values and not isinstance(values[key], str):
                raise NatsSettingsError(f"must be a string, got {values[key]!r}", key)
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - keys were checked above
            raise NatsSettingsError(str(exc), "nats") from None

    def __repr__(self) -> str:
        """Show the settings with the URL's credentials masked (logs print it)."""
        parts = [f"url={mask_url(self.url)!r}"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "url" and value != field.default:
                parts.append(f"{field.name}={value!r}")
        fields = ", ".join(parts)
        return f"NatsSettings({fields})"

    __str__ = __repr__

    @property
    def display_url(self) -> str:
        """The URL with any credentials masked, for logs and errors."""
        return mask_url(self.url)

    def insecure(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether the operator asked to run without message signing.

        Args:
            environ: Environment (default: `os.environ`).

        Returns:
            True from the setting or `$STYXCACHE_NATS_INSECURE_NO_SIGNING=1`.
        """
        env = os.environ if environ is None else environ
        return self.insecure_no_signing or env.get(ENV_INSECURE, "") in (
            "1",
            "true",
            "yes",
        )

    def message_auth(self, environ: Mapping[str, str] | None = None) -> MessageAuth:
        """Build the signer/checker for these settings, refusing to run open.

        Args:
            environ: Environment (default: `os.environ`).

        Returns:
            A `MessageAuth` with the shared key (or none in insecure mode).

        Raises:
            OSError: Without a key and without the insecure setting, or for a
                key that cannot be used (the key itself is never shown).
        """
        insecure = self.insecure(environ)
        try:
            key = None if insecure else load_key(self.key_file, environ=environ)
        except ValueError as exc:
            raise OSError(str(exc)) from None
        if key is None and not insecure:
            raise OSError(
                "no NATS signing key is configured: without one, anyone who can"
                " publish to the server could start runs and forge results."
                " Give a shared key with nats: {key_file: ...}, --key-file or"
                " $STYXCACHE_NATS_KEY_FILE (same key on the scheduler and every"
                " worker), or run a private test server with"
                " --insecure-no-signing / insecure_no_signing: true"
            )
        return MessageAuth(key, window_seconds=self.replay_window_seconds)

    def secrets(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """Return the secret strings to keep out of logs and errors.

        Args:
            environ: Environment (default: `os.environ`).

        Returns:
            The password and token values in use (possibly empty).
        """
        env = os.environ if environ is None else environ
        found = [env.get(ENV_PASSWORD, ""), env.get(ENV_TOKEN, "")]
        for field in ("password_file", "token_file"):
            path = getattr(self, field)
            if path is not None:
                with contextlib.suppress(OSError):
                    found.append(Path(path).expanduser().read_text().strip())
        info = _USERINFO.search(self.url)
        if info is not None:
            found.extend(part for part in info["info"].split(":", 1)[-1:] if part)
        return tuple(s for s in found if len(s) >= 3)

    def connect_options(
        self, environ: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Return the keyword arguments for `nats.connect` (secrets included).

        Args:
            environ: Environment (default: `os.environ`).

        Returns:
            `servers`, credentials and TLS options; never log this.

        Raises:
            OSError: If a secret or certificate file cannot be read.
        """
        env = os.environ if environ is None else environ
        options: dict[str, Any] = {"servers": [self.url]}
        if self.user is not None:
            options["user"] = self.user
            password = _secret(self.password_file, env, ENV_PASSWORD, "password")
            if password:
                options["password"] = password
        token = _secret(self.token_file, env, ENV_TOKEN, "token")
        if token:
            options["token"] = token
        if self.creds_file is not None:
            options["user_credentials"] = _existing(self.creds_file, "creds")
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = _existing(self.nkey_seed_file, "NKey seed")
        tls_wanted = (
            self.url.startswith(("tls://", "wss://"))
            or self.tls_ca_file is not None
            or self.tls_cert_file is not None
        )
        if tls_wanted:
            options["tls"] = self.ssl_context()
            if self.tls_hostname is not None:
                options["tls_hostname"] = self.tls_hostname
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """Build the client TLS context (server certificate always checked).

        Returns:
            The context.

        Raises:
            OSError: If a certificate or key file cannot be loaded.
        """
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file
            )
            if self.tls_cert_file is not None:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load the NATS TLS files: {exc}") from None
        return context
