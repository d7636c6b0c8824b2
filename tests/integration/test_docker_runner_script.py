"""styxdocker's generated `run.sh` is the runner's file, never a cached output.

A real DockerRunner and Docker daemon run busybox `sh` in the test image.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from styxdefs import Metadata

from conftest import run_tool
from styxcache import CacheStore, CachingRunner
from styxcache.manifest import Manifest

pytestmark = pytest.mark.integration
styxdocker = pytest.importorskip("styxdocker")


def tool(tag: str) -> Metadata:
    return Metadata(id="writer", name="writer", package="test", container_image_tag=tag)


def test_run_script_is_not_stored(tmp_path: Path, test_image: str) -> None:
    runner = CachingRunner(
        styxdocker.DockerRunner(data_dir=tmp_path / "styx_tmp"), tmp_path / "cache"
    )
    for _ in range(2):
        out = run_tool(
            runner,
            tool(test_image),
            {"n": 1},
            outputs={"out": "out.txt"},
            cargs=lambda _: ["sh", "-c", "echo made > out.txt"],
        )
        assert out["out"].read_text() == "made\n"
        assert not (out["root"] / "run.sh").exists()
    manifest = Manifest.read(out["root"] / CacheStore.MANIFEST)
    assert [record.path for record in manifest.outputs] == ["out.txt"]
    assert (runner.stats.misses, runner.stats.hits) == (1, 1)


def test_only_the_run_script_is_writing_nothing(
    tmp_path: Path, test_image: str
) -> None:
    # The tool wrote nothing of what it declared: run.sh must not make the
    # empty result look like a result.
    runner = CachingRunner(
        styxdocker.DockerRunner(data_dir=tmp_path / "styx_tmp"), tmp_path / "cache"
    )
    for _ in range(2):
        run_tool(
            runner,
            tool(test_image),
            {"n": 2},
            outputs={"out": "out.txt"},
            cargs=lambda _: ["sh", "-c", "true"],
        )
    assert (runner.stats.misses, runner.stats.hits) == (2, 0)


def test_a_declared_run_sh_output_is_kept(tmp_path: Path, test_image: str) -> None:
    runner = CachingRunner(
        styxdocker.DockerRunner(data_dir=tmp_path / "styx_tmp"), tmp_path / "cache"
    )
    out = run_tool(
        runner,
        tool(test_image),
        {"n": 3},
        outputs={"script": "run.sh"},
        cargs=lambda _: ["sh", "-c", "true"],
    )
    assert out["script"].exists()
    assert runner.store.is_hit(out["root"].name)
