"""`CachingExecution`: one tool call as seen through the cache.

The wrapper calls `params()`, `input_file()`... then `output_file()`... then
`run()`. The key is settled at the first `output_file()` (or
`mutable_copy()`, or `run()`), because output paths point into the entry and
so depend on it. `run()` then serves the entry, or runs the tool in a staging
folder and commits it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shlex
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from styxdefs import Execution, InputPathType, Metadata, OutputPathType

from styxcache import lease as leases
from styxcache.canonical import ParamEncodingError
from styxcache.catalog import record_commit
from styxcache.events import CacheEvent, EventKind
from styxcache.explain import nearest_entry
from styxcache.fingerprint import (
    command_fingerprint,
    describe_fingerprint_change,
    replace_in_args,
)
from styxcache.hashing import ContentHasher, UnkeyableInputError, stat_signature
from styxcache.key import KeyPayload, RegisteredInput, build_payload, tool_id
from styxcache.logs import LineLog, open_log, replay
from styxcache.manifest import Manifest, OutsideRecord, scan_outputs
from styxcache.modes import CacheMode
from styxcache.store import CacheStore, remove_tree
from styxcache.trust import seal_entry

if TYPE_CHECKING:
    from styxcache.runner import CachingRunner

__all__ = ["CacheReadOnlyError", "CachingExecution"]

_TWIN = "computed by a concurrent identical execution"
_LEASE_ATTEMPTS = 3
_EXPLAIN_CANDIDATES = 4
"""Newest entries of a tool compared on a miss: enough to find the sibling run
that differs in one param, few enough to keep a miss cheap (each costs a
manifest read and a comparison, ~45 us; `styxcache explain` compares 256)."""

_log = logging.getLogger("styxcache")

LineHandler = Callable[[str], None]


class CacheReadOnlyError(PermissionError):
    """A miss must write to a read-only cache, and the policy forbids running it."""


@dataclasses.dataclass(frozen=True)
class _Call:
    """One `run()` call: the command line, the caller's handlers, its start."""

    cargs: list[str]
    handle_stdout: LineHandler | None
    handle_stderr: LineHandler | None
    started: float


@dataclasses.dataclass
class _Plan:
    """What the execution decided when its key was settled."""

    where: str  # "cache": the main entry; "tier": a read-only tier; "base": uncached
    key: str = ""
    payload: KeyPayload | None = None
    manifest: Manifest | None = None  # set for a (provisional) hit
    entry: Path | None = None
    replace: bool = False  # the tool runs and replaces an existing entry
    kind: EventKind = "miss"
    reason: str = ""
    signatures: tuple[str, ...] = ()
    remote: str = ""  # what the remote tier did (remote.RemoteOutcome)


def _innermost(execution: Any) -> Any:
    """Return the execution that owns `output_dir`, the folder the tool writes into.

    Middleware such as styxgraph's GraphRunner wraps the real execution as `.base`.
    """
    seen = 0
    while (
        not hasattr(execution, "output_dir")
        and hasattr(execution, "base")
        and seen < 16
    ):
        execution = execution.base
        seen += 1
    return execution


def _recording_layers(execution: Any) -> list[Any]:
    """Middleware executions between us and the runner that record their calls.

    styxgraph's execution keeps `input_files`/`output_files` lists and reports
    them to its `graph_runner` in `run()`. A hit never reaches that `run()`, so
    the caching execution reports for it, with the paths the caller really got.
    """
    layers = []
    seen = 0
    while hasattr(execution, "base") and seen < 16:
        if isinstance(getattr(execution, "output_files", None), list) and hasattr(
            getattr(execution, "graph_runner", None), "record_execution"
        ):
            layers.append(execution)
        execution = execution.base
        seen += 1
    return layers


class CachingExecution(Execution):
    """An `Execution` that serves results from the cache or stores new ones.

    Args:
        runner: The caching runner.
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
        runner: CachingRunner,
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
        self._runner = runner
        self._tool = tool_id(metadata)
        self._base = base
        self._start_base = start_base
        # Until a lazy base exists, the base runner answers attribute look-ups
        # (environ, logger) that the execution would answer.
        self._inner: Any = _innermost(base) if base is not None else runner.base
        original = (
            getattr(self._inner, "output_dir", None) if base is not None else None
        )
        self._base_dir: Path | None = Path(original) if original is not None else None
        self._redirectable = base is None or original is not None
        self._recorders = _recording_layers(base) if base is not None else []
        self._replacements: list[tuple[str, str]] = []
        self._inputs: list[RegisteredInput] = []
        self._params: dict[str, Any] | None = None
        self._outputs: list[tuple[str, bool]] = []
        self._outside: list[str] = []  # absolute output names, as returned
        self._escaping: list[str] = []  # names leaving the folder with ".."
        self._input_digests: list[str] = []  # in the key, in input order
        self._plan: _Plan | None = None

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
        self._inner = _innermost(base)
        original = getattr(self._inner, "output_dir", None)
        self._base_dir = Path(original) if original is not None else None
        self._redirectable = original is not None
        if self._params is not None:
            base.params(self._params)
        for registered in self._inputs:
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
                f"{self._tool}: input_file({host_file!s}) called after "
                "output_file() or run(); the cache key is already settled"
            )
        path = Path(os.path.abspath(os.fspath(host_file)))
        if self.mode is not CacheMode.BYPASS:
            must_exist = path.parent if resolve_parent and not mutable else path
            if not must_exist.exists():
                what = "input folder" if must_exist != path else "input file"
                raise FileNotFoundError(f"{self._tool}: {what} not found: {must_exist}")
        if self._base is None and not mutable:
            local = str(Path(host_file).absolute())  # what LocalRunner returns
        else:
            local = self.base.input_file(
                host_file, resolve_parent=resolve_parent, mutable=mutable
            )
        self._inputs.append(RegisteredInput(path, resolve_parent, mutable, local))
        return local

    def output_file(self, local_file: str, *, optional: bool = False) -> OutputPathType:
        """Return where an output will be: inside the cache entry.

        A name outside the output folder is never redirected: the caller gets
        exactly the base runner's answer (docs/design/transparency.md).
        """
        kind, relative = _classify_output(local_file, self._tool)
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
        self._outputs.append((relative, optional))
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
        kind, relative = _classify_output(name, self._tool)
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
        if self._runner.warn_once(f"escaping:{self._tool}"):
            _log.warning(
                "%s: output %s leaves the output folder; the tool runs uncached, "
                "in the base runner's own folder, as it would without the cache",
                self._tool,
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
        call = _Call(cargs, handle_stdout, handle_stderr, time.perf_counter())
        plan = self._settle()
        if plan.where == "base":
            self._run_uncached(plan, call)
            return
        if self._escaping:
            self._run_escaping(plan, call)
            return
        fingerprint, parts = self._fingerprint(cargs, plan)
        if plan.manifest is not None and not plan.replace:
            stored = plan.manifest
            stale = stored.fingerprint != fingerprint
            outside = self._outside_problem(stored)
            if outside and plan.where == "cache":
                # The tool must write (or not write) its outside outputs again.
                plan.replace, plan.kind, plan.reason = True, "refresh", outside
                self._run_and_store(plan, call, fingerprint, parts)
                return
            if stale and plan.where == "tier":
                # A read-only tier is only served when the main cache cannot
                # take a copy, so there is nowhere to store a rerun either.
                _log.warning(
                    "%s: the read-only cache entry %s was made by another command "
                    "line or executable (%s); serving it as it is",
                    self._tool,
                    plan.key[:12],
                    describe_fingerprint_change(stored.fingerprint_parts, parts),
                )
                stale = False
            if self._runner.policy.check_command and stale:
                plan.replace, plan.kind = True, "refresh"
                plan.reason = describe_fingerprint_change(
                    stored.fingerprint_parts, parts
                )
            elif self._serve(plan, stored, call):
                return
            else:
                plan.reason = "entry removed while it was being served"
        self._run_and_store(plan, call, fingerprint, parts)

    # Settling the key --------------------------------------------------------

    def _settle(self) -> _Plan:
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan

    def _make_plan(self) -> _Plan:
        runner = self._runner
        if self.mode is CacheMode.BYPASS:
            return _Plan("base", kind="bypass", reason="bypassed")
        if not self._redirectable:
            _log.warning(
                "%s: the base execution (%s) has no output_dir to redirect; "
                "running uncached",
                self._tool,
                type(self._inner).__name__,
            )
            return _Plan(
                "base", kind="bypass", reason="base runner cannot be redirected"
            )
        try:
            payload, signatures = self._payload()
        except (ParamEncodingError, UnkeyableInputError) as exc:
            # Transparency: a call whose key cannot be built losslessly still
            # runs, exactly as the base runner would, just without the cache.
            if runner.policy.unkeyable_params == "error":
                raise
            if runner.warn_once(f"unkeyable:{self._tool}"):
                _log.warning(
                    "%s: not cached (runs as the base runner would): %s",
                    self._tool,
                    exc,
                )
            return _Plan("base", kind="bypass", reason=f"not keyable: {exc}")
        key = payload.key()
        store = runner.store
        plan = _Plan(
            "cache",
            key=key,
            payload=payload,
            entry=store.entry_dir(key),
            signatures=signatures,
        )
        if self.mode is CacheMode.REFRESH:
            plan.replace, plan.kind, plan.reason = (
                True,
                "refresh",
                "refresh() requested",
            )
        else:
            found = (
                store.lookup(key, **runner.verify_args())
                if runner.writable
                else (store.lookup(key, quarantine=False, **runner.verify_args()))
            )
            if found.untrusted:
                # Not ours to replace or delete: the result stays with the
                # base runner (trust.py warned once, naming the culprit).
                return _Plan(
                    "base", key=key, payload=payload, kind="miss", reason=found.reason
                )
            if found.manifest is not None:
                max_age = runner.policy.max_age_s
                if (
                    max_age is not None
                    and time.time() - found.manifest.created > max_age
                ):
                    plan.replace, plan.kind = True, "refresh"
                    plan.reason = f"entry older than max_age ({max_age:.0f}s)"
                else:
                    plan.manifest = found.manifest
                    return plan
            else:
                tier = runner.find_in_tiers(key)
                if tier is not None:
                    tier_store, manifest = tier
                    if runner.writable and runner.import_from_tier(tier_store, key):
                        plan.manifest = store.lookup(
                            key, **runner.verify_args()
                        ).manifest
                        if plan.manifest is not None:
                            return plan
                    plan.where, plan.entry, plan.manifest = (
                        "tier",
                        tier_store.entry_dir(key),
                        manifest,
                    )
                    return plan
                fetched = runner.fetch_remote(key)
                if fetched is not None:
                    plan.remote = fetched.outcome
                    if fetched.manifest is not None:
                        plan.manifest = fetched.manifest
                        return plan
                plan.reason = found.reason if found.damaged else self._explain(payload)
        if not runner.writable:
            if runner.policy.read_only_miss == "error":
                raise CacheReadOnlyError(
                    f"{self._tool}: cache miss, and the cache directory "
                    f"{store.root} is read-only (CachePolicy(read_only_miss='error'))"
                )
            _log.warning(
                "%s: cache miss and %s is read-only; running uncached",
                self._tool,
                store.root,
            )
            return _Plan(
                "base", key=key, payload=payload, kind="miss", reason="read-only cache"
            )
        return plan

    def _payload(self) -> tuple[KeyPayload, tuple[str, ...]]:
        runner = self._runner
        policy = runner.policy
        hasher = policy.hasher
        exclude = runner.hash_exclusions()
        digests: list[str] = []
        signatures: list[str] = []

        def digest_of(path: Path) -> str:
            if isinstance(hasher, ContentHasher):
                found = hasher.digest(path, memo=runner.memo, exclude=exclude)
                signatures.append(found.signature)
                return found.value
            signatures.append(stat_signature(path, exclude))
            return hasher.hash_path(path)

        for registered in self._inputs:
            try:
                digests.append(digest_of(registered.hashed_path))
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{self._tool}: input not found: {registered.hashed_path}"
                ) from None
        self._input_digests = list(digests)
        container_tag = getattr(self._inner, "container_tag", None)
        image = policy.image_digest(container_tag) if container_tag else None
        payload = build_payload(
            metadata=self.metadata,
            image=image,
            env=policy.env_for_key(),
            params=self._params,
            inputs=self._inputs,
            digests=digests,
            extra=policy.extra,
            path_params=policy.path_params,
            hash_path=digest_of,
        )
        return payload, tuple(signatures)

    def _explain(self, payload: KeyPayload) -> str:
        """Name the nearest earlier entry of this tool and what differs from it."""
        found = nearest_entry(
            self._runner.store,
            self._tool,
            payload.to_json(),
            limit=_EXPLAIN_CANDIDATES,
        )
        if found is None:
            return "no earlier entry of this tool"
        key, differences = found
        return f"nearest entry {key[:12]}: " + "; ".join(
            differences or ["identical key"]
        )

    def _fingerprint(self, cargs: list[str], plan: _Plan) -> tuple[str, dict[str, str]]:
        replacements = [
            (item.local, f"<input:{i}>") for i, item in enumerate(self._inputs)
        ]
        if plan.entry is not None:
            replacements.append((str(plan.entry), "<entry>"))
        executable = None
        if cargs and not hasattr(self._inner, "container_tag"):
            environ = getattr(self._inner, "environ", None) or {}
            executable = self._runner.executable_digest(
                cargs[0], environ.get("PATH", os.environ.get("PATH"))
            )
        return command_fingerprint(
            cargs, replacements=replacements, executable=executable
        )

    # Serving -----------------------------------------------------------------

    def _default_handler(self, stream: str) -> LineHandler | None:
        logger = getattr(self._inner, "logger", None)
        if isinstance(logger, logging.Logger):
            child = logger.getChild(stream)
            if child.isEnabledFor(logging.DEBUG):
                return child.debug
        return None

    def _serve(
        self, plan: _Plan, manifest: Manifest, call: _Call, reason: str = ""
    ) -> bool:
        """Serve a verified entry; False if it vanished before it could be used.

        The use is recorded first: `gc` keeps recently used entries, so once
        touched the entry stays while its outputs are read.
        """
        assert plan.entry is not None
        if plan.where == "cache" and not self._runner.store.touch(plan.key):
            return False
        replays: list[tuple[IO[str], LineHandler]] = []
        for name, lines, handler, stream in (
            (
                CacheStore.STDOUT_LOG,
                manifest.stdout_lines,
                call.handle_stdout,
                "stdout",
            ),
            (
                CacheStore.STDERR_LOG,
                manifest.stderr_lines,
                call.handle_stderr,
                "stderr",
            ),
        ):
            target = handler or self._default_handler(stream)
            if lines and target is not None:
                try:
                    replays.append((open_log(plan.entry / name), target))
                except OSError:  # removed by a concurrent gc: run the tool
                    for handle, _ in replays:
                        handle.close()
                    return False
        # Both logs are open before any line is handed out: an entry removed
        # now is still read in full, and nothing is delivered twice.
        for handle, target in replays:
            replay(handle, target)
        for layer in self._recorders:
            layer.graph_runner.record_execution(
                layer.metadata, layer.input_files, layer.output_files
            )
        self._drop_base_dir()
        self._runner.emit(
            CacheEvent(
                kind="hit",
                tool=self._tool,
                key=plan.key,
                duration_s=time.perf_counter() - call.started,
                saved_s=manifest.duration_s,
                bytes_served=manifest.total_size,
                reason=reason,
                remote=plan.remote,
            )
        )
        return True

    def _drop_base_dir(self) -> None:
        """Remove the folder the base runner made eagerly, if the tool never used it.

        NiWrap's `metadata.name` is often a sentence with "/" in it, and
        LocalRunner's folder `<data_dir>/<uid>_<n>_<name>` is then nested:
        every empty level up to the data folder goes, not just the last.
        """
        if self._base is None or self._base_dir is None:
            return
        folder = Path(os.path.abspath(self._base_dir))
        data_dir = self._runner.base_data_dir()
        stop = Path(os.path.abspath(data_dir)) if data_dir else folder.parent
        while folder != stop and folder.is_relative_to(stop):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def _run_uncached(self, plan: _Plan, call: _Call) -> None:
        ok = False
        try:
            self.base.run(
                self._real_cargs(call.cargs),
                handle_stdout=call.handle_stdout,
                handle_stderr=call.handle_stderr,
            )
            ok = True
        finally:
            self._emit_run(plan, call, ok=ok)

    def _run_escaping(self, plan: _Plan, call: _Call) -> None:
        """Run a call with an output that leaves its folder, as the base would."""
        plan.kind, plan.reason = (
            "bypass",
            f"output {self._escaping[0]} leaves its folder",
        )
        self._run_in_base_folder(plan, call)

    def _run_in_base_folder(self, plan: _Plan, call: _Call) -> None:
        """Run uncached in the base runner's own folder, after paths were handed out.

        Used when the output folder cannot be redirected for this call (an
        output name like `../x` lands where the base runner said only if the
        tool runs there; or the cache cannot stage a run). Paths inside the
        entry were handed out already: the folder's files are moved there
        afterwards, marked uncommitted (never served). The base folder itself
        stays, since `<folder>/../x` only resolves while it exists.
        """
        self._run_uncached(plan, call)
        if not self._outputs or self._base_dir is None:
            return
        store = self._runner.store
        try:
            if store.is_hit(plan.key):
                return  # the entry paths handed out hold a committed result
            store.drop_uncommitted(plan.key)
            try:
                target, staged = store.stage(plan.key), True
            except OSError:  # no usable staging folder: straight into place
                target, staged = store.entry_dir(plan.key), False
                target.mkdir(parents=True)
            for item in os.scandir(self._base_dir):
                shutil.move(item.path, target / item.name)
            if staged:
                store.place_uncommitted(target, plan.key, plan.reason)
            else:
                (target / store.UNCOMMITTED).write_text(plan.reason + "\n")
        except OSError as exc:
            _log.warning(
                "%s: cannot move outputs from %s to %s: %s",
                self._tool,
                self._base_dir,
                plan.entry,
                exc,
            )

    # Running and storing -------------------------------------------------------

    def _run_and_store(
        self, plan: _Plan, call: _Call, fingerprint: str, parts: dict[str, str]
    ) -> None:
        runner, store = self._runner, self._runner.store
        key = plan.key

        def twin_done() -> bool:
            return not plan.replace and store.is_hit(key)

        for attempt in range(_LEASE_ATTEMPTS):
            with leases.acquire(
                store.root / store.LOCKS_DIR,
                key,
                lease_seconds=runner.policy.lease_seconds,
                timeout=runner.policy.lock_timeout_s,
                done=twin_done,
            ) as held:
                # A twin may have committed while we waited, or between our
                # lookup and taking the lease.
                twin = held is None and twin_done()
                if twin or (held is not None and not plan.replace):
                    found = store.lookup(key, **runner.verify_args())
                    if (
                        found.manifest is not None
                        and (held is None or found.manifest.fingerprint == fingerprint)
                        and not self._outside_problem(found.manifest)
                        and self._serve(plan, found.manifest, call, reason=_TWIN)
                    ):
                        return
                # Without the lease only after a timeout: a twin's entry that
                # vanished (a concurrent gc) means waiting for the lease again,
                # since gc sweeps staging folders no live lease protects.
                if held is not None or not twin or attempt == _LEASE_ATTEMPTS - 1:
                    self._execute(plan, call, fingerprint, parts)
                    return

    def _execute(
        self, plan: _Plan, call: _Call, fingerprint: str, parts: dict[str, str]
    ) -> None:
        runner, store = self._runner, self._runner.store
        key = plan.key
        try:
            store.drop_uncommitted(key)
            staging = store.stage(key)
        except OSError as exc:
            # A full disk or an unsafe staging folder: the call still runs,
            # as the base runner would, just without the cache.
            if runner.warn_once(f"stage:{self._tool}"):
                _log.warning(
                    "%s: cannot stage a run in %s (%s); running uncached",
                    self._tool,
                    store.root,
                    exc,
                )
            plan.kind, plan.reason = "bypass", f"cannot stage: {exc}"
            self._run_in_base_folder(plan, call)
            return
        base = self.base
        self._inner.output_dir = staging
        self._drop_base_dir()
        out_log = LineLog(staging / store.STDOUT_LOG)
        err_log = LineLog(staging / store.STDERR_LOG)
        user_out = call.handle_stdout or self._default_handler("stdout")
        user_err = call.handle_stderr or self._default_handler("stderr")
        tees = (_Tee(out_log, user_out), _Tee(err_log, user_err))
        real_cargs = self._real_cargs(call.cargs)
        tool_started = time.perf_counter()
        try:
            base.run(real_cargs, handle_stdout=tees[0], handle_stderr=tees[1])
        except BaseException as exc:
            # Closing never raises: on a full disk the tool's (or the OS's)
            # error is the one the caller must see.
            out_log.close()
            err_log.close()
            self._keep_failed(key, staging, exc, (out_log, err_log))
            self._emit_run(plan, call, ok=False)
            raise
        duration = time.perf_counter() - tool_started
        out_log.close()
        err_log.close()
        self._drop_runner_script(staging, real_cargs)
        problem = (
            _log_problem(out_log, err_log)
            or self._commit_problem(staging)
            or self._changed_inputs(plan)
        )
        if problem:
            self._place_uncommitted(key, staging, problem)
            self._emit_run(plan, call, ok=True)
            _raise_handler_error(*tees)
            return
        try:
            manifest = self._manifest(
                plan,
                staging=staging,
                fingerprint=fingerprint,
                parts=parts,
                duration=duration,
                logs=(out_log, err_log),
            )
            (staging / store.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
            seal_entry(staging, read_only=runner.policy.read_only_outputs)
            store.commit(
                staging, key, replace=plan.replace, trust=runner.policy.trust_setting
            )
        except OSError as exc:
            # The tool succeeded and only storing failed (a full disk): the
            # caller still gets its files where they were promised.
            self._place_uncommitted(key, staging, f"cannot store the result: {exc}")
            self._emit_run(plan, call, ok=True)
            _raise_handler_error(*tees)
            return
        try:
            store.record_tool(self._tool, key)
        except OSError as exc:  # only explanations of later misses need it
            _log.debug("cannot index %s under %s: %s", key[:12], self._tool, exc)
        record_commit(store.root, key, store.entry_dir(key), manifest)  # never raises
        plan.remote = runner.upload_remote(key, plan.remote, replace=plan.replace)
        self._emit_run(plan, call, ok=True)
        runner.after_commit(key)
        _raise_handler_error(*tees)

    def _manifest(
        self,
        plan: _Plan,
        *,
        staging: Path,
        fingerprint: str,
        parts: dict[str, str],
        duration: float,
        logs: tuple[LineLog, LineLog],
    ) -> Manifest:
        runner, store = self._runner, self._runner.store
        assert plan.payload is not None
        now = time.time()
        absent = sorted(
            {
                relative
                for relative, _optional in self._outputs
                if relative != "." and not os.path.lexists(staging / relative)
            }
        )
        if absent:
            _log.info(
                "%s: declared outputs not written (stored as absent): %s",
                self._tool,
                _shorten(absent),
            )
        out_log, err_log = logs
        return Manifest(
            key=plan.key,
            tool=self._tool,
            payload=plan.payload.to_json(),
            outputs=scan_outputs(
                staging, skip=store.RESERVED, hash_file=runner.policy_hasher().hash_file
            ),
            fingerprint=fingerprint,
            fingerprint_parts=parts,
            duration_s=duration,
            exit_status=0,
            created=now,
            last_used=now,
            stdout_lines=out_log.lines,
            stderr_lines=err_log.lines,
            stdout_size=out_log.path.stat().st_size,
            stderr_size=err_log.path.stat().st_size,
            version=runner.version,
            absent=tuple(absent),
            outside=tuple(self._outside_state(path) for path in self._outside_paths()),
        )

    def _place_uncommitted(self, key: str, staging: Path, problem: str) -> None:
        # One warning per tool: FSL tools that exit 0 after an error would
        # otherwise repeat the same sentence for every subject; the rest go to
        # INFO, still there for whoever debugs one call.
        first = self._runner.warn_once(f"uncommitted:{self._tool}")
        _log.log(
            logging.WARNING if first else logging.INFO,
            "%s: %s; the result is not cached and will run again",
            self._tool,
            problem,
        )
        self._runner.store.place_uncommitted(staging, key, problem)

    def _keep_failed(
        self,
        key: str,
        staging: Path,
        exc: BaseException,
        logs: tuple[LineLog, LineLog],
    ) -> None:
        """Keep a failed run's files for inspection, unless the disk is full.

        Never raises: the tool's error is what the caller must see.
        """
        limit = self._runner.policy.keep_failed
        full = _out_of_space(exc, logs, staging)
        try:
            kept = self._runner.store.keep_failed(
                staging, key, f"{type(exc).__name__}: {exc}", limit=0 if full else limit
            )
        except OSError as error:
            _log.debug("cannot keep the failed run %s: %s", staging, error)
            kept = None
            with contextlib.suppress(OSError):
                self._runner.store.discard(staging)
        if full and limit > 0:
            _log.warning(
                "%s failed and the cache's disk is full; its partial files were "
                "removed to free the space",
                self._tool,
            )
        if kept is None:
            return
        note = f"styxcache: the failed run's files are kept in {kept}"
        if hasattr(exc, "add_note"):
            # Once, with the error itself; a log record would repeat it.
            exc.add_note(note)
            _log.debug("%s failed; %s", self._tool, note)
        else:
            _log.error("%s failed; %s", self._tool, note.removeprefix("styxcache: "))

    def _drop_runner_script(self, staging: Path, cargs: list[str]) -> None:
        """Remove the `run.sh` a container runner wrote beside the outputs.

        styxdocker, styxpodman and styxsingularity write the command line
        into `<output folder>/run.sh` before starting the container. It is the
        runner's file, not the tool's: it is not stored unless the tool
        declared an output of that name or wrote something else there.
        """
        if any(relative == _RUN_SCRIPT for relative, _ in self._outputs):
            return
        script = staging / _RUN_SCRIPT
        make = getattr(self._inner, "_make_run_script_content", None)
        try:
            if not stat.S_ISREG(os.lstat(script).st_mode):
                return
            expected = (
                make(cargs) if callable(make) else f"#!/bin/bash\n{shlex.join(cargs)}\n"
            )
            if script.read_text(encoding="utf-8") == expected:
                script.unlink()
        except (OSError, UnicodeDecodeError, TypeError):
            return

    def _real_cargs(self, cargs: list[str]) -> list[str]:
        """Swap provisional input paths for the ones the base execution returned."""
        if not self._replacements:
            return cargs
        return replace_in_args(cargs, self._replacements)

    def _emit_run(self, plan: _Plan, call: _Call, *, ok: bool) -> None:
        self._runner.emit(
            CacheEvent(
                kind=plan.kind,
                tool=self._tool,
                key=plan.key,
                duration_s=time.perf_counter() - call.started,
                reason=plan.reason,
                ok=ok,
                remote=plan.remote,
            )
        )

    def _commit_problem(self, staging: Path) -> str:
        """Why a run that exited 0 must not be committed, or "".

        Committed when it wrote at least one file, or declared no output
        inside its folder (stdout-only tools): FSL's `bet` declares 16
        outputs and writes the ones its flags ask for. An empty result where
        outputs were declared is not served (FSL tools exit 0 after some
        errors). `required_outputs="all"` also requires every non-optional
        declared output.
        """
        inside = [(rel, optional) for rel, optional in self._outputs if rel != "."]
        if not inside:
            return ""
        if self._runner.policy.required_outputs == "all":
            missing = sorted(
                {
                    rel
                    for rel, optional in inside
                    if not optional and not os.path.lexists(staging / rel)
                }
            )
            if missing:
                return (
                    "the tool exited 0 but required outputs are missing: "
                    + ", ".join(missing)
                )
        if _wrote_any(staging):
            return ""
        return "the tool exited 0 but wrote none of its declared outputs: " + (
            _shorten(sorted({rel for rel, _ in inside}))
        )

    def _digest_value(self, path: Path) -> str:
        runner = self._runner
        hasher = runner.policy.hasher
        if isinstance(hasher, ContentHasher):
            return hasher.digest(
                path, memo=runner.memo, exclude=runner.hash_exclusions()
            ).value
        return hasher.hash_path(path)

    def _changed_inputs(self, plan: _Plan) -> str:
        """Name an input whose content changed while the tool ran, or "".

        The stat record is only the quick check: a `touch`, or an rsync that
        rewrites identical bytes, changes it without changing the content,
        and such a run is kept.
        """
        exclude = self._runner.hash_exclusions()
        for index, (registered, before) in enumerate(
            zip(self._inputs, plan.signatures, strict=False)
        ):
            path = registered.hashed_path
            try:
                after = stat_signature(path, exclude)
            except OSError:
                after = ""
            if after == before:
                continue
            try:
                same = (
                    index < len(self._input_digests)
                    and self._digest_value(path) == self._input_digests[index]
                )
            except (OSError, ValueError):
                same = False
            if not same:
                return f"input {path} changed while the tool ran"
        return ""

    def _outside_paths(self) -> list[str]:
        return sorted(set(self._outside))

    def _outside_state(self, path: str) -> OutsideRecord:
        """What is at an outside output's path now (read only, never changed)."""
        try:
            st = os.lstat(path)
        except OSError:
            return OutsideRecord(path, present=False)
        if stat.S_ISLNK(st.st_mode):
            return OutsideRecord(path, True, st.st_size, "link:" + os.readlink(path))
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            # A FIFO or device is never read: it could block forever.
            return OutsideRecord(path, True, 0, f"mode:{stat.S_IFMT(st.st_mode):o}")
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        try:
            return OutsideRecord(path, True, size, self._digest_value(Path(path)))
        except OSError as exc:
            return OutsideRecord(path, True, size, f"unreadable:{exc.errno}")
        except ValueError:  # a folder too big to digest (hashing.py's bound)
            return OutsideRecord(path, True, size, f"mtime:{st.st_mtime_ns}")

    def _outside_problem(self, manifest: Manifest) -> str:
        """Why an entry's outside outputs do not match this call, or ""."""
        declared = self._outside_paths()
        recorded = {record.path: record for record in manifest.outside}
        if declared != sorted(recorded):
            return "outputs outside the cache differ from the stored run's"
        for path in declared:
            if self._outside_state(path) != recorded[path]:
                return f"output {path} outside the cache changed since the stored run"
        return ""


class _Tee:
    """Writes each line to the entry's log, then hands it to the caller's handler.

    A handler that raises must not cut the log short: the base runner may stop
    reading the stream (LocalRunner does, silently), and the entry would then
    replay truncated output forever. The handler's first error is kept, the
    handler gets no more lines, and the error is raised once the run is stored.
    """

    def __init__(self, log: LineLog, handler: LineHandler | None) -> None:
        self.log = log
        self.handler = handler
        self.error: Exception | None = None

    def __call__(self, line: str) -> None:
        self.log.write(line)
        if self.handler is None or self.error is not None:
            return
        try:
            self.handler(line)
        except Exception as exc:  # raised once the run is stored
            self.error = exc


def _raise_handler_error(*tees: _Tee) -> None:
    for tee in tees:
        if tee.error is not None:
            raise tee.error


_RUN_SCRIPT = "run.sh"
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _classify_output(local_file: str, tool: str) -> tuple[str, str]:
    """Say where an output name points.

    Returns:
        ("inside", relative POSIX path), ("absolute", name), or ("parent",
        name) for a name that leaves the folder with "..".

    Raises:
        ValueError: For a name reserved by styxcache inside the entry.
    """
    text = os.fspath(local_file)
    if os.path.isabs(text):
        return "absolute", text
    normal = os.path.normpath(text)  # "" and "a/.." are the folder itself
    if normal == ".." or normal.startswith(".." + os.sep) or normal.startswith("../"):
        return "parent", text
    relative = normal.replace(os.sep, "/")
    if relative.split("/", 1)[0] in CacheStore.RESERVED:
        raise ValueError(f"{tool}: output file name {text!r} is reserved by styxcache")
    return "inside", relative


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _wrote_any(staging: Path) -> bool:
    """Whether the run left any file or symlink of its own in its folder."""
    for folder, dirs, files in os.walk(staging):
        top = folder == os.fspath(staging)
        if any(not (top and name in CacheStore.RESERVED) for name in files):
            return True
        if any(os.path.islink(os.path.join(folder, name)) for name in dirs):
            return True
    return False


def _log_problem(*logs: LineLog) -> str:
    for log in logs:
        if log.error is not None:
            return f"its output log could not be written ({log.error})"
    return ""


def _tree_size(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def _out_of_space(
    exc: BaseException, logs: tuple[LineLog, LineLog], staging: Path
) -> bool:
    """Whether a failed run most likely failed on a full disk.

    True when the error (or one it came from) is ENOSPC/EDQUOT, when our own
    logs hit it, or when the disk has less room left than the failed run's
    files take: keeping them would only make the next run fail too.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return True
        error = error.__cause__ or error.__context__
    if any(log.error is not None and log.error.errno in _NO_SPACE for log in logs):
        return True
    try:
        info = os.statvfs(staging)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < _tree_size(staging)


def copy_entry(source: Path, target: Path) -> None:
    """Copy an entry's tree, hard-linking files where the filesystem allows.

    Args:
        source: The entry folder to copy.
        target: A folder that does not exist yet.
    """

    def link_or_copy(src: str, dst: str) -> str:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    try:
        shutil.copytree(source, target, symlinks=True, copy_function=link_or_copy)
    except BaseException:
        remove_tree(target)
        raise
