"""CachingRunner over a real styxdocker DockerRunner and a real Docker daemon.

The tool is a hand-made Styx call that runs busybox sh in the test image. It
appends a line to a counter file in a host folder bind-mounted into the
container (``docker_extra_args``), so "the tool ran" is observed from outside
the cache rather than inferred from the runner's own statistics.
"""

from __future__ import annotations

import multiprocessing
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from styxdefs import Metadata, Runner, get_global_runner, set_global_runner

from conftest import run_tool
from styxcache import CachePolicy, CachingRunner
from styxcache.backends import (
    ContainerRuntimeUnavailableError,
    DigestResolutionError,
    DockerDigestResolver,
    ImageNotFoundError,
    docker_digest_resolver,
)

pytestmark = pytest.mark.integration

styxdocker = pytest.importorskip("styxdocker")
DockerRunner = styxdocker.DockerRunner


class FakeClock:
    """Manually advanced monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def echo_tool(tag: str) -> Metadata:
    return Metadata(id="echo", name="echo", package="test", container_image_tag=tag)


# Runs inside the container, with /styx_output as working directory.
SCRIPT = (
    "echo run >> /counter/runs; "
    "cat /variant > out.txt 2>/dev/null || echo base > out.txt; "
    'echo "hello $1"'
)


def call_echo(runner: Runner, tag: str, word: str = "world") -> tuple[str, list[str]]:
    """Run the echo tool once; return out.txt's text and the stdout lines."""
    stdout: list[str] = []
    out = run_tool(
        runner,
        echo_tool(tag),
        {"word": word},
        outputs={"out": "out.txt"},
        cargs=lambda _inputs: ["sh", "-c", SCRIPT, "echo", word],
        stdout=stdout,
    )
    return out["out"].read_text().strip(), stdout


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    folder = tmp_path / "counter"
    folder.mkdir()
    return folder


def runs(counter: Path) -> int:
    path = counter / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def docker_base(tmp_path: Path, counter: Path) -> Any:
    return DockerRunner(
        data_dir=tmp_path / "styx_tmp",
        docker_extra_args=["--mount", f"type=bind,source={counter},target=/counter"],
    )


def entries(cache_dir: Path) -> list[Path]:
    """Committed cache entries (``<cache>/<key[:2]>/<key>/``)."""
    if not cache_dir.exists():
        return []
    return [
        p
        for shard in cache_dir.iterdir()
        if shard.is_dir() and not shard.name.startswith(".")
        for p in shard.iterdir()
        if p.is_dir()
    ]


# -------------------------------------------------------------------- resolver


def test_resolver_returns_the_local_image_id(
    docker_client: Any, test_image: str
) -> None:
    expected = docker_client.images.get(test_image).id
    assert expected.startswith("sha256:")
    assert DockerDigestResolver(ttl=0)(test_image) == expected
    assert docker_digest_resolver(test_image) == expected


def test_resolver_follows_a_moved_tag(
    docker_client: Any, build_variant: Any, unique_tag: str
) -> None:
    clock = FakeClock()
    memo = DockerDigestResolver(ttl=60.0, clock=clock)
    first = build_variant(unique_tag, "a")
    assert memo(unique_tag) == first
    second = build_variant(unique_tag, "b")
    assert second != first
    assert DockerDigestResolver(ttl=0)(unique_tag) == second
    assert memo(unique_tag) == first  # within the ttl
    clock.now += 60.0
    assert memo(unique_tag) == second


def test_resolver_travels_to_worker_processes(
    docker_client: Any, test_image: str
) -> None:
    # Schedulers ship the policy (and so the resolver) to other processes.
    expected = docker_client.images.get(test_image).id
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        answers = list(pool.map(docker_digest_resolver, [test_image] * 4))
    assert answers == [expected] * 4


def test_missing_tag_names_the_pull_command(docker_client: Any) -> None:
    tag = f"styxcache-test/absent-{uuid.uuid4().hex[:8]}:1"
    with pytest.raises(ImageNotFoundError) as info:
        DockerDigestResolver(ttl=0)(tag)
    assert isinstance(info.value, LookupError)
    assert info.value.tag == tag
    assert f"docker pull {tag}" in str(info.value)


def test_invalid_reference_is_not_reported_as_missing(docker_client: Any) -> None:
    with pytest.raises(DigestResolutionError, match="invalid reference format") as info:
        DockerDigestResolver(ttl=0)("Bad::Ref")
    assert not isinstance(info.value, ImageNotFoundError)


# --------------------------------------------------------- through CachingRunner


def test_repeat_call_is_a_hit_and_replays_stdout(
    tmp_path: Path, counter: Path, test_image: str
) -> None:
    runner = CachingRunner(
        docker_base(tmp_path, counter),
        tmp_path / "cache",
        policy=CachePolicy(image_digest=DockerDigestResolver(ttl=0)),
    )
    assert call_echo(runner, test_image) == ("base", ["hello world"])
    assert runs(counter) == 1
    assert call_echo(runner, test_image) == ("base", ["hello world"])
    assert runs(counter) == 1  # served from the cache: the container never started
    assert (runner.stats.misses, runner.stats.hits) == (1, 1)
    # Different params are a different key.
    assert call_echo(runner, test_image, "again") == ("base", ["hello again"])
    assert runs(counter) == 2


def test_retagged_image_makes_the_next_call_a_miss(
    tmp_path: Path, counter: Path, build_variant: Any, unique_tag: str
) -> None:
    runner = CachingRunner(
        docker_base(tmp_path, counter),
        tmp_path / "cache",
        policy=CachePolicy(image_digest=DockerDigestResolver(ttl=0)),
    )
    build_variant(unique_tag, "a")
    assert call_echo(runner, unique_tag)[0] == "a"
    assert call_echo(runner, unique_tag)[0] == "a"
    assert runs(counter) == 1

    build_variant(unique_tag, "b")  # same tag, different image
    assert call_echo(runner, unique_tag)[0] == "b"
    assert runs(counter) == 2
    assert call_echo(runner, unique_tag)[0] == "b"
    assert runs(counter) == 2
    assert (runner.stats.misses, runner.stats.hits) == (2, 2)
    assert len(entries(tmp_path / "cache")) == 2


def test_trusting_the_tag_serves_stale_output_after_a_retag(
    tmp_path: Path, counter: Path, build_variant: Any, unique_tag: str
) -> None:
    # The reason the resolvers exist: the default policy keys on the tag
    # string, so a moved tag still hits the entry made with the old image.
    runner = CachingRunner(docker_base(tmp_path, counter), tmp_path / "cache")
    build_variant(unique_tag, "a")
    assert call_echo(runner, unique_tag)[0] == "a"
    build_variant(unique_tag, "b")
    assert call_echo(runner, unique_tag)[0] == "a"
    assert runs(counter) == 1


def test_resolver_ttl_delays_noticing_a_retag(
    tmp_path: Path, counter: Path, build_variant: Any, unique_tag: str
) -> None:
    clock = FakeClock()
    runner = CachingRunner(
        docker_base(tmp_path, counter),
        tmp_path / "cache",
        policy=CachePolicy(image_digest=DockerDigestResolver(ttl=60.0, clock=clock)),
    )
    build_variant(unique_tag, "a")
    assert call_echo(runner, unique_tag)[0] == "a"
    build_variant(unique_tag, "b")
    clock.now += 59.0
    assert call_echo(runner, unique_tag)[0] == "a"  # memoised identity: a hit
    assert runs(counter) == 1
    clock.now += 1.0
    assert call_echo(runner, unique_tag)[0] == "b"
    assert runs(counter) == 2


def test_image_overrides_are_resolved_not_the_wrapper_tag(
    tmp_path: Path, counter: Path, build_variant: Any, unique_tag: str
) -> None:
    # The wrapper names an image that does not exist; the base runner maps it
    # to a real one, and that real image is what must be resolved.
    wrapper_tag = f"styxcache-test/not-pulled-{uuid.uuid4().hex[:8]}:9"
    build_variant(unique_tag, "override")
    base = docker_base(tmp_path, counter)
    base.image_overrides = {wrapper_tag: unique_tag}
    runner = CachingRunner(
        base,
        tmp_path / "cache",
        policy=CachePolicy(image_digest=DockerDigestResolver(ttl=0)),
    )
    assert call_echo(runner, wrapper_tag)[0] == "override"
    assert call_echo(runner, wrapper_tag)[0] == "override"
    assert runs(counter) == 1


def test_missing_image_fails_before_running_or_writing(
    tmp_path: Path, counter: Path, docker_client: Any
) -> None:
    tag = f"styxcache-test/absent-{uuid.uuid4().hex[:8]}:1"
    cache = tmp_path / "cache"
    runner = CachingRunner(
        docker_base(tmp_path, counter),
        cache,
        policy=CachePolicy(image_digest=DockerDigestResolver(ttl=0)),
    )
    with pytest.raises(ImageNotFoundError, match=re.escape(f"docker pull {tag}")):
        call_echo(runner, tag)
    assert runs(counter) == 0
    assert entries(cache) == []


def test_unreachable_daemon_fails_before_running_or_writing(
    tmp_path: Path, counter: Path, test_image: str
) -> None:
    cache = tmp_path / "cache"
    resolver = DockerDigestResolver(ttl=0, base_url=f"unix://{tmp_path}/none.sock")
    runner = CachingRunner(
        docker_base(tmp_path, counter), cache, policy=CachePolicy(image_digest=resolver)
    )
    with pytest.raises(ContainerRuntimeUnavailableError, match=r"none\.sock"):
        call_echo(runner, test_image)
    assert runs(counter) == 0
    assert entries(cache) == []


# ------------------------------------------------------------------ seed usage


@pytest.fixture
def restore_global_runner() -> Iterator[None]:
    previous = get_global_runner()
    yield
    set_global_runner(previous)


@pytest.mark.usefixtures("restore_global_runner")
def test_seed_usage_example(tmp_path: Path, test_image: str) -> None:
    # The published usage block, unchanged but for its two paths, which
    # point into this test's tmp folder instead of /tmp/styx and /mnt.
    styx_dir = str(tmp_path / "styx")
    ci_cache = str(tmp_path / "ci-cache" / "styx")

    from styxdefs import set_global_runner
    from styxdocker import DockerRunner

    from styxcache import CachePolicy, CachingRunner
    from styxcache.backends import docker_digest_resolver

    set_global_runner(
        CachingRunner(
            base=DockerRunner(data_dir=styx_dir),
            cache_dir=ci_cache,
            policy=CachePolicy(image_digest=docker_digest_resolver),
        )
    )

    # "Use any Styx wrapper as usual": a wrapper calls get_global_runner().
    def wrapper(word: str) -> tuple[str, list[str]]:
        stdout: list[str] = []
        out = run_tool(
            get_global_runner(),
            echo_tool(test_image),
            {"word": word},
            outputs={"out": "greeting.txt"},
            cargs=lambda _inputs: [
                "sh",
                "-c",
                'echo "hi $1" | tee greeting.txt',
                "-",
                word,
            ],
            stdout=stdout,
        )
        return out["out"].read_text(), stdout

    assert wrapper("seed") == ("hi seed\n", ["hi seed"])
    assert wrapper("seed") == ("hi seed\n", ["hi seed"])
    runner = get_global_runner()
    assert isinstance(runner, CachingRunner)
    assert (runner.stats.misses, runner.stats.hits) == (1, 1)
    (entry,) = entries(Path(ci_cache))
    assert (entry / "greeting.txt").read_text() == "hi seed\n"
    assert (entry / ".styxcache.done").exists()
