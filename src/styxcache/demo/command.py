"""The `styxcache demo` command: a small real pipeline run twice through the cache.

Registered in the command line by `styxcache.cli.demo`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from styxcache.demo import mrtrix
from styxcache.demo.builtin import run_builtin_pipeline
from styxcache.demo.report import PipelineReport

__all__ = ["demo", "summarize"]


def _table(title: str, report: PipelineReport) -> Table:
    table = Table(title=title, title_justify="left")
    for column, justify in (
        ("subject", "left"),
        ("step", "left"),
        ("", "left"),
        ("ms", "right"),
        ("stdout", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for step in report.steps:
        outcome = "[green]hit[/]" if step.outcome == "hit" else "[yellow]ran[/]"
        stdout = " | ".join(step.stdout)
        table.add_row(
            step.subject,
            step.step,
            outcome,
            f"{step.seconds * 1000:.1f}",
            stdout if len(stdout) <= 60 else stdout[:57] + "...",
        )
    table.caption = (
        f"{report.hits} hit(s), {report.ran} ran; tool time {report.tool_seconds:.2f} s"
    )
    return table


@contextlib.contextmanager
def _quiet_base_runner() -> Iterator[None]:
    """Keep LocalRunner's per-command log lines out of the demo's output.

    LocalRunner attaches a DEBUG handler to its logger unless one is there
    already; the tables say what ran. The logger is restored afterwards, so a
    program that calls the command keeps its own logging.
    """
    runner_log = logging.getLogger("styx_local_runner")
    level, handlers = runner_log.level, list(runner_log.handlers)
    quiet = logging.NullHandler()
    runner_log.addHandler(quiet)
    runner_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        runner_log.removeHandler(quiet)
        runner_log.setLevel(level)
        runner_log.handlers[:] = handlers


def _as_json(report: PipelineReport) -> list[dict[str, object]]:
    return [
        {
            "subject": s.subject,
            "step": s.step,
            "outcome": s.outcome,
            "seconds": s.seconds,
            "stdout": list(s.stdout),
        }
        for s in report.steps
    ]


@click.command()
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache directory to use and keep (default: a temporary one, removed after).",
)
@click.option(
    "--subjects",
    type=click.IntRange(1, 99),
    default=3,
    show_default=True,
    help="How many synthetic subjects to process.",
)
@click.option(
    "--builtin",
    is_flag=True,
    help="Use the built-in POSIX-tools pipeline even when MRtrix3 is installed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the two runs as JSON.")
def demo(cache_dir: Path | None, subjects: int, builtin: bool, as_json: bool) -> None:
    """Run a small real pipeline twice through the cache and show the hits.

    With MRtrix3 and NiWrap installed, the pipeline is mrconvert -> mrthreshold
    -> mrstats/mrinfo on synthetic NIfTI images; otherwise (or with --builtin)
    it is sort -> uniq -> sha256sum/wc on synthetic tables. The second run is
    served from the cache.

    \b
    Examples:
      styxcache demo
      styxcache demo --subjects 5 --cache-dir ./demo-cache
    """  # noqa: D301 - click's \b marker must be a real backspace
    console = Console()
    missing = mrtrix.missing_requirements()
    use_mrtrix = not builtin and not missing
    if not use_mrtrix and not builtin and not as_json:
        console.print(
            "[dim]MRtrix3 pipeline not available here (missing: "
            + escape("; ".join(missing))
            + "); running the built-in pipeline instead.[/]"
        )
    scratch = Path(tempfile.mkdtemp(prefix="styxcache-demo-"))
    cache = cache_dir if cache_dir is not None else scratch / "cache"
    try:
        if use_mrtrix:
            name = "MRtrix3 pipeline (NiWrap wrappers, real MRtrix3 tools)"

            def run() -> PipelineReport:
                return mrtrix.run_pipeline(cache, scratch / "work", subjects)

        else:
            name = "built-in pipeline (POSIX tools)"

            def run() -> PipelineReport:
                return run_builtin_pipeline(cache, scratch / "work", subjects)

        with _quiet_base_runner():
            first = run()
            second = run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "pipeline": "mrtrix" if use_mrtrix else "builtin",
                    "first": _as_json(first),
                    "second": _as_json(second),
                    "first_tool_seconds": first.tool_seconds,
                    "second_tool_seconds": second.tool_seconds,
                    "first_hits": first.hits,
                    "summary": summarize(first, second),
                },
                indent=2,
                sort_keys=True,
            )
        )
        return
    console.print(f"[bold]{name}[/], cache: {escape(str(cache))}")
    console.print(_table("First run", first))
    console.print(_table("Second run", second))
    console.print(escape(summarize(first, second)))


def summarize(first: PipelineReport, second: PipelineReport) -> str:
    """Say what the second run gained, honestly.

    Times are the tools' own (imports, input images and runner set-up are
    not counted). When the first run was already served from the cache (a
    `--cache-dir` used before), it says so instead of claiming a speed-up.

    Args:
        first: The first run.
        second: The second run.

    Returns:
        One or two sentences.
    """
    total = len(second.steps)
    served = f"Second run: {second.hits}/{total} steps served from the cache"
    if first.ran == 0:
        return (
            f"The first run was already served from the cache ({first.hits}/"
            f"{len(first.steps)} steps hit: the cache held them from an earlier"
            f" run), so there is no speed-up to show; use a new --cache-dir to"
            f" see one. {served}, tool time {second.tool_seconds:.3f} s."
        )
    # Compare only the steps that ran the first time with the same steps now.
    ran = [i for i, step in enumerate(first.steps) if step.outcome == "ran"]
    before = sum(first.steps[i].seconds for i in ran)
    after = sum(second.steps[i].seconds for i in ran if i < total)
    ratio = f"{before / after:.0f}x" if after > 0 else "far"
    note = (
        f" (the first run already had {first.hits} step(s) from the cache)"
        if first.hits
        else ""
    )
    return (
        f"{served}{note}. The {len(ran)} step(s) that ran the first time took"
        f" {before:.3f} s of tool time then and {after:.3f} s now: {ratio} less."
    )
