"""styxcache 0.3.0's public API keeps its names, signatures and meaning.

Everything here is something a user of the 0.3.0 release on PyPI may have
written; it must keep working unchanged. Real `LocalRunner` executions of
`sh -c` commands throughout.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from blake3 import blake3
from styxdefs import LocalRunner, Metadata, Runner

import styxcache
from conftest import run_tool
from styxcache import (
    CachePolicy,
    CacheStore,
    CachingRunner,
    ContentHasher,
    ImageDigestResolver,
    InputHasher,
    trust_tag,
)

CAT = Metadata(id="cat-tool", name="Concatenate", package="test")
FLAKY = Metadata(id="flaky", name="Flaky", package="test")
STABLE = Metadata(id="stable", name="Stable", package="test")
PRINT_HEADER = Metadata(id="ants.PrintHeader", name="PrintHeader", package="ants")

OLD_NAMES = [
    "CachePolicy",
    "CacheStore",
    "CachingRunner",
    "ContentHasher",
    "ImageDigestResolver",
    "InputHasher",
    "bypass",
    "enabled",
    "is_bypassed",
    "trust_tag",
]


def copy_tool(
    runner: Runner,
    source: Path,
    *,
    metadata: Metadata = CAT,
    counter: Path | None = None,
    stdout: list[str] | None = None,
    stderr: list[str] | None = None,
) -> dict[str, Path]:
    """Copy `source` to out.txt, print a line on each stream, count real runs."""
    script = 'cat "$1" > out.txt; echo "copied $(wc -c < "$1")"; echo note >&2'
    if counter is not None:
        script += f'; echo run >> "{counter}"'
    return run_tool(
        runner,
        metadata,
        {"@type": f"{metadata.package}/{metadata.id}", "src": str(source)},
        inputs={"src": {}},
        outputs={"out": "out.txt"},
        cargs=lambda resolved: ["sh", "-c", script, "sh", resolved["src"]],
        stdout=stdout,
        stderr=stderr,
    )


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text("hello styx\n")
    return path


@pytest.fixture
def runner(tmp_cache: Path, data_dir: Path) -> CachingRunner:
    return CachingRunner(LocalRunner(data_dir=data_dir), tmp_cache)


# Names and signatures ----------------------------------------------------------


def test_every_old_name_is_still_exported() -> None:
    for name in OLD_NAMES:
        assert name in styxcache.__all__
        assert getattr(styxcache, name) is not None


def test_backends_module_keeps_its_resolver_names() -> None:
    from styxcache.backends import (
        docker_digest_resolver,
        podman_digest_resolver,
        singularity_digest_resolver,
    )

    for resolver in (
        docker_digest_resolver,
        podman_digest_resolver,
        singularity_digest_resolver,
    ):
        assert callable(resolver)


def test_caching_runner_signature() -> None:
    params = inspect.signature(CachingRunner).parameters
    assert list(params)[:3] == ["base", "cache_dir", "policy"]
    assert params["base"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params["cache_dir"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params["policy"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["policy"].default is None
    # Everything added since 0.3.0 is keyword-only and optional.
    for extra in list(params)[3:]:
        assert params[extra].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[extra].default is not inspect.Parameter.empty


def test_caching_runner_attributes(tmp_cache: Path, data_dir: Path) -> None:
    base = LocalRunner(data_dir=data_dir)
    policy = CachePolicy()
    runner = CachingRunner(base=base, cache_dir=str(tmp_cache), policy=policy)
    assert callable(runner.start_execution)
    assert runner.base is base
    assert runner.policy is policy
    assert isinstance(runner.store, CacheStore)
    assert runner.store.root == tmp_cache
    assert tmp_cache.is_dir()
    default = CachingRunner(base, tmp_cache)
    assert isinstance(default.policy, CachePolicy)


def test_cache_policy_positional_fields() -> None:
    hasher = ContentHasher()
    policy = CachePolicy(
        hasher, trust_tag, ("FSLOUTPUTTYPE",), frozenset({"fsl/*"}), {"salt": "1"}
    )
    assert policy.hasher is hasher
    assert policy.image_digest is trust_tag
    assert policy.env_allowlist == ("FSLOUTPUTTYPE",)
    assert policy.bypass_tools == frozenset({"fsl/*"})
    assert policy.extra == {"salt": "1"}
    names = [p.name for p in inspect.signature(CachePolicy).parameters.values()]
    assert names[:5] == [
        "hasher",
        "image_digest",
        "env_allowlist",
        "bypass_tools",
        "extra",
    ]


def test_cache_policy_defaults_match_old_release() -> None:
    policy = CachePolicy()
    assert isinstance(policy.hasher, ContentHasher)
    assert policy.image_digest is trust_tag
    assert policy.env_allowlist == ()
    assert policy.bypass_tools == frozenset()
    assert policy.extra == {}


def test_env_values_sorted_and_unset_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYXCACHE_TEST_B", "2")
    monkeypatch.setenv("STYXCACHE_TEST_A", "1")
    monkeypatch.delenv("STYXCACHE_TEST_UNSET", raising=False)
    policy = CachePolicy(
        env_allowlist=("STYXCACHE_TEST_B", "STYXCACHE_TEST_UNSET", "STYXCACHE_TEST_A")
    )
    assert policy.env_values() == [
        ("STYXCACHE_TEST_A", "1"),
        ("STYXCACHE_TEST_B", "2"),
        ("STYXCACHE_TEST_UNSET", ""),
    ]


def test_trust_tag_and_resolver_protocol() -> None:
    assert trust_tag("x") == "tag:x"
    assert trust_tag("ghcr.io/a/b:1.2") == "tag:ghcr.io/a/b:1.2"
    assert isinstance(trust_tag, ImageDigestResolver)

    def my_resolver(tag: str) -> str:
        return "sha256:" + tag

    assert isinstance(my_resolver, ImageDigestResolver)
    assert CachePolicy(image_digest=my_resolver).image_digest is my_resolver


def test_content_hasher_is_blake3_of_file_bytes(tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc" * 1000)
    # Above the memory-mapping threshold, so both code paths are covered.
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(5 * 1024 * 1024 + 3))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for chunk_size in (7, 1 << 20):
        hasher = ContentHasher(chunk_size)
        assert hasher.chunk_size == chunk_size
        for path in (small, large, empty):
            assert hasher.hash_path(path) == blake3(path.read_bytes()).hexdigest()
    assert isinstance(ContentHasher(), InputHasher)


class SizeHasher:
    """A user-written hasher (0.3.0's InputHasher protocol): keys on size only."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def hash_path(self, path: Path) -> str:
        self.calls.append(Path(path))
        return f"size:{Path(path).stat().st_size}"


def test_custom_hasher_is_used_for_the_key(
    tmp_cache: Path, data_dir: Path, source: Path, tmp_path: Path
) -> None:
    hasher = SizeHasher()
    assert isinstance(hasher, InputHasher)
    runner = CachingRunner(
        LocalRunner(data_dir=data_dir), tmp_cache, policy=CachePolicy(hasher=hasher)
    )
    counter = tmp_path / "runs"
    first = copy_tool(runner, source, counter=counter)
    assert hasher.calls == [source]
    # Same size, other bytes: the custom hasher says "same", so it is a hit.
    source.write_text("HELLO STYX\n")
    second = copy_tool(runner, source, counter=counter)
    assert runs(counter) == 1
    assert second["out"] == first["out"]
    assert second["out"].read_text() == "hello styx\n"
    # Another size: a miss.
    source.write_text("longer content\n")
    third = copy_tool(runner, source, counter=counter)
    assert runs(counter) == 2
    assert third["out"].read_text() == "longer content\n"


def test_cache_store_api(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = CacheStore(root)
    assert CacheStore.DONE_MARKER == ".styxcache.done"
    assert CacheStore.STAGING_DIR == ".incoming"
    key = "ab" + "0" * 62
    assert store.entry_dir(key) == root / "ab" / key
    assert not store.is_hit(key)

    staging = store.stage()
    assert staging.parent == root / ".incoming"
    assert staging.is_dir()
    (staging / "result.txt").write_text("42\n")
    entry = store.commit(staging, key)
    assert entry == store.entry_dir(key)
    assert store.is_hit(key)
    assert (entry / CacheStore.DONE_MARKER).is_file()
    assert (entry / "result.txt").read_text() == "42\n"
    assert not staging.exists()

    thrown = store.stage()
    (thrown / "junk").write_text("x")
    store.discard(thrown)
    assert not thrown.exists()
    assert store.is_hit(key)


def test_modes_exported_at_top_level() -> None:
    assert not styxcache.is_bypassed()
    with styxcache.bypass():
        assert styxcache.is_bypassed()
        with styxcache.enabled():
            assert not styxcache.is_bypassed()
        assert styxcache.is_bypassed()
    assert not styxcache.is_bypassed()


# Behaviour ---------------------------------------------------------------------


def test_entry_layout_and_output_paths(
    runner: CachingRunner, source: Path, tmp_cache: Path
) -> None:
    out = copy_tool(runner, source)
    entry = out["root"]
    key = entry.name
    assert len(key) == 64
    assert entry == tmp_cache / key[:2] / key
    assert entry == runner.store.entry_dir(key)
    assert out["out"] == entry / "out.txt"
    assert out["out"].read_text() == "hello styx\n"
    assert runner.store.is_hit(key)
    assert (entry / CacheStore.DONE_MARKER).is_file()


def test_hit_replays_output_and_bumps_entry_mtime(
    runner: CachingRunner, source: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    out1: list[str] = []
    err1: list[str] = []
    first = copy_tool(runner, source, counter=counter, stdout=out1, stderr=err1)
    assert out1 == ["copied 11"]
    assert err1 == ["note"]

    entry = first["root"]
    long_ago = time.time() - 90 * 24 * 3600
    os.utime(entry, (long_ago, long_ago))

    out2: list[str] = []
    err2: list[str] = []
    second = copy_tool(runner, source, counter=counter, stdout=out2, stderr=err2)
    assert runs(counter) == 1
    assert second == first
    assert out2 == out1
    assert err2 == err1
    assert entry.stat().st_mtime > long_ago + 80 * 24 * 3600
    assert runner.stats.hits == 1
    assert runner.stats.misses == 1


_KEY_SCRIPT = """
import sys
from pathlib import Path
from styxdefs import LocalRunner, Metadata
from styxcache import CachingRunner

cache, data = sys.argv[1], sys.argv[2]
runner = CachingRunner(LocalRunner(data_dir=data), cache)
execution = runner.start_execution(
    Metadata(id="cat-tool", name="Concatenate", package="test")
)
execution.params({"src": "input.txt", "flags": {"a", "b", "c", "d", "e", "f"},
                  "opts": {"z": 1, "y": [1.5, None]}})
execution.input_file("input.txt")
print(execution.output_file(".").name)
"""


def test_key_is_identical_across_processes_and_working_dirs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    keys = []
    for seed, folder in (("1", "one"), ("987", "two")):
        cwd = tmp_path / folder
        cwd.mkdir()
        # Same name and bytes, in another folder, named by a relative path.
        (cwd / "input.txt").write_text("same bytes\n")
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _KEY_SCRIPT, str(cache), str(tmp_path / "data")],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        keys.append(done.stdout.strip())
    assert len(keys[0]) == 64
    assert keys[0] == keys[1]


# The seed README's examples, verbatim (with LocalRunner tools) ------------------


def test_readme_opting_out_examples(
    runner: CachingRunner, source: Path, tmp_path: Path, tmp_cache: Path
) -> None:
    flaky_counter = tmp_path / "flaky"
    stable_counter = tmp_path / "stable"

    def flaky_tool(params: dict[str, str]) -> dict[str, Path]:
        return copy_tool(
            runner, Path(params["src"]), metadata=FLAKY, counter=flaky_counter
        )

    def stable_tool(params: dict[str, str]) -> dict[str, Path]:
        return copy_tool(
            runner, Path(params["src"]), metadata=STABLE, counter=stable_counter
        )

    params = {"src": str(source)}

    # Dynamic, scoped to a block of code. Thread- and asyncio-safe.
    with styxcache.bypass():
        result = flaky_tool(params)
    with styxcache.bypass():
        result = flaky_tool(params)
    assert runs(flaky_counter) == 2
    assert tmp_cache not in result["out"].parents
    assert result["out"].read_text() == "hello styx\n"

    # Nested re-enable, in case the outer scope is bypassed.
    with styxcache.bypass():  # noqa: SIM117 - the README's code, verbatim
        with styxcache.enabled():
            result = stable_tool(params)  # still cached
    with styxcache.bypass():  # noqa: SIM117 - the README's code, verbatim
        with styxcache.enabled():
            result = stable_tool(params)  # still cached
    assert runs(stable_counter) == 1
    assert tmp_cache in result["out"].parents


def test_readme_static_denylist(
    tmp_cache: Path, data_dir: Path, source: Path, tmp_path: Path
) -> None:
    # Static denylist, matched on f"{metadata.package}/{metadata.name}".
    policy = CachePolicy(
        bypass_tools=frozenset({"ants/PrintHeader"}),
    )
    runner = CachingRunner(LocalRunner(data_dir=data_dir), tmp_cache, policy=policy)
    counter = tmp_path / "runs"
    for _ in range(2):
        out = copy_tool(runner, source, metadata=PRINT_HEADER, counter=counter)
        assert tmp_cache not in out["out"].parents
    assert runs(counter) == 2
    assert list(runner.store.iter_keys()) == []
    assert runner.stats.bypassed == 2
    # Other tools are still cached.
    copy_tool(runner, source, counter=counter)
    copy_tool(runner, source, counter=counter)
    assert runs(counter) == 3


def test_readme_usage_shape_with_local_runner(
    tmp_cache: Path, data_dir: Path, source: Path
) -> None:
    from styxdefs import get_global_runner, set_global_runner

    saved = get_global_runner()
    try:
        set_global_runner(
            CachingRunner(
                base=LocalRunner(data_dir=data_dir),
                cache_dir=tmp_cache,
                policy=CachePolicy(image_digest=trust_tag),
            )
        )
        out = copy_tool(get_global_runner(), source)
        assert out["out"].read_text() == "hello styx\n"
        manifest = json.loads((out["root"] / CacheStore.MANIFEST).read_text())
        assert manifest["tool"] == "test/cat-tool"
    finally:
        set_global_runner(saved)


def test_relative_cache_dir_is_fixed_at_construction(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "data"), "rel-cache")
    assert runner.store.root == tmp_path / "rel-cache"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = copy_tool(runner, source)
    assert (tmp_path / "rel-cache") in out["out"].parents
    assert not (elsewhere / "rel-cache").exists()
