"""`styxcache.transfer.parallel`: forked workers that keep a slice each across steps.

The crews run in a fresh interpreter (a real `fork`, real pipes): the test
process has other threads, and forking it could copy a lock one holds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from styxcache.transfer.parallel import split, worker_count

_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from styxcache.transfer.common import TransferError
    from styxcache.transfer.parallel import crew

    class Custom(Exception):
        def __init__(self, a, b):  # not picklable back as it was made
            super().__init__(f"{a}-{b}")
            self.a = a

    def remember(context, part):
        part.append(os.getpid())
        return context + len(part)

    def pids(context, part):
        return part[1:]

    def fail(context, part):
        if part[0] == "b":
            raise TransferError("slice b is bad")
        if part[0] == "c":
            raise Custom(1, 2)
        return "fine"

    def die(context, part):
        if part[0] == "b":
            os._exit(3)
        return "fine"

    parent = os.getpid()
    with crew(10, [["a"], ["b"], ["c"]]) as team:
        assert team.step(remember) == [12, 12, 12]
        seen = team.step(pids)
        assert len({p[0] for p in seen}) == 3 and parent not in {p[0] for p in seen}
        try:
            team.step(fail)
        except TransferError as exc:
            assert str(exc) == "slice b is bad", exc
        else:
            raise AssertionError("no error")
    with crew(0, [["c"], ["a"]]) as team:
        try:
            team.step(fail)
        except TransferError as exc:  # not unpicklable: its text instead
            assert str(exc) == "Custom: 1-2", exc
    with crew(0, [["a"], ["b"]]) as team:
        try:
            team.step(die)
        except TransferError as exc:
            assert "died" in str(exc), exc
    with crew(5, [["a"]]) as team:  # one slice: no fork
        assert team.step(remember) == [7]
        assert team.step(pids) == [[parent]]
    print("ok")
    """
)


def test_crews_keep_state_and_report_errors_in_slice_order() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_slices_and_worker_count() -> None:
    keys = [f"k{i}" for i in range(10)]
    weights = {key: 1 for key in keys} | {"k0": 9}
    slices = split(keys, weights, 3)
    assert [key for part in slices for key in part] == keys  # contiguous, in order
    assert slices[0] == ["k0"]
    assert len(slices) == 3
    assert split(keys[:2], {}, 5) == [["k0"], ["k1"]]
    assert worker_count(None, 10) == 1  # too few entries to pay for a fork
    assert worker_count(4, 1) == 1
    with pytest.raises(ValueError, match="at least 1"):
        worker_count(0, 10)
