"""A small real MRtrix3 pipeline run through NiWrap and a `CachingRunner`.

Per subject: `mrconvert` (NIfTI to MRtrix format) -> `mrthreshold` (automatic
mask) -> `mrstats` (mean, std and voxel count inside the mask) and `mrinfo`
(size and data type of the mask). The inputs are synthetic NIfTI images
written here with nibabel, so nothing is downloaded.

The example script, the integration test and `styxcache demo` all call
`run_pipeline`. NiWrap, nibabel and numpy are imported only when the pipeline
runs, so importing this module costs nothing when they are absent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from styxdefs import Execution, LocalRunner, Metadata, Runner

from styxcache.events import collect_events

if TYPE_CHECKING:
    from styxcache import CachePolicy

__all__ = [
    "MRTRIX_TOOLS",
    "MrtrixUnavailableError",
    "PipelineReport",
    "StepReport",
    "ensure_images",
    "missing_requirements",
    "mrtrix_available",
    "run_pipeline",
    "run_subjects",
    "subject_ids",
    "write_image",
]

_log = logging.getLogger("styxcache.demo_mrtrix")

MRTRIX_TOOLS = ("mrconvert", "mrthreshold", "mrstats", "mrinfo")
"""The MRtrix3 commands the pipeline needs on PATH."""

DEFAULT_SHAPE = (16, 16, 8)
"""Voxel grid of the synthetic images: small, so a subject takes milliseconds."""

_MIN_EDGE = 4
_MAX_SUBJECTS = 99

Outcome = Literal["hit", "ran"]
_Out = TypeVar("_Out", bound=NamedTuple)


class MrtrixUnavailableError(RuntimeError):
    """Raised when the MRtrix3 tools or the Python packages are missing."""


def missing_requirements() -> list[str]:
    """List what the pipeline needs and cannot find here.

    Returns:
        One human-readable item per missing piece; empty when all is present.
    """
    missing = [
        f"python package {module!r} (pip install 'styxcache[niwrap]')"
        for module in ("niwrap.mrtrix", "nibabel", "numpy")
        if not _importable(module)
    ]
    missing += [
        f"MRtrix3 command {tool!r} on PATH (Debian: apt-get install mrtrix3)"
        for tool in MRTRIX_TOOLS
        if shutil.which(tool) is None
    ]
    return missing


def mrtrix_available() -> bool:
    """Return True when NiWrap's MRtrix3 wrappers and the MRtrix3 tools are present."""
    return not missing_requirements()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        # find_spec imports the parent package; "niwrap" itself may be absent.
        return False


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


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= _MIN_EDGE
        for v in values
    ):
        raise ValueError(
            f"shape must be three integers of at least {_MIN_EDGE}, got {shape!r}"
        )
    return (values[0], values[1], values[2])


def write_image(
    path: str | os.PathLike[str],
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
) -> Path:
    """Write a synthetic T1-like NIfTI image: noise plus a bright central block.

    The bytes depend only on `seed` and `shape`, so rewriting an image with the
    same seed leaves its content (and its cache key) unchanged. The file is an
    uncompressed `.nii` on purpose: gzip stores a timestamp in its header, so a
    rewritten `.nii.gz` would differ byte for byte and miss the cache.

    Args:
        path: Where to write; must end in `.nii`.
        seed: Seed of the noise and of the block's brightness.
        shape: Voxel grid, three integers of at least 4.

    Returns:
        The path written.

    Raises:
        ValueError: If `path` does not end in `.nii` or `shape` is invalid.
    """
    target = Path(path)
    if target.suffix != ".nii":
        raise ValueError(f"synthetic images are written as .nii, got {target.name!r}")
    nx, ny, nz = _check_shape(shape)
    import nibabel
    import numpy

    rng = numpy.random.default_rng(seed)
    data = rng.normal(100.0, 20.0, (nx, ny, nz)).astype(numpy.float32)
    # A block at a quarter of each edge gives mrthreshold an obvious foreground.
    data[nx // 4 : nx - nx // 4, ny // 4 : ny - ny // 4, nz // 4 : nz - nz // 4] += (
        200.0 + 10.0 * (seed % 7)
    )
    affine = numpy.diag([2.0, 2.0, 2.0, 1.0])
    target.parent.mkdir(parents=True, exist_ok=True)
    # nibabel's constructors are unannotated; Any keeps mypy --strict quiet.
    image_type: Any = nibabel.Nifti1Image
    nibabel.save(image_type(data, affine), str(target))
    return target


def ensure_images(
    input_dir: str | os.PathLike[str],
    subjects: Sequence[str],
    shape: Sequence[int] = DEFAULT_SHAPE,
) -> dict[str, Path]:
    """Write each subject's `<subject>_T1w.nii` unless it already exists.

    Existing images are kept, so a caller can edit one subject's image between
    runs and see only that subject rerun.

    Args:
        input_dir: Folder of the images.
        subjects: Subject labels; subject number i gets seed i.
        shape: Voxel grid of new images.

    Returns:
        Subject label to image path.
    """
    folder = Path(input_dir)
    images: dict[str, Path] = {}
    for seed, subject in enumerate(subjects, start=1):
        path = folder / f"{subject}_T1w.nii"
        if not path.exists():
            write_image(path, seed, shape)
        images[subject] = path
    return images


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What one tool call of the pipeline did.

    Attributes:
        subject: Subject label, e.g. `sub-01`.
        step: The MRtrix3 command (`metadata.id` of the wrapper).
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


def _step(
    reports: list[StepReport],
    subject: str,
    runner: Runner,
    *,
    metadata: Metadata,
    params: Any,
    validate: Callable[[Any], None],
    cargs: Callable[[Any, Execution], list[str]],
    outputs: Callable[[Any, Execution], _Out],
) -> _Out:
    validate(params)
    stdout: list[str] = []
    started = time.perf_counter()
    with collect_events() as events:
        # The steps of a wrapper's generated `*_execute` function, which passes
        # no output handlers to run(): spelling them out is how a caller
        # captures a tool's stdout.
        execution = runner.start_execution(metadata)
        execution.params(params)
        args = cargs(params, execution)
        result = outputs(params, execution)
        execution.run(args, handle_stdout=stdout.append)
    seconds = time.perf_counter() - started
    kind = events[-1].kind if events else ""
    named = {
        name: Path(value)
        for name, value in result._asdict().items()
        if isinstance(value, (str, os.PathLike))
    }
    reports.append(
        StepReport(
            subject=subject,
            step=metadata.id,
            outcome="hit" if kind == "hit" else "ran",
            event=kind,
            seconds=seconds,
            outputs=named,
            stdout=tuple(stdout),
        )
    )
    _log.debug("%s %s: %s in %.3f s", subject, metadata.id, kind or "ran", seconds)
    return result


def run_subjects(runner: Runner, images: Mapping[str, Path]) -> list[StepReport]:
    """Run the four steps for each subject through any Styx runner.

    Args:
        runner: The runner to use, caching or not (e.g. a `GraphRunner`
            around a `CachingRunner`).
        images: Subject label to NIfTI image.

    Returns:
        One report per tool call, in execution order.

    Raises:
        MrtrixUnavailableError: If NiWrap's MRtrix3 wrappers are not installed.
    """
    try:
        from niwrap import mrtrix
    except ImportError as exc:
        raise MrtrixUnavailableError(
            "NiWrap's MRtrix3 wrappers are missing: pip install 'styxcache[niwrap]'"
        ) from exc

    reports: list[StepReport] = []
    for subject, image in images.items():
        # Like most generated wrappers, NiWrap takes the input image as a plain
        # string and names each output after the string the caller passes.
        converted = _step(
            reports,
            subject,
            runner,
            metadata=mrtrix.MRCONVERT_METADATA,
            params=mrtrix.mrconvert_params(
                input_=str(image),
                output=f"{subject}_T1w.mif",
                coord=[],
                clear_property=[],
                set_property=[],
                append_property=[],
                config=[],
                datatype="float32",
                quiet=True,
            ),
            validate=mrtrix.mrconvert_validate,
            cargs=mrtrix.mrconvert_cargs,
            outputs=mrtrix.mrconvert_outputs,
        ).output
        mask = _step(
            reports,
            subject,
            runner,
            metadata=mrtrix.MRTHRESHOLD_METADATA,
            params=mrtrix.mrthreshold_params(
                input_=converted,
                output=f"{subject}_mask.mif",
                config=[],
                quiet=True,
            ),
            validate=mrtrix.mrthreshold_validate,
            cargs=mrtrix.mrthreshold_cargs,
            outputs=mrtrix.mrthreshold_outputs,
        ).output
        if mask is None:  # pragma: no cover - the output is named, so always set
            raise RuntimeError(f"mrthreshold returned no mask path for {subject}")
        _step(
            reports,
            subject,
            runner,
            metadata=mrtrix.MRSTATS_METADATA,
            params=mrtrix.mrstats_params(
                image=converted,
                output=["mean", "std", "count"],
                config=[],
                mask=mask,
                quiet=True,
            ),
            validate=mrtrix.mrstats_validate,
            cargs=mrtrix.mrstats_cargs,
            outputs=mrtrix.mrstats_outputs,
        )
        _step(
            reports,
            subject,
            runner,
            metadata=mrtrix.MRINFO_METADATA,
            params=mrtrix.mrinfo_params(
                image=[mask],
                property=[],
                config=[],
                size=True,
                datatype=True,
                quiet=True,
            ),
            validate=mrtrix.mrinfo_validate,
            cargs=mrtrix.mrinfo_cargs,
            outputs=mrtrix.mrinfo_outputs,
        )
    return reports


def _import_wrappers() -> None:
    """Import NiWrap's MRtrix3 module now, so no run's time includes it."""
    with contextlib.suppress(ImportError):
        importlib.import_module("niwrap.mrtrix")


def run_pipeline(
    cache_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    subjects: int = 3,
    *,
    policy: CachePolicy | None = None,
    base: Runner | None = None,
    shape: Sequence[int] = DEFAULT_SHAPE,
) -> PipelineReport:
    """Run the MRtrix3 pipeline for several subjects through a `CachingRunner`.

    Synthetic images are written to `<work_dir>/inputs/` unless they already
    exist. The base runner's own scratch folders go to `<work_dir>/styx_tmp/`.

    Args:
        cache_dir: The cache directory.
        work_dir: Folder for the input images and the base runner's scratch.
        subjects: Number of subjects, 1 to 99.
        policy: Cache policy; the default policy when None.
        base: Runner to wrap; a `LocalRunner` when None.
        shape: Voxel grid of newly written images.

    Returns:
        The per-step report.

    Raises:
        ValueError: If `subjects`, `shape` or the folders are invalid.
        MrtrixUnavailableError: If MRtrix3 or the Python packages are missing.
    """
    labels = subject_ids(subjects)
    grid = _check_shape(shape)
    cache_path, work_path = Path(cache_dir), Path(work_dir)
    for name, path in (("cache_dir", cache_path), ("work_dir", work_path)):
        if path.exists() and not path.is_dir():
            raise ValueError(f"{name} {str(path)!r} exists and is not a directory")
    if cache_path.resolve() == work_path.resolve():
        raise ValueError("cache_dir and work_dir must be different folders")
    missing = missing_requirements()
    if missing:
        raise MrtrixUnavailableError(
            "the MRtrix3 pipeline cannot run here; missing: " + "; ".join(missing)
        )

    from styxcache import CachingRunner

    images = ensure_images(work_path / "inputs", labels, grid)
    inner = base if base is not None else LocalRunner(data_dir=work_path / "styx_tmp")
    runner = CachingRunner(inner, cache_path, policy=policy)
    _import_wrappers()  # not part of the first run's time
    started = time.perf_counter()
    steps = run_subjects(runner, images)
    return PipelineReport(steps=tuple(steps), seconds=time.perf_counter() - started)
