"""Every NiWrap 1.1.0 wrapper runs through CachingRunner exactly as through LocalRunner.

One test per wrapper function of every installed NiWrap suite (1,878 in 1.1.0).
Each runs five stand-in behaviours (main output, every output, nothing, failure,
a write outside) with the required params, and every output with all optional
params filled, bare and cached; see `conformance_harness` for what is compared. `python tests/conformance/report.py` prints the same checks as a
coverage table (docs/conformance.md).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from conformance_harness import (
    RESULTS,
    Session,
    check_wrapper,
    expectation,
    is_outside,
)
from niwrap_catalogue import Wrapper, build_arguments, discover, suites

from conftest import require

pytestmark = pytest.mark.conformance

NIWRAP = importlib.util.find_spec("niwrap") is not None
WRAPPERS = discover() if NIWRAP else []

EXPECTED_SUITES = {
    "afni": 552,
    "ants": 72,
    "bidsvalidator": 1,
    "c3d": 4,
    "dcm2niix": 1,
    "fastsurfer": 1,
    "freesurfer": 671,
    "fsl": 243,
    "greedy": 1,
    "mrtrix": 121,
    "mrtrix3tissue": 1,
    "niftyreg": 7,
    "workbench": 203,
}
"""Wrapper functions per suite in NiWrap 1.1.0: a suite that fails to install
or import shows up here instead of silently shrinking the suite."""

UNBUILDABLE: dict[str, str] = {}
"""Wrappers whose signature the generator cannot fill, with the reason.
Empty: every 1.1.0 wrapper is filled automatically."""


def test_the_whole_catalogue_is_installed() -> None:
    installed = set(suites()) if NIWRAP else set()
    missing = sorted(set(EXPECTED_SUITES) - installed)
    require(
        not missing,
        f"NiWrap suites not installed: {', '.join(missing)} "
        "(pip install '.[niwrap-all]')",
    )
    counts = {suite: 0 for suite in suites()}
    for wrapper in WRAPPERS:
        counts[wrapper.suite] += 1
    assert counts == EXPECTED_SUITES


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=lambda w: w.id)
def test_wrapper_is_transparent_and_cached_by_the_rules(
    wrapper: Wrapper, conformance_session: Session
) -> None:
    work = conformance_session.root / "work" / wrapper.suite / wrapper.name
    work.mkdir(parents=True)
    try:
        result = check_wrapper(conformance_session, wrapper, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.append(result)
    if result.unbuildable:
        if wrapper.id in UNBUILDABLE:
            pytest.xfail(UNBUILDABLE[wrapper.id])
        pytest.fail(f"cannot fill the signature: {result.unbuildable}")
    assert not result.all_problems(), "\n".join(result.all_problems())


# The harness itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "outside"),
    [
        ("out.nii.gz", False),
        ("sub/out.nii.gz", False),
        ("/abs/in.nii.gz_stats.txt", True),
        ("../up.txt", True),
        ("a/../../up.txt", True),
        ("a/../b.txt", False),
    ],
)
def test_outside_names(name: str, outside: bool) -> None:
    assert is_outside(name) is outside


@pytest.mark.parametrize(
    ("behaviour", "declared", "expect"),
    [
        # bet without flags writes only <out>.nii.gz of its 16 outputs: cached.
        ("main", [".", "img_bet.nii.gz", "img_bet_mask.nii.gz"], "hit"),
        ("all", [".", "img_bet.nii.gz", "img_bet_mask.nii.gz"], "hit"),
        # Declared outputs inside, nothing written: FSL's "exit 0 after an error".
        ("none", [".", "img_bet.nii.gz"], "rerun"),
        # Declares nothing inside its folder (stdout-only tool): cached.
        ("none", ["."], "hit"),
        ("fail", [".", "out.txt"], "rerun"),
        # fslstats: the name leaves the folder; cached or uncached, both allowed.
        ("main", [".", "/data/in.nii.gz_stats.txt"], "either"),
    ],
)
def test_expectation_follows_the_commit_rule(
    behaviour: str, declared: list[str], expect: str
) -> None:
    assert expectation(behaviour, declared) == expect


def test_standin_writes_what_each_behaviour_says(tmp_path: Path) -> None:
    require(NIWRAP, "NiWrap is not installed (pip install '.[niwrap-all]')")
    bet = Wrapper("fsl", "bet", "bet")
    session = Session(tmp_path / "session")
    kwargs, files = build_arguments(bet, tmp_path / "inputs")
    session.link("bet")
    spec = tmp_path / "spec.txt"
    spec.write_text("img_bet.nii.gz\nimg_bet_mask.nii.gz\n")
    session.environ.update(
        STANDIN_LOG=str(tmp_path / "runs.log"),
        STANDIN_SPEC=str(spec),
        STANDIN_OUTSIDE=str(tmp_path / "outside.txt"),
        STANDIN_TOKEN="t1",
    )
    written = {}
    for behaviour in ("main", "all", "none", "outside"):
        session.environ["STANDIN_MODE"] = behaviour
        call = session.call(bet, kwargs, cached=False)
        assert call.error is None
        written[behaviour] = sorted(p.name for p in call.root.iterdir())
    session.environ["STANDIN_MODE"] = "fail"
    failed = session.call(bet, kwargs, cached=False)

    assert written == {
        "main": ["img_bet.nii.gz"],
        "all": ["img_bet.nii.gz", "img_bet_mask.nii.gz"],
        "none": [],
        "outside": ["img_bet.nii.gz"],
    }
    assert type(failed.error).__name__ == "StyxRuntimeError"
    assert (tmp_path / "outside.txt").read_text() == "t1\n"
    assert len(failed.runs) == 1
    assert failed.runs[0][1:] == ["bet", str(files[0]), "img_bet"]


def test_the_suite_catches_a_cache_that_breaks_the_commit_rule(tmp_path: Path) -> None:
    """A negative control: the strict opt-in policy (every declared output
    required, the rule before the transparency work) must be reported."""
    require(NIWRAP, "NiWrap is not installed (pip install '.[niwrap-all]')")
    session = Session(tmp_path / "session", required_outputs="all")
    work = tmp_path / "work"
    work.mkdir()

    result = check_wrapper(session, Wrapper("fsl", "bet", "bet"), work)

    assert result.status == "failing"
    assert any(
        p.startswith("[main] the repeat was not a hit (expected one)")
        for p in result.all_problems()
    )
    # The call itself stayed transparent: only the caching is missing.
    assert not any("differ" in p or "raised" in p for p in result.all_problems())
