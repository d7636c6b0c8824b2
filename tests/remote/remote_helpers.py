"""A real tool that counts its own runs, called the way NiWrap wrappers call it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from styxdefs import LocalRunner, Metadata

from styxcache import CachePolicy, CachingRunner

HERE = Path(__file__).parent

UPPER = Metadata(id="upper", name="Upper-case a file", package="demo")
BLOB = Metadata(id="blob", name="Write a large file", package="demo")


def _root_conftest() -> Any:
    # Every conftest is imported as "conftest" (tests elsewhere may win that
    # name): load the shared helpers of tests/conftest.py under our own.
    path = HERE.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_styxcache_tests_root_rh", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
run_tool = _root.run_tool
require = _root.require


def make_runner(cache: Path, scratch: Path, **kwargs: Any) -> CachingRunner:
    policy = kwargs.pop("policy", None) or CachePolicy()
    return CachingRunner(LocalRunner(data_dir=scratch), cache, policy=policy, **kwargs)


def upper(
    runner: CachingRunner, infile: Path, counter: Path, stdout: list[str] | None = None
) -> dict[str, Path]:
    """Upper-case `infile` into upper.txt and sub/copy.txt; one line per run in `counter`."""
    return run_tool(
        runner,
        UPPER,
        {"@type": "demo/upper", "infile": str(infile)},
        inputs={"infile": {}},
        outputs={"upper": "upper.txt", "copy": "sub/copy.txt"},
        cargs=lambda p: [
            "sh",
            "-c",
            'echo run >> "$1" && mkdir -p sub empty && tr a-z A-Z < "$2" > upper.txt'
            ' && cp "$2" sub/copy.txt && ln -s upper.txt link.txt && echo converted',
            "sh",
            str(counter),
            p["infile"],
        ],
        stdout=stdout if stdout is not None else [],
    )


def big_file(
    runner: CachingRunner, infile: Path, counter: Path, mib: int
) -> dict[str, Path]:
    """Write `mib` MiB of pseudo-random bytes derived from the input to big.bin."""
    return run_tool(
        runner,
        BLOB,
        {"@type": "demo/blob", "infile": str(infile), "mib": mib},
        inputs={"infile": {}},
        outputs={"big": "big.bin"},
        cargs=lambda p: [
            sys.executable,
            "-c",
            _BIG,
            str(counter),
            p["infile"],
            str(mib),
        ],
    )


# Pseudo-random bytes (incompressible, seeded by the input) written 1 MiB at a time.
_BIG = """
import random, sys
counter, infile, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(counter, "a") as handle:
    handle.write("run\\n")
rng = random.Random(open(infile, "rb").read())
with open("big.bin", "wb") as out:
    for _ in range(mib):
        out.write(rng.randbytes(1 << 20))
"""


def runs(counter: Path) -> int:
    """How many times the tool ran."""
    try:
        return len(counter.read_text().splitlines())
    except FileNotFoundError:
        return 0
