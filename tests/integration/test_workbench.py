"""Connectome Workbench's real `wb_command` through NiWrap and CachingRunner(LocalRunner).

NiWrap's workbench wrappers name their tools with sentences (`metadata.name`
"DISPLAY INFORMATION ABOUT A NIFTI/CIFTI FILE"), which LocalRunner uses in its
per-run folder names. Skipped locally when wb_command or niwrap-workbench is
missing; in CI (`.ci/run` installs `connectome-workbench`) it must run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from styxdefs import LocalRunner

from conftest import require
from styxcache import CacheEvent, CachingRunner

pytestmark = pytest.mark.integration


@pytest.fixture
def workbench() -> None:
    require(
        shutil.which("wb_command") is not None, "wb_command (apt connectome-workbench)"
    )
    for module in ("niwrap.workbench", "nibabel", "numpy"):
        require(
            importlib.util.find_spec(module.split(".")[0]) is not None
            and importlib.util.find_spec(module) is not None,
            f"{module} (pip install '.[niwrap]')",
        )


def write_volume(path: Path, scale: float) -> Path:
    """A small float32 NIfTI-1 volume whose voxels are 0..47 times `scale`."""
    import nibabel as nib
    import numpy as np

    data = (np.arange(4 * 4 * 3, dtype=np.float32) * scale).reshape(4, 4, 3)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def voxels(path: Path) -> list[float]:
    import nibabel as nib
    import numpy as np

    return [float(v) for v in np.asarray(nib.load(path).dataobj).ravel()]


def digest_tree(root: Path) -> dict[str, str]:
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


def double(runner: Any, volume: Path) -> Any:
    from niwrap.workbench import volume_math, volume_math_var_params

    return volume_math(
        expression="x*2",
        volume_out="doubled.nii",
        var=[volume_math_var_params(name="x", volume=volume)],
        runner=runner,
    )


def header_lines(
    runner: Any, volume: Path, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """Run `-nifti-information -print-header`; its stdout as the caller sees it."""
    from niwrap.workbench import (
        nifti_information,
        nifti_information_print_header_params,
    )

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=f"{LocalRunner.logger_name}.stdout"):
        nifti_information(
            nifti_file=str(volume),
            print_header=nifti_information_print_header_params(),
            runner=runner,
        )
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == f"{LocalRunner.logger_name}.stdout"
    ]


def leftovers(data_dir: Path) -> list[str]:
    if not data_dir.exists():
        return []
    return sorted(os.path.relpath(p, data_dir) for p in data_dir.rglob("*"))


@pytest.mark.usefixtures("workbench")
def test_volume_math_second_call_is_a_hit_with_identical_bytes(tmp_path: Path) -> None:
    volume = write_volume(tmp_path / "t1.nii", 1.0)
    bare = double(LocalRunner(data_dir=tmp_path / "bare"), volume)
    events: list[CacheEvent] = []

    first = double(caching(tmp_path, events), volume)
    first_files = digest_tree(first.root)
    second = double(caching(tmp_path, events), volume)

    assert [e.kind for e in events] == ["miss", "hit"]
    assert second == first  # the same paths, inside the cache entry
    assert first.volume_out.relative_to(first.root) == Path("doubled.nii")
    assert digest_tree(second.root) == first_files
    assert list(first_files) == ["doubled.nii"]
    # wb_command stamps provenance into its header, so bytes differ between
    # real runs; the voxels are what the bare runner computed.
    assert voxels(second.volume_out) == voxels(bare.volume_out)
    assert voxels(second.volume_out) == [2.0 * v for v in voxels(volume)]
    assert leftovers(tmp_path / "styx_tmp") == []


@pytest.mark.usefixtures("workbench")
def test_changed_volume_reruns_and_same_bytes_still_hit(tmp_path: Path) -> None:
    volume = write_volume(tmp_path / "t1.nii", 1.0)
    events: list[CacheEvent] = []
    first = double(caching(tmp_path, events), volume)

    write_volume(volume, 3.0)
    changed = double(caching(tmp_path, events), volume)
    write_volume(volume, 3.0)  # identical bytes, new mtime and inode
    again = double(caching(tmp_path, events), volume)

    assert [e.kind for e in events] == ["miss", "miss", "hit"]
    assert "changed" in events[1].reason
    assert changed.root != first.root
    assert voxels(changed.volume_out) == [6.0 * v for v in range(48)]
    assert again == changed


@pytest.mark.usefixtures("workbench")
def test_stdout_only_tool_with_a_sentence_name_is_cached_and_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from niwrap.workbench import NIFTI_INFORMATION_METADATA

    assert "/" in NIFTI_INFORMATION_METADATA.name
    volume = write_volume(tmp_path / "t1.nii", 1.0)
    bare = header_lines(LocalRunner(data_dir=tmp_path / "bare"), volume, caplog)
    events: list[CacheEvent] = []

    first = header_lines(caching(tmp_path, events), volume, caplog)
    second = header_lines(caching(tmp_path, events), volume, caplog)
    write_volume(volume, 5.0)
    changed = header_lines(caching(tmp_path, events), volume, caplog)

    assert "sizeof_hdr: 348" in bare
    assert first == bare
    assert second == first
    # nifti_file is a plain str param: the file behind it is keyed by content.
    assert [e.kind for e in events] == ["miss", "hit", "miss"]
    assert changed != [] and "sizeof_hdr: 348" in changed
    # Neither the miss nor the hit leaves a folder (or the "NIFTI/" parent of
    # the sentence's slash) in LocalRunner's data_dir.
    assert leftovers(tmp_path / "styx_tmp") == []
