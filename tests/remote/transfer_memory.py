"""Move one entry to or from a remote and report the peak memory it took.

Run as a script (a fresh process): `python transfer_memory.py
upload|download CACHE_DIR REMOTE_URL KEY`. The kernel's peak resident size
(VmHWM) is reset just before the transfer (`/proc/self/clear_refs`, Linux),
so the peak reported is the transfer's own. Prints one JSON object with the
resident size before and the peak during the transfer, in bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from styxcache.remote import RemoteTier
from styxcache.store import CacheStore


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    mode, cache_dir, url, key = sys.argv[1:5]
    cache = CacheStore(Path(cache_dir))
    tier = RemoteTier(url)
    tier.has_entry("0" * 64)  # start the client's runtime and connection pool
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident size
    before = _status("VmRSS")
    if mode == "upload":
        outcome = tier.upload(cache, key)
    else:
        manifest = tier.download(cache, key)
        outcome = "downloaded" if manifest is not None else "missing"
    print(json.dumps({"before": before, "peak": _status("VmHWM"), "outcome": outcome}))


if __name__ == "__main__":
    main()
