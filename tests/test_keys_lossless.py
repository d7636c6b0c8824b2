"""Keys are lossless, path-like params are keyed by content, nothing hangs.

Issue 11 items 5, 6, 7 and 9, issue 12 item 8, through the real LocalRunner
with real commands (`cat`, `sh`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from styxdefs import LocalRunner, Metadata

from conftest import run_tool
from styxcache import CachePolicy, CachingRunner, ParamEncodingError, register_encoder
from styxcache.canonical import encode_params
from styxcache.hashing import ContentHasher, UnkeyableInputError
from styxcache.key import key_of

TOOL = Metadata(id="cat-config", name="Cat a config", package="test")


def make_runner(cache: Path, data_dir: Path, **policy: Any) -> CachingRunner:
    return CachingRunner(
        LocalRunner(data_dir=data_dir), cache, policy=CachePolicy(**policy)
    )


def cat_param(
    runner: CachingRunner, counter: Path, params: dict[str, Any], read: str | None
) -> str:
    """Run `sh -c` that counts its runs and copies the file named by `read`."""
    script = f"echo run >> {counter}; " + (
        f'cat "{read}" > out.txt' if read else "echo none > out.txt"
    )
    out = run_tool(
        runner,
        TOOL,
        params,
        outputs={"out": "out.txt"},
        cargs=lambda _inputs: ["sh", "-c", script],
    )
    return out["out"].read_text()


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def run_bounded(target: Any, seconds: float = 60.0) -> Any:
    """Run `target()` in a thread; fail (instead of hanging the suite) if it blocks."""
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:  # handed back to the test thread
            result["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the call did not return within {seconds:.0f}s: it hangs")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# Item 5: pathlib.Path params are keyed by content ------------------------------


@pytest.mark.parametrize("relative", [False, True])
def test_path_object_param_is_keyed_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = make_runner(tmp_path / "cache", tmp_path / "styx_tmp")
    config = tmp_path / "config.txt"
    config.write_text("alpha\n")
    counter = tmp_path / "runs"
    param = Path("config.txt") if relative else config

    assert cat_param(runner, counter, {"config": param}, str(config)) == "alpha\n"
    assert cat_param(runner, counter, {"config": param}, str(config)) == "alpha\n"
    assert runs(counter) == 1  # the repeat was a hit
    config.write_text("bravo\n")  # same name, new content: never the stale result
    assert cat_param(runner, counter, {"config": param}, str(config)) == "bravo\n"
    assert runs(counter) == 2


def test_path_and_str_params_of_one_file_key_alike_across_locations(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "cfg.txt").write_text("same\n")
    (b / "cfg.txt").write_text("same\n")
    runner = make_runner(tmp_path / "cache", tmp_path / "styx_tmp")
    counter = tmp_path / "runs"
    cat_param(runner, counter, {"config": a / "cfg.txt"}, None)
    cat_param(runner, counter, {"config": b / "cfg.txt"}, None)
    assert runs(counter) == 1  # keyed by name and content, not by location


# Item 6: never hang ------------------------------------------------------------


def test_fifo_and_device_params_are_keyed_by_name_without_reading(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    runner = make_runner(tmp_path / "cache", tmp_path / "styx_tmp")
    counter = tmp_path / "runs"
    for target in (str(fifo), "/dev/zero", Path("/dev/zero")):
        run_bounded(lambda t=target: cat_param(runner, counter, {"src": t}, None))
        run_bounded(lambda t=target: cat_param(runner, counter, {"src": t}, None))
    # A stream has no content to key: its name is the key, so repeats hit.
    assert runs(counter) == 3


def test_fifo_and_device_inputs_run_uncached_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    runner = make_runner(tmp_path / "cache", tmp_path / "styx_tmp")
    counter = tmp_path / "runs"

    def call(path: str) -> None:
        execution = runner.start_execution(TOOL)
        execution.params({"src": path})
        execution.input_file(path)
        execution.output_file("out.txt")
        execution.run(["sh", "-c", f"echo run >> {counter}; echo x > out.txt"])

    with caplog.at_level(logging.WARNING, logger="styxcache"):
        for path in (str(fifo), str(fifo), "/dev/zero"):
            run_bounded(lambda p=path: call(p))
    assert runs(counter) == 3  # every call ran, as under the bare runner
    assert list(runner.store.iter_keys()) == []
    warnings = [
        r.getMessage() for r in caplog.records if "not cached" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "FIFO" in warnings[0] and str(fifo) in warnings[0]

    strict = make_runner(
        tmp_path / "cache2", tmp_path / "styx_tmp", unkeyable_params="error"
    )

    def strict_call() -> None:
        execution = strict.start_execution(TOOL)
        execution.input_file(str(fifo))
        execution.output_file("out.txt")
        execution.run(["sh", "-c", f"echo run >> {counter}"])

    # Raised as soon as the key is settled, before the tool runs.
    with pytest.raises(UnkeyableInputError, match="FIFO"):
        run_bounded(strict_call)
    assert runs(counter) == 3


def test_huge_folder_param_runs_uncached_naming_the_param(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/usr (about 140,000 entries here) as a path param: bounded, then uncached."""
    runner = make_runner(tmp_path / "cache", tmp_path / "styx_tmp")
    counter = tmp_path / "runs"
    with caplog.at_level(logging.WARNING, logger="styxcache"):
        for _ in range(2):
            run_bounded(
                lambda: cat_param(runner, counter, {"opts": {"root": "/usr"}}, None)
            )
    assert runs(counter) == 2
    warnings = [
        r.getMessage() for r in caplog.records if "not cached" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "`opts.root`" in warnings[0] and "max_entries" in warnings[0]


def test_folder_input_over_the_bound_runs_uncached_and_the_bound_is_a_knob(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(30):
        (folder / f"slice{i:02}.dcm").write_text(str(i))
    counter = tmp_path / "runs"

    def call(runner: CachingRunner) -> None:
        execution = runner.start_execution(TOOL)
        execution.input_file(str(folder / "slice00.dcm"), resolve_parent=True)
        execution.output_file("out.txt")
        execution.run(["sh", "-c", f"echo run >> {counter}; echo x > out.txt"])

    small = make_runner(
        tmp_path / "cache", tmp_path / "styx_tmp", hasher=ContentHasher(max_entries=10)
    )
    call(small)
    call(small)
    assert runs(counter) == 2  # over the bound: uncached
    roomy = make_runner(
        tmp_path / "cache", tmp_path / "styx_tmp", hasher=ContentHasher(max_entries=100)
    )
    call(roomy)
    call(roomy)
    assert runs(counter) == 3  # within the bound: cached


def test_content_hasher_rejects_a_bad_bound() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ContentHasher(max_entries=0)


# Item 7: lossless keys only ----------------------------------------------------


def test_numpy_arrays_that_print_alike_key_apart() -> None:
    np = pytest.importorskip("numpy")
    a = np.zeros(10_000)
    b = a.copy()
    b[5_000] = 1e-9  # str(a) == str(b): numpy prints both as "[0. 0. 0. ... 0. 0. 0.]"
    assert str(a) == str(b)
    assert encode_params({"w": a}) != encode_params({"w": b})
    assert encode_params({"w": a}) == encode_params({"w": a.copy()})
    # dtype and shape are part of the key, not only the bytes.
    assert encode_params(np.zeros(4, "f4")) != encode_params(np.zeros(2, "f8"))
    assert encode_params(np.zeros((2, 2))) != encode_params(np.zeros(4))
    # A Fortran-ordered view keys like the same values in C order.
    f = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    assert encode_params(f) == encode_params(np.arange(6.0).reshape(2, 3))
    # Scalars: exact bytes, not their rounded print.
    assert encode_params(np.float32(0.1)) != encode_params(np.float32(0.1000001))
    assert encode_params(np.int64(3)) != encode_params(np.int32(3))
    objects = np.array([{"a": 1}, "x"], dtype=object)
    assert encode_params(objects)["items"] == [{"a": 1}, "x"]


def test_numpy_is_not_imported_by_the_key() -> None:
    code = (
        "import sys, styxcache\n"
        "from styxcache.canonical import encode_params\n"
        "encode_params({'a': [1, 2.5, {3}], 'b': b'x'})\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class ConstantRepr:
    """Two different values, one repr: the trap a repr key falls into."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights

    def __repr__(self) -> str:
        return "ConstantRepr(...)"


def test_constant_repr_is_refused_naming_the_path_and_an_encoder_fixes_it(
    tmp_path: Path,
) -> None:
    params = {"stages": [{"metrics": ConstantRepr([1.0])}]}
    with pytest.raises(ParamEncodingError, match=r"`params\.stages\[0\]\.metrics`"):
        encode_params(params)

    class Registered(ConstantRepr):
        pass

    register_encoder(Registered, lambda value: {"weights": value.weights})
    one = encode_params({"m": Registered([1.0])})
    two = encode_params({"m": Registered([2.0])})
    assert one != two
    assert one == encode_params({"m": Registered([1.0])})
    with pytest.raises(TypeError, match="class"):
        register_encoder("not a class", repr)  # type: ignore[arg-type]


# Issue 12 item 8: bad input names the param --------------------------------------


def test_huge_ints_encode_losslessly() -> None:
    big = 10**5000
    assert key_of({"p": encode_params({"n": big})}) != key_of(
        {"p": encode_params({"n": big + 1})}
    )
    assert encode_params(-big) != encode_params(big)


def test_recursive_and_absurdly_deep_structures_name_the_param() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(
        ParamEncodingError, match=r"`params\.stages\[0\]\.metrics\[1\]`"
    ):
        encode_params({"stages": [{"metrics": loop}]})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(ParamEncodingError, match="contains itself"):
        encode_params({"cfg": cyclic})
    deep: Any = 0
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(ParamEncodingError, match="nested more than"):
        encode_params({"deep": deep})
    # The same object twice is not a cycle.
    shared = [1, 2]
    assert encode_params({"a": shared, "b": shared})


def test_undecodable_file_names_key_instead_of_crashing() -> None:
    name = os.fsdecode(b"scan\xff.nii")  # a lone surrogate, as Python decodes it
    assert key_of({"p": encode_params({"f": name})}) != key_of(
        {"p": encode_params({"f": "scan.nii"})}
    )


def test_unkeyable_param_in_a_real_call_runs_uncached(tmp_path: Path) -> None:
    loop: list[Any] = []
    loop.append(loop)
    runner = make_runner(tmp_path / "cache", tmp_path / "styx_tmp")
    counter = tmp_path / "runs"
    for _ in range(2):
        assert cat_param(runner, counter, {"x": loop}, None) == "none\n"
    assert runs(counter) == 2
    strict = make_runner(
        tmp_path / "cache", tmp_path / "styx_tmp", unkeyable_params="error"
    )
    with pytest.raises(ParamEncodingError, match=r"`params\.x\[0\]`"):
        cat_param(strict, counter, {"x": loop}, None)
    assert runs(counter) == 2


# Item 9: bypass patterns that can never match ------------------------------------


@pytest.mark.parametrize(
    ("pattern", "warning"),
    [
        ("bet", "has no '/'"),
        ("FSL/bet", "lower case"),
        ("fsl/*", None),
        ("*/bet", None),
        ("*bet", None),
        ("[Ff]sl/bet", None),
    ],
)
def test_bypass_patterns_that_never_match_warn(
    caplog: pytest.LogCaptureFixture, pattern: str, warning: str | None
) -> None:
    with caplog.at_level(logging.WARNING, logger="styxcache.policy"):
        CachePolicy(bypass_tools=frozenset({pattern}))
    messages = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warning in messages[0] and pattern in messages[0]
