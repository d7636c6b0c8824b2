"""What the ownership check costs on a hit: `trust="self"` vs `trust="any"`.

`python benchmarks/trust_check.py [FILES...]` fills one entry per size (an
entry of 1 file and one of 500 by default) and serves it over and over with
both settings, alternating rounds (5 of each, 20 hits per round). The figures
are medians per hit; the ratio is self / any. `"any"` is the baseline: it
skips the check (one `lstat` of every file of the entry, of its shard and of
the cache folder).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from styxdefs import LocalRunner, Metadata

from styxcache import CachePolicy, CachingRunner

TOOL = Metadata(id="many", name="Write many files", package="bench")


def step(runner: CachingRunner, files: int) -> None:
    execution = runner.start_execution(TOOL)
    execution.params({"files": files})
    execution.output_file(".")
    execution.run(["sh", "-c", f"for i in $(seq {files}); do echo $i > f$i; done"])


def one_round(runner: CachingRunner, files: int, hits: int = 20) -> float:
    started = time.perf_counter()
    for _ in range(hits):
        step(runner, files)
    return (time.perf_counter() - started) / hits


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [1, 500]
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        runners = {
            trust: CachingRunner(
                LocalRunner(data_dir=base / "styx_tmp"),
                base / "cache",
                policy=CachePolicy(trust=trust, memo=False),  # type: ignore[arg-type]
            )
            for trust in ("any", "self")
        }
        for files in sizes:
            step(runners["any"], files)  # fill the entry
            rounds: dict[str, list[float]] = {"any": [], "self": []}
            for _ in range(5):
                for trust, runner in runners.items():
                    rounds[trust].append(one_round(runner, files))
            any_s = statistics.median(rounds["any"])
            self_s = statistics.median(rounds["self"])
            print(
                f"{files:>5} files: any {any_s * 1e3:.2f} ms/hit, "
                f"self {self_s * 1e3:.2f} ms/hit, ratio {self_s / any_s:.2f}"
            )


if __name__ == "__main__":
    main()
