"""The remote tier from a schedule entry's `runner:` settings (YAML / workers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from remote_helpers import runs, upper

from styxcache.scheduler.runner_spec import (
    RunnerSpec,
    RunnerSpecError,
    runner_from_spec,
)


def test_runner_settings_carry_the_remote(tmp_path: Path, remote_url: str) -> None:
    spec = RunnerSpec.from_mapping(
        {
            "cache_dir": str(tmp_path / "a"),
            "data_dir": str(tmp_path / "sa"),
            "remote": remote_url,
            "remote_write": True,
        }
    )
    assert RunnerSpec.from_mapping(spec.as_dict()) == spec
    writer = runner_from_spec(spec)
    assert writer.remote is not None and writer.remote.url == remote_url
    infile = tmp_path / "in.txt"
    infile.write_text("scheduled\n")
    counter = tmp_path / "runs.txt"
    upper(writer, infile, counter)

    # Another node: its own local disk, the same bucket, read-only.
    reader = runner_from_spec(
        RunnerSpec.from_mapping(
            {
                "cache_dir": str(tmp_path / "b"),
                "data_dir": str(tmp_path / "sb"),
                "remote": remote_url,
                "remote_write": False,
            }
        )
    )
    assert reader.remote is not None and reader.remote.write is False
    upper(reader, infile, counter)
    assert runs(counter) == 1 and reader.stats.remote_hits == 1


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"remote": "ftp://x/y"}, "runner.remote"),
        ({"remote": 3}, "runner.remote"),
        ({"remote": "s3://bucket/p", "remote_write": "no"}, "runner.remote_write"),
    ],
)
def test_bad_remote_settings_name_the_field(
    tmp_path: Path, raw: dict[str, object], field: str
) -> None:
    with pytest.raises(RunnerSpecError) as info:
        RunnerSpec.from_mapping({"cache_dir": str(tmp_path), **raw})
    assert info.value.field == field


def test_remote_unset_leaves_it_to_the_worker_environment(tmp_path: Path) -> None:
    spec = RunnerSpec.from_mapping({"cache_dir": str(tmp_path)})
    assert spec.remote is None and spec.remote_write is None
    assert (
        RunnerSpec.from_mapping({"cache_dir": str(tmp_path), "remote": ""}).remote == ""
    )
