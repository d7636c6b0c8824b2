"""Message signing without a server: what is accepted and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from styxcache.scheduler.signing import (
    HEADER_NONCE,
    HEADER_RUN,
    HEADER_TIMESTAMP,
    BadMessageError,
    MessageAuth,
    load_key,
)

KEY = b"0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def reason(auth: MessageAuth, *args: object, **kwargs: object) -> str:
    with pytest.raises(BadMessageError) as caught:
        auth.check(*args, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_each_tampering_is_refused_and_counted() -> None:
    clock = Clock()
    sender = MessageAuth(KEY, clock=clock)
    receiver = MessageAuth(KEY, window_seconds=60, clock=clock)
    headers = sender.sign("p.runs.a", b"body", run="a@1")
    assert reason(receiver, "p.runs.a", b"body", {}) == "unsigned"
    assert reason(receiver, "p.runs.a", b"b0dy", headers) == "bad-signature"
    assert reason(receiver, "p.runs.b", b"body", headers) == "bad-signature"
    assert reason(receiver, "p.runs.a", b"body", headers, run="a@2") == "bad-signature"
    moved = {**headers, HEADER_RUN: "a@2"}
    assert reason(receiver, "p.runs.a", b"body", moved) == "bad-signature"
    later = {**headers, HEADER_TIMESTAMP: str(clock.now + 1)}
    assert reason(receiver, "p.runs.a", b"body", later) == "bad-signature"
    receiver.check("p.runs.a", b"body", headers, run="a@1")  # the real one
    assert reason(receiver, "p.runs.a", b"body", headers) == "replayed"
    clock.now += 61
    fresh = sender.sign("p.runs.a", b"body")
    clock.now -= 61
    assert reason(receiver, "p.runs.a", b"body", fresh) == "stale"  # from the future
    other = MessageAuth(b"another-key-of-enough-length", clock=clock)
    forged = other.sign("p.runs.a", b"body")
    assert reason(receiver, "p.runs.a", b"body", forged) == "bad-signature"
    short = MessageAuth(KEY, clock=clock)
    bad_nonce = short.sign("p.runs.a", b"body")
    bad_nonce[HEADER_NONCE] = "x"
    assert reason(receiver, "p.runs.a", b"body", bad_nonce) == "bad-signature"
    assert receiver.counts() == {
        "unsigned": 1,
        "bad-signature": 7,
        "replayed": 1,
        "stale": 1,
    }


def test_an_old_message_is_stale_once_its_nonce_is_forgotten() -> None:
    clock = Clock()
    auth = MessageAuth(KEY, window_seconds=10, clock=clock)
    headers = auth.sign("s", b"x")
    auth.check("s", b"x", headers)
    clock.now += 25  # the nonce is pruned; the timestamp still refuses it
    assert reason(auth, "s", b"x", headers) == "stale"
    for n in range(100):
        auth.check("s", b"%d" % n, auth.sign("s", b"%d" % n))
    assert len(auth._seen.nonces) == 100  # bounded by the window, not forever


def test_insecure_mode_signs_nothing_and_accepts_everything() -> None:
    auth = MessageAuth(None)
    assert auth.sign("s", b"x") == {}
    auth.check("s", b"x", None)
    assert not auth.enabled and auth.counts() == {}


def test_keys_come_from_a_private_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY.decode() + "\n")
    path.chmod(0o600)
    assert load_key(path, environ={}) == KEY
    assert load_key(environ={"STYXCACHE_NATS_KEY_FILE": str(path)}) == KEY
    assert load_key(environ={"STYXCACHE_NATS_KEY": KEY.decode()}) == KEY
    assert load_key(environ={}) is None
    path.chmod(0o604)
    with pytest.raises(ValueError, match="chmod o-rw") as caught:
        load_key(path, environ={})
    assert KEY.decode() not in str(caught.value)
    with pytest.raises(ValueError, match="cannot read"):
        load_key(tmp_path / "missing", environ={})
    with pytest.raises(ValueError, match="at least 16"):
        load_key(environ={"STYXCACHE_NATS_KEY": "short"})
