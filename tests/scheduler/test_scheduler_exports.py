"""`styxcache.scheduler` exports what users need and nothing else; a worker
imports what a run needs and not the scheduler loop, its YAML loader or PyYAML."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import styxcache.scheduler as package

# Internals that were exported once: still importable from their modules.
INTERNALS = {
    "build_entry": "styxcache.scheduler.entry_build",
    "parse_config": "styxcache.scheduler.config",
    "execute_run": "styxcache.scheduler.runs",
    "RunRequest": "styxcache.scheduler.runs",
    "run_key": "styxcache.scheduler.ledger",
    "item_key": "styxcache.scheduler.planner",
    "make_executor": "styxcache.scheduler.executors",
    "as_executor": "styxcache.scheduler.executors",
    "open_store": "styxcache.scheduler.stores",
}


def _bound_public_names() -> set[str]:
    # Module attributes that are neither private, submodules, nor what
    # `from __future__ import annotations` binds.
    return {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }


def test_all_lists_each_public_name_once_and_each_imports() -> None:
    assert len(package.__all__) == len(set(package.__all__))
    # The lazy table resolves exactly the exported names.
    assert set(package._MODULE_OF) == set(package.__all__)
    assert package.__all__ == sorted(package.__all__, key=lambda n: (n.islower(), n))
    for name in package.__all__:
        value = getattr(package, name)
        assert value.__module__.startswith("styxcache."), name
        exec(f"from styxcache.scheduler import {name}", {})
    # Once every name is resolved, the package binds exactly `__all__`.
    assert _bound_public_names() == set(package.__all__)
    assert set(package.__all__) <= set(dir(package))


@pytest.mark.parametrize("name", sorted(INTERNALS))
def test_internals_are_not_exported_but_stay_importable(name: str) -> None:
    assert name not in package.__all__
    assert name not in dir(package)
    home = INTERNALS[name]
    value = getattr(importlib.import_module(home), name)
    assert callable(value)
    # Code written against the old exports still runs, told where the name lives.
    with pytest.warns(DeprecationWarning, match=rf"import it from {home}\b"):
        assert getattr(package, name) is value
    with pytest.warns(DeprecationWarning, match=name):
        exec(f"from styxcache.scheduler import {name}", {})
    assert name not in vars(package)  # never cached: every use warns


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # noqa: B018


def test_the_documented_objects_are_exported() -> None:
    # docs/reference/api.md renders these as `styxcache.scheduler.<name>`.
    api = Path(__file__).resolve().parents[2] / "docs" / "reference" / "api.md"
    documented = {
        line.split("styxcache.scheduler.", 1)[1].strip()
        for line in api.read_text().splitlines()
        if line.startswith("::: styxcache.scheduler.")
    }
    assert documented
    assert documented <= set(package.__all__)


WORKER_RUN = """
import json, sys, datetime as dt
import click
from styxcache.cli.app import main

# `styxcache worker --allow ...`: the command, its settings, a real run.
command = main.get_command(click.Context(main), "worker")
context = command.make_context(
    "worker",
    ["--allow", "job=os:getcwd", "--cache-dir", sys.argv[1], "--insecure-no-signing"],
)
from styxcache.cli import worker
settings = worker._settings(context.params)
assert list(settings.entries) == ["job"]

import styxcache.scheduler.nats_worker
import styxcache.scheduler.dask_executor
from styxcache.scheduler.runs import RunContext, RunRequest, execute_run

entry = settings.entries["job"]
outcome = execute_run(
    RunRequest(
        target=entry.target,
        context=RunContext(
            schedule="job",
            key="job@0",
            nominal_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        ),
        pass_context=False,
        runner=entry.runner,
    )
)
print(json.dumps({
    "ok": outcome.ok,
    "error": outcome.error,
    "modules": sorted(sys.modules),
}))
"""

# What a worker must not import: the loader, the loop, PyYAML.
FORBIDDEN = (
    "yaml",
    "styxcache.scheduler.config",
    "styxcache.scheduler.config_yaml",
    "styxcache.scheduler.entry_build",
    "styxcache.scheduler.scheduler",
    "styxcache.cli.schedule",
)


def test_a_worker_run_imports_neither_the_loader_nor_yaml(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER_RUN, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["ok"], report["error"]
    loaded = set(report["modules"])
    assert "styxcache.scheduler.nats_worker" in loaded
    assert "styxcache.scheduler.dask_executor" in loaded
    assert sorted(loaded & set(FORBIDDEN)) == []


def test_importing_the_package_imports_no_submodule() -> None:
    code = (
        "import sys, json, styxcache.scheduler;"
        " print(json.dumps(sorted(m for m in sys.modules"
        " if m.startswith('styxcache.scheduler.') or m == 'yaml')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == []
