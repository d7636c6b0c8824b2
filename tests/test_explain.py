"""`explain` compares a miss only with entries older than it, and shows image IDs."""

from __future__ import annotations

import threading
from pathlib import Path

from styxdefs import LocalRunner, Metadata

from conftest import run_tool
from styxcache import CachingRunner
from styxcache.explain import describe_differences
from styxcache.misses import explain_misses

TOOL = Metadata(id="poll", name="Poll", package="demo")


def call(runner: CachingRunner, n: int, size: int, gate: Path | None) -> Path:
    # The gate is in the command line only, never in the params: it makes one
    # run wait without changing its key.
    wait = f"while [ ! -e '{gate}' ]; do sleep 0.02; done; " if gate else ""
    out = run_tool(
        runner,
        TOOL,
        {"n": n, "size": size},
        outputs={"out": "out.txt"},
        cargs=lambda _inputs: ["sh", "-c", f"{wait}echo {n} {size} > out.txt"],
    )
    return out["out"]


def key_of(output: Path, cache: Path) -> str:
    return output.resolve().relative_to(cache.resolve()).parts[1]


def test_nearest_entry_is_older_than_the_miss(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "styx_tmp"), cache)
    a = key_of(call(runner, 1, 1, None), cache)

    gate = tmp_path / "go"
    done: dict[str, Path] = {}
    slow = threading.Thread(
        target=lambda: done.setdefault("b", call(runner, 2, 2, gate)), daemon=True
    )
    slow.start()
    # B has missed and is running; C (nearer to B than A is) commits meanwhile.
    while slow.is_alive() and not (
        list((tmp_path / "styx_tmp").glob("*")) or list((cache / ".incoming").glob("*"))
    ):
        slow.join(0.02)
    assert slow.is_alive(), "the gated run ended before the gate opened"
    c = key_of(call(runner, 3, 2, None), cache)
    gate.touch()
    slow.join(60)
    assert not slow.is_alive()
    b = key_of(done["b"], cache)

    explained = {e.key: e for e in explain_misses(runner.store, last=10)}
    assert explained[b].recomputed
    # C was committed after B missed: B's miss was against A, never C.
    assert explained[b].nearest == a, (explained[b], c)
    assert set(explained[b].differences) == {"param `n` 1 -> 2", "param `size` 1 -> 2"}
    assert explained[c].nearest in {a, b}


def test_image_change_shows_old_and_new_ids() -> None:
    old = {"image": "sha256:" + "a" * 64}
    new = {"image": "sha256:" + "b" * 64}
    (line,) = describe_differences(old, new)
    assert line == f"image digest changed: sha256:{'a' * 16} -> sha256:{'b' * 16}"
    (added,) = describe_differences({"image": None}, new)
    assert added.startswith("image digest changed: (no image) -> sha256:bbbb")
