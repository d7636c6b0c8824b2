"""A pipeline process for the concurrency tests: hits old entries, commits new ones.

Run as `python pipeline_worker.py CACHE SCRATCH INPUT WORKER ITERATIONS OLD HITS
[MAX_SIZE]`, where HITS is `old` (hit the old entries gc is trimming) or `own`
(hit entries this worker committed a moment ago). After every run it checks
the outputs it was handed, right away, the way the next step of a pipeline
would read them, and prints one JSON summary line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

from clihelpers import make_runner, write_block  # noqa: E402

BLOCK = 4096


def main() -> int:
    cache, scratch, source = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    worker, iterations, old = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    hits = sys.argv[7]
    policy = {"max_size": sys.argv[8]} if len(sys.argv) > 8 else {}
    runner = make_runner(cache, scratch, **policy)
    expected_copy = source.read_bytes()
    problems: list[str] = []
    for i in range(iterations):
        # Alternate: commit a new entry, then hit an old one or our last one.
        mine = 1000 * (worker + 1) + i
        if i % 2 == 0:
            n = mine
        elif hits == "old":
            n = (worker * 7 + i) % old
        else:
            n = mine - 1
        try:
            outputs = write_block(runner, source, size=BLOCK, n=n)
            data = outputs["out"].read_bytes()
            copy = outputs["copy"].read_bytes()
        except OSError as exc:
            problems.append(f"n={n}: {exc}")
            continue
        if data != bytes(BLOCK) or copy != expected_copy:
            problems.append(f"n={n}: outputs have the wrong content")
    stats = runner.stats
    print(
        json.dumps({"problems": problems, "hits": stats.hits, "misses": stats.misses})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
