"""Connecting to an object store: URL checks, credentials, client settings.

The client is `obstore` (Python bindings to Rust's `object_store` crate):
one code path for S3 and S3-compatible stores, Google Cloud Storage and
Azure Blob Storage; streaming multipart uploads; conditional puts; and
calls that release the GIL, so entries move in parallel from plain threads.

Endpoint, region and credentials are read the standard way, from the
environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; `GOOGLE_*`, `AZURE_*` for the
other clouds). AWS profiles (`AWS_PROFILE`, `~/.aws/credentials`) are used
through boto3 when no key is set in the environment.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any
from urllib.parse import urlsplit

from styxcache.remote.errors import RemoteConfigError, scrub

__all__ = [
    "ENV_REMOTE",
    "ENV_REMOTE_WRITE",
    "check_url",
    "open_store",
]

_log = logging.getLogger("styxcache.remote")

ENV_REMOTE = "STYXCACHE_REMOTE"
"""Environment variable naming the remote cache URL."""

ENV_REMOTE_WRITE = "STYXCACHE_REMOTE_WRITE"
"""Environment variable: `0`/`false` makes the remote tier read-only."""

SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "file", "memory")
"""URL schemes a remote cache may use."""

CONNECT_TIMEOUT = dt.timedelta(seconds=5)
REQUEST_TIMEOUT = dt.timedelta(seconds=120)
"""Per request; transfers are split into parts of at most `PART_SIZE` bytes, so
a request never carries more than one part."""
MAX_RETRIES = 2
RETRY_TIMEOUT = dt.timedelta(seconds=15)
"""Bounds on retries: an unreachable store must cost a pipeline step
seconds, not object_store's default of minutes."""


def check_url(url: str, *, source: str = "remote") -> str:
    """Check a remote cache URL without contacting anything.

    Args:
        url: `s3://bucket/prefix`, `gs://...`, `az://...` or `file:///path`.
        source: What the value came from, for the error message.

    Returns:
        The URL without a trailing slash.

    Raises:
        RemoteConfigError: Naming `source` and what is wrong.
    """
    if not isinstance(url, str) or not url.strip():
        raise RemoteConfigError(f"{source}: expected a URL like s3://bucket/prefix")
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RemoteConfigError(
            f"{source}: unsupported URL scheme {parts.scheme or '(none)'!r} in "
            f"{_redacted(text)!r}; use one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if parts.username or parts.password:
        raise RemoteConfigError(
            f"{source}: credentials do not belong in the URL; set them in the "
            "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) instead"
        )
    if scheme not in ("file", "memory") and not parts.netloc:
        raise RemoteConfigError(
            f"{source}: {text!r} names no bucket (expected {scheme}://bucket/prefix)"
        )
    if scheme == "file" and not parts.path.startswith("/"):
        raise RemoteConfigError(f"{source}: {text!r} must be file:///absolute/path")
    if parts.query or parts.fragment:
        raise RemoteConfigError(
            f"{source}: {_redacted(text)!r} has a query or fragment; "
            "settings go in the environment"
        )
    return text


def _redacted(text: str) -> str:
    parts = urlsplit(text)
    if parts.password:
        return text.replace(parts.password, "***")
    return text


def _s3_settings(url: str) -> dict[str, Any]:
    """Client settings the environment implies for an S3 URL."""
    settings: dict[str, Any] = {}
    endpoint = (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT")
    )
    if endpoint and endpoint.startswith("http://"):
        settings["allow_http"] = True
    return settings


def _profile_provider() -> Any:
    """A boto3 credential provider when an AWS profile is the only credential.

    object_store reads keys from the environment but not AWS profiles; boto3
    resolves profiles (static keys, SSO, assumed roles) the standard way.
    """
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    if profile is None and not any(
        os.path.exists(os.path.expanduser(f)) for f in files
    ):
        return None
    try:
        import boto3  # type: ignore[import-untyped, unused-ignore]
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        _log.warning(
            "an AWS profile is configured but boto3 is not installed (or Python is "
            "older than 3.11); only credentials in the environment are used"
        )
        return None
    session = boto3.Session(profile_name=profile)
    if session.get_credentials() is None:
        return None
    return Boto3CredentialProvider(session)


def open_store(url: str) -> Any:
    """Build the obstore store for a checked URL (no request is made).

    Args:
        url: A URL accepted by `check_url`.

    Returns:
        An obstore `ObjectStore`.

    Raises:
        RemoteConfigError: If obstore is missing or rejects the settings.
    """
    try:
        from obstore.store import from_url
    except ImportError as exc:
        raise RemoteConfigError(
            f"remote cache {url} needs the obstore package: "
            "pip install 'styxcache[remote]'"
        ) from exc
    scheme = urlsplit(url).scheme.lower()
    kwargs: dict[str, Any] = {}
    if scheme not in ("file", "memory"):
        client: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "timeout": REQUEST_TIMEOUT,
        }
        if scheme in ("s3", "s3a"):
            client.update(_s3_settings(url))
            provider = _profile_provider()
            if provider is not None:
                kwargs["credential_provider"] = provider
        kwargs["client_options"] = client
        kwargs["retry_config"] = {
            "max_retries": MAX_RETRIES,
            "retry_timeout": RETRY_TIMEOUT,
            "backoff": {
                "init_backoff": dt.timedelta(milliseconds=100),
                "max_backoff": dt.timedelta(seconds=2),
                "base": 2,
            },
        }
    elif scheme == "file":
        kwargs["mkdir"] = True
    try:
        return from_url(url, **kwargs)
    except Exception as exc:
        raise RemoteConfigError(f"remote cache {url}: {scrub(str(exc))}") from None
