"""HMAC-SHA256 signatures on NATS messages, with replay protection.

Anyone who can publish to a NATS server could otherwise start runs, forge
their results and drive a scheduler's control subject. Every message
styxcache sends is therefore signed with a key shared by the scheduler and
its workers, and every message it receives is checked before it is read.

The signature travels in NATS headers, so the body stays plain JSON that any
consumer can read (the goal and task messages of publish entries). It covers
the subject, a timestamp, a random nonce, the run key and the body:

    HMAC-SHA256(key, "styxcache-nats-1" LF subject LF timestamp LF nonce
                     LF run key LF body)

A receiver drops a message that is unsigned, signed with another key, sent
to another subject than the one it was signed for, older (or newer) than
`window_seconds`, or whose nonce it has already seen inside that window.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from styxcache.errors import BadMessageError

__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "HEADER_NONCE",
    "HEADER_RUN",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MIN_KEY_BYTES",
    "BadMessageError",
    "MessageAuth",
    "load_key",
]


HEADER_SIGNATURE = "Styxcache-Signature"
HEADER_TIMESTAMP = "Styxcache-Timestamp"
HEADER_NONCE = "Styxcache-Nonce"
HEADER_RUN = "Styxcache-Run"

ENV_KEY = "STYXCACHE_NATS_KEY"
"""Environment variable holding the shared key itself."""
ENV_KEY_FILE = "STYXCACHE_NATS_KEY_FILE"
"""Environment variable naming a file that holds the shared key."""

MIN_KEY_BYTES = 16
"""Shortest key accepted (32 random bytes, hex-encoded, is the advice)."""

_DOMAIN = b"styxcache-nats-1"


def load_key(
    key_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> bytes | None:
    """Read the shared signing key.

    Looked up in this order: `key_file`, the file named by
    `$STYXCACHE_NATS_KEY_FILE`, the value of `$STYXCACHE_NATS_KEY`.
    Surrounding whitespace is stripped (a trailing newline is usual).

    Args:
        key_file: A file holding the key.
        environ: Environment to read (default: `os.environ`).

    Returns:
        The key, or None when none is configured.

    Raises:
        ValueError: For an unreadable, world-readable or too short key
            (the message never contains the key).
    """
    env = os.environ if environ is None else environ
    source: str
    if key_file is None and env.get(ENV_KEY_FILE):
        key_file = env[ENV_KEY_FILE]
    if key_file is not None:
        path = Path(key_file).expanduser()
        source = f"key file {path}"
        try:
            info = path.stat()
            raw = path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read the NATS signing {source}: {exc.strerror or exc}"
            ) from None
        if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            # Like ssh with private keys: a key every local user can read
            # (or replace) authenticates nothing.
            raise ValueError(
                f"the NATS signing {source} is readable or writable by other"
                f" users; run: chmod o-rw {path}"
            )
    elif env.get(ENV_KEY):
        raw = env[ENV_KEY].encode()
        source = f"${ENV_KEY}"
    else:
        return None
    key = raw.strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"the NATS signing key from {source} is {len(key)} bytes;"
            f" at least {MIN_KEY_BYTES} are needed (make one with:"
            " python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


@dataclasses.dataclass
class _Seen:
    # Nonces of accepted messages, oldest first, kept for one window.
    order: collections.deque[tuple[float, str]] = dataclasses.field(
        default_factory=collections.deque
    )
    nonces: set[str] = dataclasses.field(default_factory=set)


class MessageAuth:
    """Signs outgoing and checks incoming messages with one shared key.

    With `key=None` (only when the operator asked for insecure mode) nothing
    is signed and everything is accepted.

    Example:
        >>> auth = MessageAuth(b"0123456789abcdef0123")
        >>> headers = auth.sign("a.b", b"{}", run="r1")
        >>> auth.check("a.b", b"{}", headers, run="r1")
        >>> try:
        ...     auth.check("a.b", b"{}", headers, run="r1")
        ... except BadMessageError as exc:
        ...     print(exc.reason)
        replayed
    """

    def __init__(
        self,
        key: bytes | None,
        *,
        window_seconds: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Set up signing.

        Args:
            key: The shared key; None disables signing and checking.
            window_seconds: How far a message's timestamp may be from now
                (both ways: clocks of two nodes differ a little).
            clock: Wall-clock time source.
        """
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self._key = key
        self.window_seconds = float(window_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = _Seen()
        self.dropped: collections.Counter[str] = collections.Counter()
        """Messages refused, by reason."""

    @property
    def enabled(self) -> bool:
        """Whether messages are signed and checked."""
        return self._key is not None

    def _mac(self, subject: str, ts: str, nonce: str, run: str, body: bytes) -> str:
        assert self._key is not None
        material = b"\n".join(
            (_DOMAIN, subject.encode(), ts.encode(), nonce.encode(), run.encode(), body)
        )
        return hmac.new(self._key, material, hashlib.sha256).hexdigest()

    def sign(self, subject: str, body: bytes, *, run: str = "") -> dict[str, str]:
        """Return the headers that authenticate `body` on `subject`.

        Args:
            subject: The subject it is published to (a reply: the inbox).
            body: The exact bytes published.
            run: The run key the message is about (`""` for none).

        Returns:
            NATS headers (empty in insecure mode).
        """
        if self._key is None:
            return {}
        ts = f"{self._clock():.6f}"
        nonce = secrets.token_hex(16)
        return {
            HEADER_TIMESTAMP: ts,
            HEADER_NONCE: nonce,
            HEADER_RUN: run,
            HEADER_SIGNATURE: self._mac(subject, ts, nonce, run, body),
        }

    def check(
        self,
        subject: str,
        body: bytes,
        headers: Mapping[str, str] | None,
        *,
        run: str | None = None,
    ) -> None:
        """Accept a message or raise; a refused message is counted.

        Args:
            subject: The subject it arrived on.
            body: Its bytes.
            headers: Its NATS headers.
            run: The run key the body names; must equal the signed one
                (None: not checked).

        Raises:
            BadMessageError: Naming why it was refused.
        """
        try:
            self._check(subject, body, headers or {}, run)
        except BadMessageError as exc:
            with self._lock:
                self.dropped[exc.reason] += 1
            raise

    def _check(
        self, subject: str, body: bytes, headers: Mapping[str, str], run: str | None
    ) -> None:
        if self._key is None:
            return
        signature = headers.get(HEADER_SIGNATURE)
        if not signature:
            raise BadMessageError("unsigned", "no signature header")
        ts = headers.get(HEADER_TIMESTAMP, "")
        nonce = headers.get(HEADER_NONCE, "")
        signed_run = headers.get(HEADER_RUN, "")
        expected = self._mac(subject, ts, nonce, signed_run, body)
        if not hmac.compare_digest(expected, signature):
            raise BadMessageError("bad-signature", "the signature does not match")
        try:
            sent = float(ts)
        except ValueError:
            raise BadMessageError(
                "malformed", "the timestamp is not a number"
            ) from None
        if len(nonce) < 16:
            raise BadMessageError("malformed", "the nonce is too short")
        if run is not None and run != signed_run:
            raise BadMessageError("bad-signature", "the body names another run")
        now = self._clock()
        if abs(now - sent) > self.window_seconds:
            raise BadMessageError(
                "stale",
                f"sent {now - sent:+.0f}s from now (window ±{self.window_seconds:g}s)",
            )
        with self._lock:
            seen = self._seen
            horizon = now - 2 * self.window_seconds
            while seen.order and seen.order[0][0] < horizon:
                seen.nonces.discard(seen.order.popleft()[1])
            if nonce in seen.nonces:
                raise BadMessageError("replayed", "this nonce was already accepted")
            seen.nonces.add(nonce)
            seen.order.append((now, nonce))

    def count(self, reason: str) -> None:
        """Count a message refused for a reason found outside `check`.

        Args:
            reason: Short label, e.g. `malformed`.
        """
        with self._lock:
            self.dropped[reason] += 1

    def counts(self) -> dict[str, int]:
        """Return the refused messages by reason (a copy)."""
        with self._lock:
            return dict(self.dropped)
