"""A stand-in tool for the concurrency benchmark: one second of CPU, then a log line.

Usage: `python _busy.py COUNTER_FILE SECONDS`. The line appended to
COUNTER_FILE counts how many times the tool really ran.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    counter, seconds = sys.argv[1], float(sys.argv[2])
    until = time.process_time() + seconds
    spins = 0
    # CPU time, not wall time: eight copies on two cores must really compete.
    while time.process_time() < until:
        spins += 1
    with open(counter, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()} {spins}\n")
    with open("out.txt", "w", encoding="utf-8") as handle:
        handle.write("done\n")


if __name__ == "__main__":
    main()
