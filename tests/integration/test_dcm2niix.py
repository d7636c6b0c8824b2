"""The real dcm2niix through NiWrap and CachingRunner(LocalRunner), on DICOM made here.

The test writes a tiny MR series (3 slices of 8x8, 16-bit) with pydicom and
converts it with Debian's dcm2niix: the input is a folder, and the outputs are
whatever files the tool writes into its output folder (NiWrap declares only
the folder). Skipped locally when dcm2niix, niwrap-dcm2niix or pydicom is
missing; in CI (`.ci/run` installs `dcm2niix`) it must run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from styxdefs import LocalRunner

from conftest import require
from styxcache import CacheEvent, CachingRunner

pytestmark = pytest.mark.integration

SLICES = 3
SIZE = 8


@pytest.fixture
def dcm2niix() -> None:
    require(shutil.which("dcm2niix") is not None, "dcm2niix (apt dcm2niix)")
    for module in ("niwrap", "pydicom", "numpy"):
        require(
            importlib.util.find_spec(module) is not None,
            f"{module} (pip install '.[test]')",
        )
    require(
        importlib.util.find_spec("niwrap.dcm2niix") is not None,
        "niwrap-dcm2niix (pip install '.[niwrap]')",
    )


def write_series(folder: Path, seed: int) -> Path:
    """Write a 3-slice MR series; the same seed gives the same bytes."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study = generate_uid(entropy_srcs=["styxcache study"])
    series = generate_uid(entropy_srcs=["styxcache series"])
    for index in range(SLICES):
        instance = generate_uid(entropy_srcs=[f"styxcache slice {index}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = instance
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = instance
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.Modality = "MR"
        ds.PatientName = "Test^Subject"
        ds.PatientID = "sub01"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = "120000"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        ds.SeriesDescription = ds.ProtocolName = "t1"
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        pixels = rng.integers(0, 1000, (SIZE, SIZE), dtype=np.uint16)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"slice{index:03d}.dcm", enforce_file_format=True)
    return folder


def convert(runner: Any, dicom: Path) -> Any:
    from niwrap.dcm2niix import dcm2niix

    return dcm2niix(input_dir=dicom, runner=runner)


def files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".styxcache")
    }


def caching(tmp_path: Path, events: list[CacheEvent]) -> CachingRunner:
    """A fresh runner over the same cache, as a new process would build it."""
    return CachingRunner(
        LocalRunner(data_dir=tmp_path / "styx_tmp"),
        tmp_path / "cache",
        on_event=events.append,
    )


def leftovers(data_dir: Path) -> list[str]:
    if not data_dir.exists():
        return []
    return sorted(os.path.relpath(p, data_dir) for p in data_dir.rglob("*"))


@pytest.mark.usefixtures("dcm2niix")
def test_second_conversion_is_a_hit_with_the_bare_runs_bytes(tmp_path: Path) -> None:
    dicom = write_series(tmp_path / "dicom", seed=1)
    bare = convert(LocalRunner(data_dir=tmp_path / "bare"), dicom)
    bare_files = files(bare.root)
    events: list[CacheEvent] = []

    first = convert(caching(tmp_path, events), dicom)
    second = convert(caching(tmp_path, events), dicom)

    # dcm2niix is deterministic: the cached run wrote what the bare run wrote.
    assert sorted(bare_files) == [
        "dicom_t1_20240101120000_1.json",
        "dicom_t1_20240101120000_1.nii",
    ]
    assert files(first.root) == bare_files
    assert [e.kind for e in events] == ["miss", "hit"]
    assert second == first
    assert files(second.root) == bare_files
    assert leftovers(tmp_path / "styx_tmp") == []


@pytest.mark.usefixtures("dcm2niix")
def test_changed_slice_reruns_and_rewritten_identical_series_hits(
    tmp_path: Path,
) -> None:
    dicom = write_series(tmp_path / "dicom", seed=1)
    events: list[CacheEvent] = []
    first = convert(caching(tmp_path, events), dicom)
    first_files = files(first.root)

    write_series(dicom, seed=2)  # new pixels in every slice
    changed = convert(caching(tmp_path, events), dicom)
    write_series(dicom, seed=2)  # the same bytes again: new mtimes only
    again = convert(caching(tmp_path, events), dicom)

    assert [e.kind for e in events] == ["miss", "miss", "hit"]
    assert changed.root != first.root
    nifti = "dicom_t1_20240101120000_1.nii"
    assert files(changed.root)[nifti] != first_files[nifti]
    assert files(again.root) == files(changed.root)
    # The first entry is untouched and still served for the first series.
    write_series(dicom, seed=1)
    assert convert(caching(tmp_path, events), dicom) == first
    assert events[-1].kind == "hit"
    assert files(first.root) == first_files
