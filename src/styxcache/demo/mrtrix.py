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
import importlib
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from styxdefs import Execution, LocalRunner, Metadata, Runner

from styxcache.demo.report import PipelineReport, StepReport, run_step, subject_ids
from styxcache.errors import StyxcacheError

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

_log = logging.getLogger("styxcache.demo.mrtrix")

MRTRIX_TOOLS = ("mrconvert", "mrthreshold", "mrstats", "mrinfo")
"""The MRtrix3 commands the pipeline needs on PATH."""

DEFAULT_SHAPE = (16, 16, 8)
"""Voxel grid of the synthetic images: small, so a subject takes milliseconds."""

_MIN_EDGE = 4

_Out = TypeVar("_Out", bound=NamedTuple)


class MrtrixUnavailableError(StyxcacheError, RuntimeError):
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

    def prepare(execution: Execution) -> tuple[list[str], _Out, Mapping[str, Path]]:
        args = cargs(params, execution)
        result = outputs(params, execution)
        named = {
            name: Path(value)
            for name, value in result._asdict().items()
            if isinstance(value, (str, os.PathLike))
        }
        return args, result, named

    report, result = run_step(runner, subject, metadata, params, prepare)
    reports.append(report)
    _log.debug(
        "%s %s: %s in %.3f s",
        subject,
        metadata.id,
        report.event or "ran",
        report.seconds,
    )
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
