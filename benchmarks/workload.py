"""Benchmark worker: runs one workload at a time for whichever styxcache it imports.

The same script serves both implementations; which one it measures depends only
on the interpreter that runs it (ours from the project's environment, 0.3.0
from `.bench/venv-old`). It uses each package only through its public API:
`CachingRunner(LocalRunner(...), cache_dir, policy=CachePolicy())`, the call
sequence generated NiWrap code makes, and `ContentHasher().hash_path()`.

Protocol: one JSON request per line on stdin, one JSON answer per line on
stdout. `python workload.py peak ...` instead measures the peak memory of a
single hit in a fresh process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from styxdefs import LocalRunner, Metadata

import styxcache
from styxcache import CachePolicy, CachingRunner, ContentHasher

TOOL = Metadata(id="bench_tool", name="bench tool", package="bench")
BUSY = Path(__file__).with_name("_busy.py")


def make_runner(work: Path, name: str) -> CachingRunner:
    """A caching runner over a LocalRunner, both with folders under `work`."""
    base = LocalRunner(data_dir=work / f"{name}-scratch")
    return CachingRunner(base, work / f"{name}-cache", policy=CachePolicy())


def call(
    runner: Any,
    params: dict[str, Any],
    inputs: list[tuple[str, bool]],
    cargs: list[str] | None = None,
) -> None:
    """One tool call the way a NiWrap wrapper makes it; `touch` writes the output."""
    execution = runner.start_execution(TOOL)
    execution.params(params)
    for path, parent in inputs:
        execution.input_file(path, resolve_parent=parent)
    execution.output_file("out.txt")
    # Generated wrappers name outputs relative to the tool's working folder.
    execution.run(cargs if cargs is not None else ["touch", "out.txt"])


def timed_calls(fn: Any, budget: float, least: int, most: int) -> list[float]:
    """Call `fn` repeatedly for about `budget` seconds; return each call's time."""
    times: list[float] = []
    spent = 0.0
    while len(times) < most and (len(times) < least or spent < budget):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return times


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


class Worker:
    """Holds the runners between requests, so imports and setup are paid once."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.runner = make_runner(work, "hits")
        self.miss_runner = make_runner(work, "misses")
        self.bare = LocalRunner(data_dir=work / "bare-scratch")
        self.counter = 0

    def hit(self, request: dict[str, Any]) -> dict[str, Any]:
        inputs = [(request["input"], bool(request.get("resolve_parent")))]
        params = {"input": request["input"], "case": request["case"]}
        if request.get("prime"):
            call(self.runner, params, inputs)  # the miss that makes the entry
            call(self.runner, params, inputs)  # and one hit, which warms everything
            return {}
        times = timed_calls(
            lambda: call(self.runner, params, inputs),
            request["budget"],
            request.get("least", 1),
            request.get("most", 200),
        )
        return {"median": _median(times), "calls": len(times)}

    def hash(self, request: dict[str, Any]) -> dict[str, Any]:
        hasher = ContentHasher()
        path = Path(request["path"])
        start = time.perf_counter()
        hasher.hash_path(path)
        return {"seconds": time.perf_counter() - start}

    def ceiling(self, request: dict[str, Any]) -> dict[str, Any]:
        """blake3 on bytes already in memory: what hashing costs without any I/O."""
        from blake3 import blake3

        data = os.urandom(1 << 20) * (request["mib"])
        start = time.perf_counter()
        threads = request.get("threads", 0) or blake3.AUTO
        blake3(data, max_threads=threads).digest()
        return {"seconds_per_byte": (time.perf_counter() - start) / len(data)}

    def miss(self, request: dict[str, Any]) -> dict[str, Any]:
        cargs = ["touch", "out.txt"]

        def cached() -> None:
            self.counter += 1
            call(self.miss_runner, {"n": self.counter, "pid": os.getpid()}, [], cargs)

        def bare() -> None:
            self.counter += 1
            call(self.bare, {"n": self.counter}, [], cargs)

        cached_times: list[float] = []
        bare_times: list[float] = []
        # Interleaved, so drift (page cache, CPU frequency) hits both alike.
        for _ in range(request["calls"]):
            cached_times.extend(timed_calls(cached, 0, 1, 1))
            bare_times.extend(timed_calls(bare, 0, 1, 1))
        return {"cached": _median(cached_times), "bare": _median(bare_times)}

    def concurrent(self, request: dict[str, Any]) -> dict[str, Any]:
        count = request["processes"]
        tag = request["tag"]
        seconds = float(request.get("seconds", 1.0))
        counter = self.work / f"busy-{tag}-{count}.log"
        context = multiprocessing.get_context("fork")
        go = context.Event()
        ready = context.Semaphore(0)
        finished: Any = context.Queue()
        children = [
            context.Process(
                target=_concurrent_child,
                args=(
                    self.work,
                    tag,
                    count,
                    str(counter),
                    seconds,
                    go,
                    ready,
                    finished,
                ),
            )
            for _ in range(count)
        ]
        for child in children:
            child.start()
        for _ in children:
            ready.acquire()
        start = time.time()
        go.set()
        ends = [finished.get() for _ in children]
        for child in children:
            child.join()
        runs = len(counter.read_text().splitlines()) if counter.exists() else 0
        return {"seconds": max(ends) - start, "tool_runs": runs}


def _concurrent_child(
    work: Path,
    tag: str,
    count: int,
    counter: str,
    seconds: float,
    go: Any,
    ready: Any,
    finished: Any,
) -> None:
    # Each child is a separate process with its own runner, like separate
    # pipeline jobs sharing one cache; only the start signal is shared.
    runner = make_runner(work, "concurrent")
    ready.release()
    go.wait()
    call(
        runner,
        {"tag": tag, "count": count},
        [],
        [sys.executable, str(BUSY), counter, str(seconds)],
    )
    finished.put(time.time())


def peak(path: str, work: str) -> None:
    """Serve one hit on `path` (primed by the caller) and report the peak RSS."""
    runner = make_runner(Path(work), "hits")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call(runner, {"input": path, "case": "peak"}, [(path, False)])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after}))


def serve(work: Path) -> None:
    worker = Worker(work)
    hello = {
        "version": getattr(styxcache, "__version__", "?"),
        "file": styxcache.__file__,
    }
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        answer = getattr(worker, request["op"])(request)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "peak":
        peak(sys.argv[2], sys.argv[3])
    else:
        serve(Path(sys.argv[1]))
