"""Run the conformance suite outside pytest and print its coverage table.

    python tests/conformance/report.py                 # every suite, Markdown table
    python tests/conformance/report.py --suite fsl     # one suite
    python tests/conformance/report.py --json out.json # every wrapper's result
    python tests/conformance/report.py --update-docs   # rewrite docs/conformance.md's tables

The table is the one in docs/conformance.md. Exit status 1 when a wrapper fails.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conformance_harness import VARIANTS, WrapperResult, check_many, fast_tmp
from niwrap_catalogue import discover

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "conformance.md"
START, END = "<!-- conformance-table: start -->", "<!-- conformance-table: end -->"
COLUMNS = ("wrappers", "cached", "uncached-by-rule", "failing", "unbuildable")


def table(results: list[WrapperResult]) -> str:
    """The per-suite coverage table, in Markdown."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for result in results:
        for key in (result.suite, "**total**"):
            counts[key]["wrappers"] += 1
            counts[key][result.status] += 1
    lines = [
        "| suite | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for suite in [*sorted(k for k in counts if k != "**total**"), "**total**"]:
        row = counts[suite]
        lines.append(f"| {suite} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def behaviour_table(results: list[WrapperResult]) -> str:
    """Hits and follow-up checks per stand-in behaviour."""
    hits: collections.Counter[str] = collections.Counter()
    changed: collections.Counter[str] = collections.Counter()
    edited: collections.Counter[str] = collections.Counter()
    failing: collections.Counter[str] = collections.Counter()
    for result in results:
        for b in result.behaviours:
            hits[b.behaviour] += b.hit
            changed[b.behaviour] += b.changed
            edited[b.behaviour] += b.outside_edit
            failing[b.behaviour] += bool(b.problems)
    lines = [
        "| stand-in behaviour | repeat was a hit | then a changed input "
        "(or param) reran | an edited outside output reran | failing |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {b} | {hits[b]} | {changed[b]} | {edited[b]} | {failing[b]} |"
        for b in VARIANTS
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", help="only these suites")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--problems", type=int, default=20, help="failures listed")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"replace the tables in {DOC.relative_to(ROOT)} (whole catalogue only)",
    )
    args = parser.parse_args(argv)
    # The cache warns once per uncached tool; thousands of such lines would
    # bury the table.
    logging.getLogger("styxcache").addHandler(logging.NullHandler())
    logging.getLogger("styxcache").propagate = False
    wrappers = discover(set(args.suite) if args.suite else None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(
        prefix="styxcache-conformance-", dir=fast_tmp()
    ) as tmp:
        results = check_many(wrappers, Path(tmp))
    elapsed = time.perf_counter() - started
    print(table(results))
    print()
    print(behaviour_table(results))
    print()
    print(f"{len(results)} wrappers in {elapsed:.0f} s")
    failing = [r for r in results if r.failing]
    for result in failing[: args.problems]:
        print(f"\n{result.wrapper} ({result.command}):")
        for problem in result.all_problems()[:4]:
            print(f"  {problem[:500]}")
    for result in results:
        if result.unbuildable:
            print(f"unbuildable {result.wrapper}: {result.unbuildable}")
        if result.full_unbuildable:
            print(
                f"no all-optional variant {result.wrapper}: {result.full_unbuildable}"
            )
    if args.update_docs and not args.suite:
        text = DOC.read_text(encoding="utf-8")
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        tables = f"{table(results)}\n\n{behaviour_table(results)}"
        DOC.write_text(f"{head}{START}\n{tables}\n{END}{tail}", encoding="utf-8")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [{**dataclasses.asdict(r), "status": r.status} for r in results],
                indent=1,
            )
        )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
