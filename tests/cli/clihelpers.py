"""Helpers for the cache command tests: real caches made by real runs.

Every entry comes from running a real command (`sh -c ...`) through
`CachingRunner(LocalRunner())`, called the way NiWrap wrappers call it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from styxdefs import LocalRunner, Metadata

from conftest import run_tool
from styxcache import CachePolicy, CachingRunner
from styxcache.cli import main
from styxcache.store import CacheStore

WRITE = Metadata(id="write", name="Write a block of bytes", package="demo")
COUNT = Metadata(id="count", name="Count lines", package="demo")


def make_runner(cache: Path, scratch: Path, **policy: Any) -> CachingRunner:
    return CachingRunner(
        LocalRunner(data_dir=scratch), cache, policy=CachePolicy(**policy)
    )


def write_block(
    runner: CachingRunner, infile: Path, *, size: int, n: int = 1
) -> dict[str, Path]:
    """A tool writing `size` zero bytes to out.bin and a copy of its input."""
    return run_tool(
        runner,
        WRITE,
        {"@type": "demo/write", "infile": str(infile), "size": size, "n": n},
        inputs={"infile": {}},
        outputs={"out": "out.bin", "copy": "copy.txt"},
        cargs=lambda p: [
            "sh",
            "-c",
            'head -c "$2" /dev/zero > out.bin && cp "$1" copy.txt && echo "n=$3"',
            "sh",
            p["infile"],
            str(size),
            str(n),
        ],
        stdout=[],
    )


def count_lines(runner: CachingRunner, infile: Path) -> dict[str, Path]:
    """A tool counting the lines of its input into count.txt."""
    return run_tool(
        runner,
        COUNT,
        {"@type": "demo/count", "infile": str(infile)},
        inputs={"infile": {}},
        outputs={"count": "count.txt"},
        cargs=lambda p: ["sh", "-c", 'wc -l < "$1" > count.txt', "sh", p["infile"]],
    )


def key_of(output: Path, cache: Path) -> str:
    """The key of the entry an output path points into."""
    relative = output.relative_to(cache)
    return relative.parts[1]


def set_last_use(cache: Path, key: str, when: float) -> None:
    """Pretend an entry was last used at `when` (its folder's mtime is its last use)."""
    os.utime(CacheStore(cache).entry_dir(key), (when, when))


def cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> Result:
    return CliRunner().invoke(
        main, list(args), env=env, input=input, catch_exceptions=False
    )


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def tree_snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under a folder with its content (links: their target)."""
    found: dict[str, bytes | str] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            found[rel] = os.readlink(path) if path.is_symlink() else path.read_bytes()
    return found
