"""Targets for examples/schedule.yaml: list the subjects, process one subject.

`process_subject` runs two real tools per subject (`sort`, then `awk`)
through whatever Styx runner is global; `scheduled_pipeline.py` makes that a
`CachingRunner(LocalRunner())`, so a subject whose input did not change is
served from the cache on the next fire.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from styxdefs import Metadata, get_global_runner

from styxcache.scheduler import RunContext

SORT = Metadata(id="sort-lines", name="Sort a subject's lines", package="coreutils")
COUNT = Metadata(id="count-lines", name="Count lines", package="awk")


def data_dir() -> Path:
    """The folder holding one `<subject>.txt` per subject ($PIPELINE_DATA)."""
    return Path(os.environ.get("PIPELINE_DATA", "pipeline-data"))


def list_subjects() -> list[dict[str, Any]]:
    """Fan-out: one run per subject file, keyed by the subject id."""
    return [
        {"key": path.stem, "subject": path.stem, "path": str(path.resolve())}
        for path in sorted(data_dir().glob("*.txt"))
    ]


def process_subject(ctx: RunContext) -> None:
    """Sort the subject's file, then count its lines: two cached tool runs."""
    runner = get_global_runner()

    sort = runner.start_execution(SORT)
    sort.params({"@type": "coreutils/sort-lines", "input": ctx["path"]})
    source = sort.input_file(Path(ctx["path"]))
    sorted_path = sort.output_file("sorted.txt")
    sort.run(["sort", source, "-o", "sorted.txt"])

    count = runner.start_execution(COUNT)
    count.params({"@type": "awk/count-lines", "input": str(sorted_path)})
    counted = count.input_file(sorted_path)
    count.output_file("count.txt")
    count.run(["awk", 'END { print NR > "count.txt" }', counted])
