"""`CachingExecution`: one tool call as seen through the cache.

The wrapper calls `params()`, `input_file()`... then `output_file()`... then
`run()`. The key is settled at the first `output_file()` (or
`mutable_copy()`, or `run()`), because output paths point into the entry and
so depend on it: that is the plan (planning.py). `run()` then serves the
entry, or runs the tool in a staging folder and commits it (committing.py).
The execution is given its services by the runner and never calls back into
it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styxdefs import Execution, InputPathType, Metadata, OutputPathType

from styxcache._system import base_chain, innermost
from styxcache.calls import Call, LineHandler
from styxcache.committing import Commit
from styxcache.errors import CacheReadOnlyError
from styxcache.events import CacheEvent
from styxcache.fingerprint import (
    command_fingerprint,
    replace_in_args,
)
from styxcache.key import RegisteredInput, tool_id
from styxcache.logs import open_replays, replay
from styxcache.manifest import Manifest, OutsideRecord
from styxcache.modes import CacheMode
from styxcache.outputs import classify_output, outside_problem, outside_state
from styxcache.planning import Plan, Request, check_stored, make_plan
from styxcache.services import ExecutionServices
from styxcache.store import CacheStore
from styxcache.uncached import run_in_base_folder, run_uncached

__all__ = ["CacheReadOnlyError", "CachingExecution"]

_log = logging.getLogger("styxcache")


def _recording_layers(execution: Any) -> list[Any]:
    """Middleware executions between us and the runner that record their calls.

    styxgraph's execution keeps `input_files`/`output_files` lists and reports
    them to its `graph_runner` in `run()`. A hit never reaches that `run()`, so
    the caching execution reports for it, with the paths the caller really got.
    """
    return [
        layer
        for layer in base_chain(execution)
        if hasattr(layer, "base")
        and isinstance(getattr(layer, "output_files", None), list)
        and hasattr(getattr(layer, "graph_runner", None), "record_execution")
    ]


class CachingExecution(Execution):
    """An `Execution` that serves results from the cache or stores new ones.

    Args:
        services: What the caching runner gives each execution.
        metadata: The tool's metadata.
        mode: The cache mode in force when the execution started.
        base: The base runner's execution, when started eagerly.
        start_base: Starts the base execution when first needed. Used for
            `styxdefs.LocalRunner`, whose executions create their output folder
            at once: a hit then never creates (and removes) a folder. Its
            `input_file()` is a pure function of the path, so the command line
            built before the base exists is the one it would have built.
    """

    def __init__(
        self,
        services: ExecutionServices,
        metadata: Metadata,
        mode: CacheMode,
        *,
        base: Execution | None = None,
        start_base: Callable[[], Execution] | None = None,
    ) -> None:
        if (base is None) == (start_base is None):
            raise ValueError("give exactly one of base and start_base")
        self.metadata = metadata
        self.mode = mode
        self._services = services
        # Public: what running and committing read (`calls.Host`).
        self.tool = tool_id(metadata)
        self._base = base
        self._start_base = start_base
        # Until a lazy base exists, the base runner answers attribute look-ups
        # (environ, logger) that the execution would answer.
        self.inner: Any = (
            innermost(base, "output_dir") if base is not None else services.base_runner
        )
        original = getattr(self.inner, "output_dir", None) if base is not None else None
        self._base_dir: Path | None = Path(original) if original is not None else None
        self._redirectable = base is None or original is not None
        self._recorders = _recording_layers(base) if base is not None else []
        self._replacements: list[tuple[str, str]] = []
        self.inputs: list[RegisteredInput] = []
        self._params: dict[str, Any] | None = None
        self.outputs: list[tuple[str, bool]] = []
        self._outside: list[str] = []  # absolute output names, as returned
        self._escaping: list[str] = []  # names leaving the folder with ".."
        self._plan: Plan | None = None

    @property
    def base(self) -> Execution:
        """The base runner's execution (started now if it was deferred)."""
        if self._base is None:
            self._start()
        assert self._base is not None
        return self._base

    def _start(self) -> None:
        assert self._start_base is not None
        base = self._start_base()
        self._base = base
        self.inner = innermost(base, "output_dir")
        original = getattr(self.inner, "output_dir", None)
        self._base_dir = Path(original) if original is not None else None
        self._redirectable = original is not None
        if self._params is not None:
            base.params(self._params)
        for registered in self.inputs:
            real = base.input_file(
                registered.local,
                resolve_parent=registered.resolve_parent,
                mutable=registered.mutable,
            )
            if real != registered.local:
                self._replacements.append((registered.local, real))

    # The Execution protocol ------------------------------------------------

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Record the params (for the key) and pass them to the base execution."""
        self._params = params
        if self._base is None:
            return params
        return self._base.params(params)

    def input_file(
        self,
        host_file: InputPathType,
        *,
        resolve_parent: bool = False,
        mutable: bool = False,
    ) -> str:
        """Register an input; it must exist before anything runs."""
        if self._plan is not None:
            raise RuntimeError(
                f"{self.tool}: input_file({host_file!s}) called after "
                "output_file() or run(); the cache key is already settled"
            )
        path = Path(os.path.abspath(os.fspath(host_file)))
        if self.mode is not CacheMode.BYPASS:
            must_exist = path.parent if resolve_parent and not mutable else path
            if not must_exist.exists():
                what = "input folder" if must_exist != path else "input file"
                raise FileNotFoundError(f"{self.tool}: {what} not found: {must_exist}")
        if self._base is None and not mutable:
            local = str(Path(host_file).absolute())  # what LocalRunner returns
        else:
            local = self.base.input_file(
                host_file, resolve_parent=resolve_parent, mutable=mutable
            )
        self.inputs.append(RegisteredInput(path, resolve_parent, mutable, local))
        return local

    def output_file(self, local_file: str, *, optional: bool = False) -> OutputPathType:
        """Return where an output will be: inside the cache entry.

        A name outside the output folder is never redirected: the caller gets
        exactly the base runner's answer (docs/design/transparency.md).
        """
        kind, relative = classify_output(local_file, self.tool, CacheStore.RESERVED)
        plan = self._settle()
        if plan.where == "base":
            return self.base.output_file(local_file, optional=optional)
        if kind == "absolute":
            path = self._base_answer(local_file, optional)
            self._outside.append(os.fspath(path))
            return path
        if kind == "parent":
            self._escape(repr(os.fspath(local_file)))
            return self.base.output_file(local_file, optional=optional)
        self.outputs.append((relative, optional))
        assert plan.entry is not None
        path = plan.entry if relative == "." else plan.entry / relative
        if self._recorders:
            # Middleware in the base chain sees the call, and the path it
            # records is the one the caller gets.
            self.base.output_file(local_file, optional=optional)
            for layer in self._recorders:
                layer.output_files[-1] = path
        return path

    def mutable_copy(self, host_file: InputPathType) -> OutputPathType:
        """Return where the edited copy of a mutable input will be."""
        staged = Path(self.base.mutable_copy(host_file))
        plan = self._settle()
        if plan.where == "base":
            return staged
        name = staged.name
        if self._base_dir is not None:
            with contextlib.suppress(ValueError):
                name = staged.relative_to(self._base_dir).as_posix()
        kind, relative = classify_output(name, self.tool, CacheStore.RESERVED)
        if kind != "inside":
            self._escape(f"the mutable copy {staged}")
            return staged
        assert plan.entry is not None
        path = plan.entry / relative
        for layer in self._recorders:
            if layer.output_files and layer.output_files[-1] == staged:
                layer.output_files[-1] = path
        return path

    def _base_answer(self, local_file: str, optional: bool) -> OutputPathType:
        """The base execution's answer for an output name, not redirected."""
        if self._base is None:
            # LocalRunner joins the name to its folder: an absolute name is
            # returned as it is, so a hit need not create the folder.
            return Path(os.fspath(local_file))
        return self.base.output_file(local_file, optional=optional)

    def _escape(self, what: str) -> None:
        """Note an output that leaves the output folder: this call runs uncached."""
        self._escaping.append(what)
        if self._services.warn_once(f"escaping:{self.tool}"):
            _log.warning(
                "%s: output %s leaves the output folder; the tool runs uncached, "
                "in the base runner's own folder, as it would without the cache",
                self.tool,
                what,
            )

    def run(
        self,
        cargs: list[str],
        *,
        handle_stdout: LineHandler | None = None,
        handle_stderr: LineHandler | None = None,
    ) -> None:
        """Serve the stored result, or run the tool and store it."""
        call = Call(cargs, handle_stdout, handle_stderr, time.perf_counter())
        plan = self._settle()
        if plan.where == "base":
            run_uncached(self, plan, call)
            return
        if self._escaping:
            self._run_uncached_here(plan, call)
            return
        fingerprint = self._fingerprint(cargs, plan)
        if plan.manifest is not None and not plan.replace:
            stored = plan.manifest
            plan = check_stored(
                plan,
                stored,
                fingerprint,
                outside=self.outside_problem(stored),
                tool=self.tool,
                check_command=self._services.policy.check_command,
            )
            if not plan.replace:
                if self.serve(plan, stored, call):
                    return
                plan = dataclasses.replace(
                    plan, reason="entry removed while it was being served"
                )
        Commit(self, self._services, plan, call, fingerprint).run()

    # Settling the key --------------------------------------------------------

    def _settle(self) -> Plan:
        if self._plan is None:
            self._plan = make_plan(
                self._services,
                Request(
                    metadata=self.metadata,
                    tool=self.tool,
                    mode=self.mode,
                    params=self._params,
                    inputs=tuple(self.inputs),
                    container_tag=getattr(self.inner, "container_tag", None),
                    redirectable=self._redirectable,
                    inner_type=type(self.inner).__name__,
                ),
            )
        return self._plan

    def _fingerprint(self, cargs: list[str], plan: Plan) -> tuple[str, dict[str, str]]:
        replacements = [
            (item.local, f"<input:{i}>") for i, item in enumerate(self.inputs)
        ]
        if plan.entry is not None:
            replacements.append((str(plan.entry), "<entry>"))
        executable = None
        if cargs and not hasattr(self.inner, "container_tag"):
            environ = getattr(self.inner, "environ", None) or {}
            executable = self._services.executables.digest(
                cargs[0], environ.get("PATH", os.environ.get("PATH"))
            )
        return command_fingerprint(
            cargs, replacements=replacements, executable=executable
        )

    # Serving -----------------------------------------------------------------

    def default_handler(self, stream: str) -> LineHandler | None:
        """Where a stream's lines go when the caller gave no handler.

        Args:
            stream: "stdout" or "stderr".

        Returns:
            The base execution's logger's child at DEBUG, when enabled.
        """
        logger = getattr(self.inner, "logger", None)
        if isinstance(logger, logging.Logger):
            child = logger.getChild(stream)
            if child.isEnabledFor(logging.DEBUG):
                return child.debug
        return None

    def serve(
        self, plan: Plan, manifest: Manifest, call: Call, reason: str = ""
    ) -> bool:
        """Serve a verified entry; False if it vanished before it could be used.

        The use is recorded first: `gc` keeps recently used entries, so once
        touched the entry stays while its outputs are read.

        Args:
            plan: The plan (its entry is served).
            manifest: The entry's verified manifest.
            call: The `run()` call.
            reason: Said in the hit event (a twin's result).

        Returns:
            Whether it was served.
        """
        assert plan.entry is not None
        if plan.where == "cache" and not self._services.store.touch(plan.key):
            return False
        replays = open_replays(
            plan.entry,
            [
                (
                    CacheStore.STDOUT_LOG,
                    manifest.stdout_lines,
                    call.handle_stdout or self.default_handler("stdout"),
                ),
                (
                    CacheStore.STDERR_LOG,
                    manifest.stderr_lines,
                    call.handle_stderr or self.default_handler("stderr"),
                ),
            ],
        )
        if replays is None:  # removed by a concurrent gc: run the tool
            return False
        # Both logs are open before any line is handed out: an entry removed
        # now is still read in full, and nothing is delivered twice.
        for handle, target in replays:
            replay(handle, target)
        for layer in self._recorders:
            layer.graph_runner.record_execution(
                layer.metadata, layer.input_files, layer.output_files
            )
        self.drop_base_dir()
        self._services.emit(
            CacheEvent(
                kind="hit",
                tool=self.tool,
                key=plan.key,
                duration_s=time.perf_counter() - call.started,
                saved_s=manifest.duration_s,
                bytes_served=manifest.total_size,
                reason=reason,
                remote=plan.remote,
            )
        )
        return True

    def drop_base_dir(self) -> None:
        """Remove the folder the base runner made eagerly, if the tool never used it.

        NiWrap's `metadata.name` is often a sentence with "/" in it, and
        LocalRunner's folder `<data_dir>/<uid>_<n>_<name>` is then nested:
        every empty level up to the data folder goes, not just the last.
        """
        if self._base is None or self._base_dir is None:
            return
        folder = os.path.abspath(self._base_dir)
        data_dir = self._services.data_dir
        stop = os.path.abspath(data_dir) if data_dir else os.path.dirname(folder)
        inside = stop if stop.endswith(os.sep) else stop + os.sep
        while folder != stop and folder.startswith(inside):
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = os.path.dirname(folder)

    # Running uncached ---------------------------------------------------------

    def _run_uncached_here(self, plan: Plan, call: Call) -> None:
        """Run a call with an output that leaves its folder, as the base would."""
        plan = dataclasses.replace(
            plan, kind="bypass", reason=f"output {self._escaping[0]} leaves its folder"
        )
        self.run_in_base_folder(plan, call)

    def run_in_base_folder(self, plan: Plan, call: Call) -> None:
        """Run uncached in the base runner's own folder (see `uncached.py`).

        Args:
            plan: The plan (its key's entry paths were handed out).
            call: The `run()` call.
        """
        if self._base is None:
            self._start()  # the folder the tool runs in is known once started
        run_in_base_folder(self, self._services.store, self._base_dir, plan, call)

    def real_cargs(self, cargs: list[str]) -> list[str]:
        """Swap provisional input paths for the ones the base execution returned.

        Args:
            cargs: The command line the wrapper built.
        """
        if not self._replacements:
            return cargs
        return replace_in_args(cargs, self._replacements)

    def emit_run(self, plan: Plan, call: Call, *, ok: bool) -> None:
        """Emit the event of a call that ran (uncached, or stored).

        Args:
            plan: The call's plan (kind, reason, remote outcome).
            call: The `run()` call.
            ok: False when the tool failed.
        """
        self._services.emit(
            CacheEvent(
                kind=plan.kind,
                tool=self.tool,
                key=plan.key,
                duration_s=time.perf_counter() - call.started,
                reason=plan.reason,
                ok=ok,
                remote=plan.remote,
                nearest=plan.nearest if plan.kind == "miss" else "",
                differences=plan.differences if plan.kind == "miss" else (),
            )
        )

    # Outputs outside the entry -------------------------------------------------

    def outside_paths(self) -> list[str]:
        """Declared outputs outside the entry (absolute names), sorted."""
        return sorted(set(self._outside))

    def outside_state(self, path: str) -> OutsideRecord:
        """What is at an outside output's path now (read only, never changed).

        Args:
            path: The absolute name.
        """
        return outside_state(path, self._services.digest_value)

    def outside_problem(self, manifest: Manifest) -> str:
        """Why an entry's outside outputs do not match this call, or "".

        Args:
            manifest: The entry's manifest.
        """
        return outside_problem(
            self.outside_paths(), manifest, self._services.digest_value
        )
