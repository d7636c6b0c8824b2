"""CachingRunner composed with other Styx runners: styxgraph and styxkit.

Real runners and real commands (`sort`, `uniq`, `echo`) throughout: a two-step
pipeline whose second step reads the first step's output, run once to fill
the cache and once more to be served from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import styxdefs.global_state
from styxdefs import LocalRunner, Metadata, Runner, get_global_runner, set_global_runner

import styxcache
from styxcache import CachePolicy, CachingRunner

styxgraph = pytest.importorskip("styxgraph")
styxkit = pytest.importorskip("styxkit")

SORT = Metadata(id="sort", name="Sort the lines of a text file", package="coreutils")
UNIQ = Metadata(id="uniq", name="Drop repeated adjacent lines", package="coreutils")


@pytest.fixture(autouse=True)
def _restore_global_runner() -> Iterator[None]:
    saved = styxdefs.global_state._STYX_GLOBAL_RUNNER
    yield
    styxdefs.global_state._STYX_GLOBAL_RUNNER = saved


@pytest.fixture
def words(tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text("pear\napple\npear\nfig\n")
    return path


def sort_file(source: Path, runner: Runner | None = None) -> tuple[Path, list[str]]:
    runner = runner if runner is not None else get_global_runner()
    execution = runner.start_execution(SORT)
    execution.params({"@type": "coreutils/sort", "input": str(source)})
    host = execution.input_file(source)
    execution.output_file(".")
    result = execution.output_file("sorted.txt")
    lines: list[str] = []
    execution.run(
        ["sh", "-c", 'sort "$1" -o sorted.txt && wc -l < sorted.txt', "sh", host],
        handle_stdout=lines.append,
    )
    return result, lines


def uniq_file(source: Path, runner: Runner | None = None) -> Path:
    runner = runner if runner is not None else get_global_runner()
    execution = runner.start_execution(UNIQ)
    execution.params({"@type": "coreutils/uniq", "input": str(source)})
    host = execution.input_file(source)
    execution.output_file(".")
    result = execution.output_file("unique.txt")
    execution.run(["uniq", host, "unique.txt"])
    return result


def pipeline(words: Path, runner: Runner | None = None) -> tuple[Path, list[str]]:
    sorted_path, lines = sort_file(words, runner)
    return uniq_file(sorted_path, runner), lines


def graph_shape(graph: object) -> tuple[list[str], list[tuple[str, str]]]:
    nodes = graph.nodes  # type: ignore[attr-defined]
    edges = graph.dependency_resolver.build_dependencies(nodes)  # type: ignore[attr-defined]
    return [node.label for node in nodes], sorted(edges)


def test_graph_runner_around_caching_runner(tmp_path: Path, words: Path) -> None:
    shapes, results = [], []
    for _ in range(2):
        caching = CachingRunner(
            LocalRunner(data_dir=tmp_path / "scratch"), tmp_path / "c"
        )
        graph = styxgraph.GraphRunner(caching)
        results.append(pipeline(words, graph))
        shapes.append(graph_shape(graph))
        last = caching

    assert (last.stats.hits, last.stats.misses) == (2, 0)
    (first_out, first_lines), (second_out, second_lines) = results
    assert first_out == second_out
    assert second_out.read_text() == "apple\nfig\npear\n"
    assert first_lines == second_lines == ["4"]
    labels, edges = shapes[1]
    assert labels == [
        "coreutils/Sort the lines of a text file",
        "coreutils/Drop repeated adjacent lines",
    ]
    assert len(edges) == 1  # sort -> uniq, found through the cache entry's path
    assert shapes[0] == shapes[1]


def test_caching_runner_around_graph_runner(tmp_path: Path, words: Path) -> None:
    shapes, results = [], []
    for _ in range(2):
        graph = styxgraph.GraphRunner(LocalRunner(data_dir=tmp_path / "scratch"))
        caching = CachingRunner(graph, tmp_path / "c")
        results.append(pipeline(words, caching))
        shapes.append(graph_shape(graph))

    assert (caching.stats.hits, caching.stats.misses) == (2, 0)
    assert results[0] == results[1]
    assert results[1][0].read_text() == "apple\nfig\npear\n"
    # The graph saw both executions on the all-hit run, not an empty graph,
    # and the sort -> uniq edge on both runs.
    assert shapes[1] == shapes[0]
    labels, edges = shapes[1]
    assert len(labels) == 2
    assert len(edges) == 1


def test_use_cache_wraps_the_current_global_runner(tmp_path: Path) -> None:
    local = LocalRunner(data_dir=tmp_path / "scratch")
    set_global_runner(local)

    runner = styxcache.use_cache(cache_dir=tmp_path / "c", verify="full")

    assert get_global_runner() is runner
    assert isinstance(runner, CachingRunner)
    assert runner.base is local
    assert runner.policy.verify == "full"


def test_styxkit_local_then_cache_then_graph(tmp_path: Path, words: Path) -> None:
    for _ in range(2):
        styxkit.use_local(data_dir=tmp_path / "scratch")
        caching = styxcache.use_cache(cache_dir=tmp_path / "c")
        graph = styxkit.use_graph()
        out, lines = pipeline(words)  # the wrappers use the global runner

    assert isinstance(graph, styxgraph.GraphRunner)
    assert graph.base is caching
    assert (caching.stats.hits, caching.stats.misses) == (2, 0)
    assert out.read_text() == "apple\nfig\npear\n"
    assert lines == ["4"]
    assert len(graph_shape(graph)[1]) == 1


def test_styxkit_local_then_graph_then_cache(tmp_path: Path, words: Path) -> None:
    for _ in range(2):
        styxkit.use_local(data_dir=tmp_path / "scratch")
        graph = styxkit.use_graph()
        caching = styxcache.use_cache(cache_dir=tmp_path / "c")
        out, _ = pipeline(words)

    assert caching.base is graph
    assert get_global_runner() is caching
    assert caching.stats.hits == 2
    assert len(graph.nodes) == 2
    assert out.read_text() == "apple\nfig\npear\n"


def test_use_cache_policy_keywords_reach_the_policy(tmp_path: Path) -> None:
    styxkit.use_local(data_dir=tmp_path / "scratch")

    runner = styxcache.use_cache(
        cache_dir=tmp_path / "c",
        env_allowlist=("OMP_NUM_THREADS",),
        bypass_tools=frozenset({"coreutils/uniq"}),
        max_size="1G",
    )

    assert isinstance(runner.policy, CachePolicy)
    assert runner.policy.env_allowlist == ("OMP_NUM_THREADS",)
    assert runner.policy.max_size_bytes == 1024**3
    words = tmp_path / "w.txt"
    words.write_text("b\na\n")
    pipeline(words)
    pipeline(words)
    assert (runner.stats.hits, runner.stats.bypassed) == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"verfy": "full"}, TypeError, "verfy"),
        ({"verify": "everything"}, ValueError, "verify"),
        ({"bypass_tools": "fsl/*"}, TypeError, "bypass_tools"),
    ],
)
def test_use_cache_rejects_bad_policy_and_keeps_the_global_runner(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    local = styxkit.use_local(data_dir=tmp_path / "scratch")

    with pytest.raises(error, match=message):
        styxcache.use_cache(cache_dir=tmp_path / "c", **kwargs)

    assert get_global_runner() is local
    assert not (tmp_path / "c").exists()


def test_use_cache_rejects_a_file_as_cache_dir(tmp_path: Path) -> None:
    local = styxkit.use_local(data_dir=tmp_path / "scratch")
    (tmp_path / "c").write_text("a file")

    with pytest.raises(styxcache.CacheDirectoryError, match="is not a directory"):
        styxcache.use_cache(cache_dir=tmp_path / "c")

    assert get_global_runner() is local
