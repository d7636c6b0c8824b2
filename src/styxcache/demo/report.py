"""What a demo pipeline run did, step by step, and how one step is run and timed."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from styxdefs import Execution, Metadata, Runner

from styxcache.events import collect_events

__all__ = ["Outcome", "PipelineReport", "StepReport", "run_step", "subject_ids"]

Outcome = Literal["hit", "ran"]

_MAX_SUBJECTS = 99
_Result = TypeVar("_Result")


def subject_ids(count: int) -> list[str]:
    """Return BIDS-style subject labels `sub-01` ... for `count` subjects.

    Args:
        count: Number of subjects, 1 to 99.

    Returns:
        The labels, in order.

    Raises:
        ValueError: If `count` is not an integer from 1 to 99.
    """
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError(f"subjects must be an integer, got {count!r}")
    if not 1 <= count <= _MAX_SUBJECTS:
        raise ValueError(f"subjects must be between 1 and {_MAX_SUBJECTS}, got {count}")
    return [f"sub-{index:02d}" for index in range(1, count + 1)]


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What one tool call of the pipeline did.

    Attributes:
        subject: Subject label, e.g. `sub-01`.
        step: The tool (`metadata.id` of the wrapper).
        outcome: `"hit"` when served from the cache, otherwise `"ran"`.
        event: The cache event kind (`hit`, `miss`, `refresh`, `bypass`), or
            `""` when the runner is not a caching runner.
        seconds: Wall time of the call.
        outputs: Named output paths (`root` is the output folder).
        stdout: The tool's standard output lines, captured or replayed.
    """

    subject: str
    step: str
    outcome: Outcome
    event: str
    seconds: float
    outputs: Mapping[str, Path]
    stdout: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PipelineReport:
    """All steps of one pipeline run, in execution order.

    Attributes:
        steps: One report per tool call.
        seconds: Wall time of the tool calls, from the first call to the
            last (imports, input images and building the runner excluded).
    """

    steps: tuple[StepReport, ...]
    seconds: float

    @property
    def tool_seconds(self) -> float:
        """Summed wall time of the tool calls (hits included)."""
        return sum(step.seconds for step in self.steps)

    @property
    def hits(self) -> int:
        """Number of steps served from the cache."""
        return sum(step.outcome == "hit" for step in self.steps)

    @property
    def ran(self) -> int:
        """Number of steps whose tool actually ran."""
        return sum(step.outcome == "ran" for step in self.steps)

    def for_subject(self, subject: str) -> list[StepReport]:
        """Return the steps of one subject.

        Args:
            subject: Subject label.

        Returns:
            That subject's steps, in order.
        """
        return [step for step in self.steps if step.subject == subject]

    def format_table(self) -> str:
        """Render the steps as a plain-text table, one line per step."""
        lines = [f"{'subject':<8} {'step':<12} {'outcome':<7} {'ms':>8}  stdout"]
        for step in self.steps:
            lines.append(
                f"{step.subject:<8} {step.step:<12} {step.outcome:<7} "
                f"{step.seconds * 1000:>8.1f}  {' | '.join(step.stdout)}"
            )
        lines.append(
            f"{self.hits} hit(s), {self.ran} ran, {self.seconds:.2f} s in total"
        )
        return "\n".join(lines)


Prepare = Callable[[Execution], tuple[list[str], _Result, Mapping[str, Path]]]
"""Declares a step's inputs and outputs on its execution; returns the command
line, the wrapper's result and the named output paths."""


def run_step(
    runner: Runner,
    subject: str,
    metadata: Metadata,
    params: Any,
    prepare: Prepare[_Result],
) -> tuple[StepReport, _Result]:
    """Run one tool call the way a generated wrapper's `*_execute` does, timed.

    The wrapper passes no output handler to `run()`; spelling the steps out is
    how a caller captures the tool's stdout.

    Args:
        runner: Any Styx runner (caching or not).
        subject: Subject label, for the report.
        metadata: The tool's metadata.
        params: The call's parameters.
        prepare: Declares inputs and outputs (see `Prepare`).

    Returns:
        The step's report and the wrapper's result.
    """
    stdout: list[str] = []
    started = time.perf_counter()
    with collect_events() as events:
        execution = runner.start_execution(metadata)
        execution.params(params)
        args, result, outputs = prepare(execution)
        execution.run(args, handle_stdout=stdout.append)
    kind = events[-1].kind if events else ""
    report = StepReport(
        subject=subject,
        step=metadata.id,
        outcome="hit" if kind == "hit" else "ran",
        event=kind,
        seconds=time.perf_counter() - started,
        outputs=outputs,
        stdout=tuple(stdout),
    )
    return report, result
