"""What message signing costs: task messages through a real nats-server, signed vs not.

`python benchmarks/nats_signing.py [N]` starts a nats-server on a free
loopback port, then publishes N task messages (default 5000) from one
connection to a subscriber on another, which checks and decodes each one, as
a worker does. Signed and unsigned rounds alternate (3 of each); the figures
are medians, and the ratio is signed / unsigned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nats

from styxcache.scheduler.runs import RunContext
from styxcache.scheduler.signing import MessageAuth
from styxcache.scheduler.wire import decode_task, encode_task

KEY = b"benchmark-key-0123456789abcdef0123"


async def one_round(url: str, n: int, signed: bool) -> float:
    sender = MessageAuth(KEY if signed else None)
    receiver = MessageAuth(KEY if signed else None)
    pub, sub = await nats.connect(url), await nats.connect(url)
    done = asyncio.Event()
    seen = 0

    async def on_task(msg: nats.aio.msg.Msg) -> None:
        nonlocal seen
        task = decode_task(msg.data)
        receiver.check(msg.subject, msg.data, msg.headers, run=task.key)
        seen += 1
        if seen == n:
            done.set()

    await sub.subscribe("bench.runs.x", cb=on_task)
    await sub.flush()
    nominal = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    started = time.perf_counter()
    for i in range(n):
        context = RunContext(
            "x", f"x@{i}", nominal, {"subject": f"sub-{i:04d}"}, str(i)
        )
        body = encode_task(context)
        headers = sender.sign("bench.runs.x", body, run=context.key)
        await pub.publish("bench.runs.x", body, headers=headers or None)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await pub.drain()
    await sub.drain()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    binary = shutil.which("nats-server") or str(
        Path(sys.executable).parent / "nats-server"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        url = f"nats://127.0.0.1:{port}"
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for signed in (False, True):
                times[signed].append(asyncio.run(one_round(url, n, signed)))
        plain, signed_t = (
            statistics.median(times[False]),
            statistics.median(times[True]),
        )
        print(f"{n} task messages through nats-server, checked and decoded:")
        print(f"  unsigned: {plain:.3f} s ({n / plain:,.0f} msg/s)")
        print(f"  signed:   {signed_t:.3f} s ({n / signed_t:,.0f} msg/s)")
        print(f"  signed / unsigned: {signed_t / plain:.2f}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
