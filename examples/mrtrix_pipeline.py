"""Run a small real MRtrix3 pipeline through NiWrap and styxcache.

Per subject: mrconvert -> mrthreshold -> mrstats and mrinfo, on synthetic
NIfTI images written by the script. Run it twice with the same cache folder:
the second run is served entirely from the cache.

    python examples/mrtrix_pipeline.py --cache-dir /tmp/styxcache-demo
    python examples/mrtrix_pipeline.py --cache-dir /tmp/styxcache-demo
    python examples/mrtrix_pipeline.py --cache-dir /tmp/styxcache-demo --change sub-02

Needs Debian's `mrtrix3` package and `pip install 'styxcache[niwrap]'`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from styxcache.demo.mrtrix import (
    MrtrixUnavailableError,
    missing_requirements,
    run_pipeline,
    subject_ids,
    write_image,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True, type=Path, help="cache folder")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder for input images and scratch (default: <cache-dir>.work)",
    )
    parser.add_argument("--subjects", type=int, default=3, help="1 to 99 (default 3)")
    parser.add_argument(
        "--change",
        metavar="SUBJECT",
        help="rewrite this subject's image with new data before running",
    )
    parser.add_argument(
        "--log", action="store_true", help="show runner and cache log lines"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.log:
        # A root handler also stops LocalRunner from installing its own
        # DEBUG-level handler, so only INFO lines appear.
        logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    work_dir = args.work_dir or args.cache_dir.with_name(args.cache_dir.name + ".work")
    try:
        labels = subject_ids(args.subjects)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.change is not None:
        if args.change not in labels:
            choices = ", ".join(labels)
            print(f"error: --change must be one of {choices}", file=sys.stderr)
            return 2
        if missing_requirements():
            print("error: " + "; ".join(missing_requirements()), file=sys.stderr)
            return 2
        # A seed no subject uses gives this subject genuinely new voxel data.
        seed = 1000 + labels.index(args.change)
        write_image(work_dir / "inputs" / f"{args.change}_T1w.nii", seed)
    try:
        report = run_pipeline(args.cache_dir, work_dir, args.subjects)
    except (MrtrixUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
