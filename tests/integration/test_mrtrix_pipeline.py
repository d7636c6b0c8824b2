"""The real MRtrix3 pipeline through NiWrap and CachingRunner(LocalRunner).

Runs Debian's MRtrix3 tools on small synthetic images (3 subjects, 16x16x8
voxels), so the whole file takes a few seconds. Skipped locally when MRtrix3
or NiWrap is missing; in CI (`.ci/run` installs `mrtrix3`) it must run.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from styxdefs import LocalRunner

from conftest import require
from styxcache.demo.mrtrix import (
    MrtrixUnavailableError,
    PipelineReport,
    ensure_images,
    missing_requirements,
    run_pipeline,
    run_subjects,
    subject_ids,
    write_image,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mrtrix_pipeline.py"
STEPS = ["mrconvert", "mrthreshold", "mrstats", "mrinfo"]
BLOCK_VOXELS = 8 * 8 * 4  # the bright block of a 16x16x8 synthetic image


@pytest.fixture
def mrtrix() -> None:
    missing = missing_requirements()
    require(not missing, "MRtrix3 pipeline needs: " + "; ".join(missing))


def digests(report: PipelineReport) -> dict[str, str]:
    """Content digest of every file under every step's output folder."""
    found: dict[str, str] = {}
    for step in report.steps:
        root = step.outputs["root"]
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith(".styxcache"):
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def stdout_of(report: PipelineReport) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(step.subject, step.step): step.stdout for step in report.steps}


@pytest.mark.usefixtures("mrtrix")
def test_second_run_is_all_hits_with_identical_outputs_and_stdout(
    tmp_path: Path,
) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"

    first = run_pipeline(cache, work, 3)

    assert [(s.subject, s.step) for s in first.steps] == [
        (subject, step) for subject in subject_ids(3) for step in STEPS
    ]
    assert {s.event for s in first.steps} == {"miss"}
    assert first.ran == 12
    for step in first.steps:
        assert step.outputs["root"].is_relative_to(cache)
    for subject in subject_ids(3):
        stats, info = (s.stdout for s in first.for_subject(subject)[2:])
        mean, std, count = (float(v) for v in stats[0].split())
        assert count == BLOCK_VOXELS  # the automatic threshold found the block
        assert mean > 250 > std
        assert info == ("16 16 8", "Bit")
    files_after_first = digests(first)
    assert any(name.endswith("sub-02_mask.mif") for name in files_after_first)

    # A fresh runner, as a new process would build: nothing shared in memory.
    second = run_pipeline(cache, work, 3)

    assert {s.event for s in second.steps} == {"hit"}
    assert (second.hits, second.ran) == (12, 0)
    assert stdout_of(second) == stdout_of(first)
    assert [s.outputs for s in second.steps] == [s.outputs for s in first.steps]
    assert digests(second) == files_after_first


@pytest.mark.usefixtures("mrtrix")
def test_changing_one_subject_reruns_only_that_subjects_steps(tmp_path: Path) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"
    first = run_pipeline(cache, work, 3)

    write_image(work / "inputs" / "sub-02_T1w.nii", seed=42)
    second = run_pipeline(cache, work, 3)

    outcome = {(s.subject, s.step): s.outcome for s in second.steps}
    assert outcome == {
        (subject, step): "ran" if subject == "sub-02" else "hit"
        for subject in subject_ids(3)
        for step in STEPS
    }
    changed = second.for_subject("sub-02")
    assert (
        changed[0].outputs["output"] != first.for_subject("sub-02")[0].outputs["output"]
    )
    assert changed[2].stdout != first.for_subject("sub-02")[2].stdout
    assert (
        stdout_of(second)[("sub-01", "mrstats")]
        == stdout_of(first)[("sub-01", "mrstats")]
    )


@pytest.mark.usefixtures("mrtrix")
def test_rewriting_an_image_with_the_same_voxels_still_hits(tmp_path: Path) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"
    run_pipeline(cache, work, 2)
    image = work / "inputs" / "sub-01_T1w.nii"
    before = image.read_bytes()

    write_image(image, seed=1)  # same content, new mtime and inode

    assert image.read_bytes() == before
    assert run_pipeline(cache, work, 2).ran == 0


@pytest.mark.usefixtures("mrtrix")
def test_a_second_work_dir_hits_the_same_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run_pipeline(cache, tmp_path / "work-a", 2)

    elsewhere = run_pipeline(cache, tmp_path / "work-b", 2)

    # The inputs moved (same bytes, another folder) and the base runner's
    # scratch folder is new: neither is part of the key.
    assert elsewhere.hits == 8


@pytest.mark.usefixtures("mrtrix")
def test_one_info_line_per_hit_or_miss_and_runner_lines_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"
    caplog.set_level(logging.INFO)

    run_pipeline(cache, work, 2)
    miss_records = list(caplog.records)
    caplog.clear()
    run_pipeline(cache, work, 2)
    hit_records = list(caplog.records)

    def cache_lines(records: list[logging.LogRecord]) -> list[str]:
        return [
            r.getMessage()
            for r in records
            if r.name.split(".")[0] == "styxcache" and r.levelno == logging.INFO
        ]

    def executed(records: list[logging.LogRecord]) -> list[str]:
        return [
            r.getMessage()
            for r in records
            if r.name == LocalRunner.logger_name and r.levelno == logging.INFO
        ]

    assert len(cache_lines(miss_records)) == 8
    assert len(cache_lines(hit_records)) == 8
    assert all("miss" in line for line in cache_lines(miss_records))
    assert all("hit" in line for line in cache_lines(hit_records))
    # LocalRunner logs each tool it runs, named by NiWrap's sentence-like
    # metadata.name, exactly as without the cache; on hits nothing runs.
    assert len(executed(miss_records)) == 8
    assert any(
        line.startswith("Executed Create bitwise image by thresholding")
        for line in executed(miss_records)
    )
    assert executed(hit_records) == []
    assert logging.getLogger("styxcache").handlers == []


@pytest.mark.usefixtures("mrtrix")
@pytest.mark.parametrize(
    "cache_outside", [False, True], ids=["graph-outside", "cache-outside"]
)
def test_graph_is_the_same_on_hits_in_either_order(
    tmp_path: Path, cache_outside: bool
) -> None:
    styxgraph = pytest.importorskip("styxgraph")
    from styxcache import CachingRunner

    images = ensure_images(tmp_path / "inputs", subject_ids(2))
    graphs = []
    for _ in range(2):
        base = LocalRunner(data_dir=tmp_path / "styx_tmp")
        if cache_outside:
            graph = styxgraph.GraphRunner(base)
            runner = CachingRunner(graph, tmp_path / "cache")
        else:
            graph = runner = styxgraph.GraphRunner(
                CachingRunner(base, tmp_path / "cache")
            )
        steps = run_subjects(runner, images)
        edges = graph.dependency_resolver.build_dependencies(graph.nodes)
        graphs.append((len(graph.nodes), sorted(edges), [s.outcome for s in steps]))

    (nodes_1, edges_1, outcomes_1), (nodes_2, edges_2, outcomes_2) = graphs
    assert set(outcomes_1) == {"ran"} and set(outcomes_2) == {"hit"}
    assert nodes_1 == nodes_2 == 8
    # mrconvert -> mrthreshold, mrconvert -> mrstats, mrthreshold -> mrstats,
    # mrthreshold -> mrinfo, per subject.
    assert len(edges_1) == 8
    assert edges_2 == edges_1


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.usefixtures("mrtrix")
def test_example_script_in_real_processes(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")

    first = run_example("--cache-dir", cache, "--subjects", "3")
    second = run_example("--cache-dir", cache, "--subjects", "3")
    changed = run_example("--cache-dir", cache, "--subjects", "3", "--change", "sub-03")

    assert first.returncode == 0, first.stderr
    assert "0 hit(s), 12 ran" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "12 hit(s), 0 ran" in second.stdout
    assert changed.returncode == 0, changed.stderr
    assert "8 hit(s), 4 ran" in changed.stdout
    # Quiet by default: without logging configured no cache line is shown,
    # while LocalRunner's own handler still prints its lines as it always has.
    assert "styxcache" not in first.stderr + second.stderr
    assert "Executed Compute images statistics" in first.stderr
    # Same subjects, steps and captured stdout; only the outcome column differs.
    assert table_rows(second.stdout) == table_rows(first.stdout)


@pytest.mark.usefixtures("mrtrix")
def test_example_script_log_flag_shows_one_cache_line_per_step(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")

    first = run_example("--cache-dir", cache, "--subjects", "2", "--log")
    second = run_example("--cache-dir", cache, "--subjects", "2", "--log")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr

    def lines(text: str, marker: str) -> list[str]:
        return [line for line in text.splitlines() if marker in line]

    assert len(lines(first.stderr, "styxcache miss mrtrix/")) == 8
    assert len(lines(first.stderr, "] Executed ")) == 8
    assert len(lines(second.stderr, "styxcache hit mrtrix/")) == 8
    assert lines(second.stderr, "] Executed ") == []
    # With logging configured, LocalRunner adds no DEBUG handler of its own.
    assert "Running command" not in first.stderr


def table_rows(text: str) -> list[tuple[str, ...]]:
    rows = [line.split(None, 4) for line in text.splitlines()[1:-1]]
    return [(row[0], row[1], *row[4:]) for row in rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subjects", "0"], "subjects must be between 1 and 99"),
        (["--subjects", "3", "--change", "sub-09"], "--change must be one of"),
    ],
)
def test_example_script_rejects_bad_arguments(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_example("--cache-dir", str(tmp_path / "cache"), *args)

    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "cache.work").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subjects": 0}, "subjects must be between 1 and 99"),
        ({"subjects": 100}, "subjects must be between 1 and 99"),
        ({"subjects": True}, "subjects must be an integer"),
        ({"subjects": 2, "shape": (16, 16)}, "shape must be three integers"),
        ({"subjects": 2, "shape": (16, 16, 2)}, "shape must be three integers"),
    ],
)
def test_run_pipeline_rejects_bad_arguments_before_writing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run_pipeline(tmp_path / "cache", tmp_path / "work", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_run_pipeline_rejects_a_file_as_cache_dir(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(ValueError, match=r"cache_dir .* is not a directory"):
        run_pipeline(tmp_path / "cache", tmp_path / "work", 1)
    assert not (tmp_path / "work").exists()


def test_run_pipeline_rejects_the_same_folder_twice(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be different folders"):
        run_pipeline(tmp_path / "same", tmp_path / "same", 1)
    assert not (tmp_path / "same").exists()


def test_missing_mrtrix_tools_are_named_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real PATH without MRtrix3 on it, not a mock of shutil.which.
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))

    with pytest.raises(MrtrixUnavailableError, match="'mrconvert' on PATH"):
        run_pipeline(tmp_path / "cache", tmp_path / "work", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_write_image_refuses_gzip(tmp_path: Path) -> None:
    # gzip headers carry a timestamp: rewritten .nii.gz files would never hit.
    with pytest.raises(ValueError, match=r"written as \.nii"):
        write_image(tmp_path / "t1.nii.gz", seed=1)
    assert list(tmp_path.iterdir()) == []


def test_missing_niwrap_is_named_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules is how Python itself marks a module as unimportable.
    monkeypatch.setitem(sys.modules, "niwrap", None)
    monkeypatch.setitem(sys.modules, "niwrap.mrtrix", None)

    with pytest.raises(MrtrixUnavailableError, match=r"'niwrap\.mrtrix'"):
        run_pipeline(tmp_path / "cache", tmp_path / "work", 1)
    with pytest.raises(MrtrixUnavailableError, match="pip install"):
        run_subjects(LocalRunner(data_dir=tmp_path / "scratch"), {})
    assert list(tmp_path.iterdir()) == []
