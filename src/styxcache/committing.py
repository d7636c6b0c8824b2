"""Running a missed call and committing its result.

The tool runs in a staging folder under the key's lease (one run for
concurrent identical calls); its captured output is teed to the entry's logs;
a run that succeeded is checked (it wrote its outputs, its inputs did not
change meanwhile), described by a manifest, sealed and renamed into place. A
run that must not be served is placed where its outputs were promised, marked
uncommitted; a failed run is kept for inspection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shlex
import stat
import time
from pathlib import Path

from styxcache import lease as leases
from styxcache.calls import Call, Host
from styxcache.catalog import record_commit
from styxcache.hashing import stat_signature
from styxcache.logs import LineLog, Tee, raise_handler_error
from styxcache.manifest import Manifest, OutputRecord, scan_outputs
from styxcache.planning import Plan
from styxcache.services import ExecutionServices
from styxcache.store import CacheStore
from styxcache.trust import seal_entry

__all__ = ["Commit", "shorten"]

_log = logging.getLogger("styxcache")

_TWIN = "computed by a concurrent identical execution"
_LEASE_ATTEMPTS = 3
_RUN_SCRIPT = "run.sh"
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class Commit:
    """One missed call: lease, stage, run, check, store (`run()` does it all).

    Args:
        host: The caching execution.
        services: The runner's services.
        plan: The call's plan (a miss or a replacement).
        call: The `run()` call.
        fingerprint: The run-time fingerprint and its parts.
    """

    def __init__(
        self,
        host: Host,
        services: ExecutionServices,
        plan: Plan,
        call: Call,
        fingerprint: tuple[str, dict[str, str]],
    ) -> None:
        self.host = host
        self.services = services
        self.store = services.store
        self.plan = plan
        self.call = call
        self.fingerprint, self.parts = fingerprint

    def _twin_done(self) -> bool:
        return not self.plan.replace and self.store.is_hit(self.plan.key)

    def run(self) -> None:
        """Run the call under its key's lease and commit the result."""
        policy, store, key = self.services.policy, self.store, self.plan.key
        for attempt in range(_LEASE_ATTEMPTS):
            with leases.acquire(
                store.root / store.LOCKS_DIR,
                key,
                lease_seconds=policy.lease_seconds,
                timeout=policy.lock_timeout_s,
                done=self._twin_done,
            ) as held:
                # A twin may have committed while we waited, or between our
                # lookup and taking the lease.
                twin = held is None and self._twin_done()
                # `is_hit` first: one stat spares a miss a second full lookup.
                if (
                    twin or (held is not None and not self.plan.replace)
                ) and self._serve_twin(check_fingerprint=held is not None):
                    return
                # Without the lease only after a timeout: a twin's entry that
                # vanished (a concurrent gc) means waiting for the lease again,
                # since gc sweeps staging folders no live lease protects.
                if held is not None or not twin or attempt == _LEASE_ATTEMPTS - 1:
                    self._execute()
                    return

    def _serve_twin(self, *, check_fingerprint: bool) -> bool:
        """Serve the entry a concurrent identical call committed, if any."""
        if not self.store.is_hit(self.plan.key):
            return False
        found = self.services.lookup(self.store, self.plan.key, quarantine=True)
        return (
            found.manifest is not None
            and (
                not check_fingerprint or found.manifest.fingerprint == self.fingerprint
            )
            and not self.host.outside_problem(found.manifest)
            and self.host.serve(self.plan, found.manifest, self.call, _TWIN)
        )

    def _stage(self) -> Path | None:
        """A fresh staging folder; None when the call ran uncached instead."""
        store, host = self.store, self.host
        try:
            store.drop_uncommitted(self.plan.key)
            return store.stage(self.plan.key)
        except OSError as exc:
            # A full disk or an unsafe staging folder: the call still runs,
            # as the base runner would, just without the cache.
            if self.services.warn_once(f"stage:{host.tool}"):
                _log.warning(
                    "%s: cannot stage a run in %s (%s); running uncached",
                    host.tool,
                    store.root,
                    exc,
                )
            plan = dataclasses.replace(
                self.plan, kind="bypass", reason=f"cannot stage: {exc}"
            )
            host.run_in_base_folder(plan, self.call)
            return None

    def _execute(self) -> None:
        staging = self._stage()
        if staging is None:
            return
        host, store = self.host, self.store
        base = host.base
        host.inner.output_dir = staging
        host.drop_base_dir()
        logs = (
            LineLog(staging / store.STDOUT_LOG),
            LineLog(staging / store.STDERR_LOG),
        )
        call = self.call
        tees = (
            Tee(logs[0], call.handle_stdout or host.default_handler("stdout")),
            Tee(logs[1], call.handle_stderr or host.default_handler("stderr")),
        )
        real_cargs = host.real_cargs(call.cargs)
        tool_started = time.perf_counter()
        try:
            base.run(real_cargs, handle_stdout=tees[0], handle_stderr=tees[1])
        except BaseException as exc:
            # Closing never raises: on a full disk the tool's (or the OS's)
            # error is the one the caller must see.
            for log in logs:
                log.close()
            self._keep_failed(staging, exc, logs)
            host.emit_run(self.plan, call, ok=False)
            raise
        duration = time.perf_counter() - tool_started
        for log in logs:
            log.close()
        self._drop_runner_script(staging, real_cargs)
        self._store(staging, duration, logs)
        raise_handler_error(*tees)

    def _store(
        self, staging: Path, duration: float, logs: tuple[LineLog, LineLog]
    ) -> None:
        """Commit a run that exited 0, or place it uncommitted; emit its event."""
        store, key, policy = self.store, self.plan.key, self.services.policy
        problem = _log_problem(*logs) or self._missing_required(staging)
        records: tuple[OutputRecord, ...] = ()
        if not problem:
            # Listed (and digested) once: whether the run wrote anything is
            # whether it has records.
            try:
                records = scan_outputs(
                    staging,
                    skip=CacheStore.RESERVED,
                    hash_file=self.services.hasher.hash_file,
                )
            except OSError as exc:
                problem = f"cannot store the result: {exc}"
            else:
                problem = self._nothing_written(records) or self._changed_inputs()
        if problem:
            self._place_uncommitted(staging, problem)
            self.host.emit_run(self.plan, self.call, ok=True)
            return
        try:
            manifest = self._manifest(staging, records, duration, logs)
            (staging / store.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
            seal_entry(staging, read_only=policy.read_only_outputs)
            # After sealing (a chmod changes it) and before the rename (which
            # keeps it): the record under which this manifest is remembered.
            written = os.stat(staging / store.MANIFEST)
            entry = store.commit(
                staging, key, replace=self.plan.replace, trust=policy.trust_setting
            )
        except OSError as exc:
            # The tool succeeded and only storing failed (a full disk): the
            # caller still gets its files where they were promised.
            self._place_uncommitted(staging, f"cannot store the result: {exc}")
            self.host.emit_run(self.plan, self.call, ok=True)
            return
        self._after_commit(entry, written, manifest)

    def _after_commit(
        self, entry: Path, written: os.stat_result, manifest: Manifest
    ) -> None:
        store, key, services = self.store, self.plan.key, self.services
        try:
            store.record_tool(self.host.tool, key)
        except OSError as exc:  # only explanations of later misses need it
            _log.debug("cannot index %s under %s: %s", key[:12], self.host.tool, exc)
        # A twin's entry that won the commit has another inode: not remembered.
        store.manifests.remember(entry / store.MANIFEST, written, manifest)
        record_commit(store.root, key, entry, manifest)  # never raises
        remote = services.upload_remote(
            key, self.plan.remote, replace=self.plan.replace
        )
        self.host.emit_run(
            dataclasses.replace(self.plan, remote=remote), self.call, ok=True
        )
        services.after_commit(key)

    def _manifest(
        self,
        staging: Path,
        records: tuple[OutputRecord, ...],
        duration: float,
        logs: tuple[LineLog, LineLog],
    ) -> Manifest:
        plan, host = self.plan, self.host
        assert plan.payload is not None
        now = time.time()
        absent = sorted(
            {
                relative
                for relative, _optional in host.outputs
                if relative != "." and not os.path.lexists(staging / relative)
            }
        )
        if absent:
            _log.info(
                "%s: declared outputs not written (stored as absent): %s",
                host.tool,
                shorten(absent),
            )
        out_log, err_log = logs
        return Manifest(
            key=plan.key,
            tool=host.tool,
            payload=plan.payload.to_json(),
            outputs=records,
            fingerprint=self.fingerprint,
            fingerprint_parts=self.parts,
            duration_s=duration,
            exit_status=0,
            created=now,
            last_used=now,
            stdout_lines=out_log.lines,
            stderr_lines=err_log.lines,
            stdout_size=out_log.path.stat().st_size,
            stderr_size=err_log.path.stat().st_size,
            version=self.services.version,
            absent=tuple(absent),
            outside=tuple(host.outside_state(p) for p in host.outside_paths()),
        )

    def _place_uncommitted(self, staging: Path, problem: str) -> None:
        # One warning per tool: FSL tools that exit 0 after an error would
        # otherwise repeat the same sentence for every subject; the rest go to
        # INFO, still there for whoever debugs one call.
        tool = self.host.tool
        first = self.services.warn_once(f"uncommitted:{tool}")
        _log.log(
            logging.WARNING if first else logging.INFO,
            "%s: %s; the result is not cached and will run again",
            tool,
            problem,
        )
        self.store.place_uncommitted(staging, self.plan.key, problem)

    def _keep_failed(
        self, staging: Path, exc: BaseException, logs: tuple[LineLog, LineLog]
    ) -> None:
        """Keep a failed run's files for inspection, unless the disk is full.

        Never raises: the tool's error is what the caller must see.
        """
        limit = self.services.policy.keep_failed
        full = _out_of_space(exc, logs, staging)
        try:
            kept = self.store.keep_failed(
                staging,
                self.plan.key,
                f"{type(exc).__name__}: {exc}",
                limit=0 if full else limit,
            )
        except OSError as error:
            _log.debug("cannot keep the failed run %s: %s", staging, error)
            kept = None
            with contextlib.suppress(OSError):
                self.store.discard(staging)
        tool = self.host.tool
        if full and limit > 0:
            _log.warning(
                "%s failed and the cache's disk is full; its partial files were "
                "removed to free the space",
                tool,
            )
        if kept is None:
            return
        note = f"styxcache: the failed run's files are kept in {kept}"
        if hasattr(exc, "add_note"):
            # Once, with the error itself; a log record would repeat it.
            exc.add_note(note)
            _log.debug("%s failed; %s", tool, note)
        else:
            _log.error("%s failed; %s", tool, note.removeprefix("styxcache: "))

    def _drop_runner_script(self, staging: Path, cargs: list[str]) -> None:
        """Remove the `run.sh` a container runner wrote beside the outputs.

        styxdocker, styxpodman and styxsingularity write the command line
        into `<output folder>/run.sh` before starting the container. It is the
        runner's file, not the tool's: it is not stored unless the tool
        declared an output of that name or wrote something else there.
        """
        if any(relative == _RUN_SCRIPT for relative, _ in self.host.outputs):
            return
        script = staging / _RUN_SCRIPT
        make = getattr(self.host.inner, "_make_run_script_content", None)
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

    def _missing_required(self, staging: Path) -> str:
        """Under `required_outputs="all"`, name the declared outputs not written.

        Otherwise (the default) a run is committed when it wrote at least one
        file, or declared no output inside its folder (see `_nothing_written`).
        """
        if self.services.policy.required_outputs != "all":
            return ""
        missing = sorted(
            {
                rel
                for rel, optional in self.host.outputs
                if rel != "." and not optional and not os.path.lexists(staging / rel)
            }
        )
        if not missing:
            return ""
        return "the tool exited 0 but required outputs are missing: " + ", ".join(
            missing
        )

    def _nothing_written(self, records: tuple[OutputRecord, ...]) -> str:
        """Why a run that exited 0 and wrote no file must not be committed, or "".

        Committed when it wrote at least one file, or declared no output
        inside its folder (stdout-only tools): FSL's `bet` declares 16
        outputs and writes the ones its flags ask for. An empty result where
        outputs were declared is not served (FSL tools exit 0 after some
        errors).
        """
        inside = sorted({rel for rel, _ in self.host.outputs if rel != "."})
        if records or not inside:
            return ""
        return "the tool exited 0 but wrote none of its declared outputs: " + (
            shorten(inside)
        )

    def _changed_inputs(self) -> str:
        """Name an input whose content changed while the tool ran, or "".

        The stat record is only the quick check: a `touch`, or an rsync that
        rewrites identical bytes, changes it without changing the content,
        and such a run is kept.
        """
        services, plan = self.services, self.plan
        for index, (registered, before) in enumerate(
            zip(self.host.inputs, plan.signatures, strict=False)
        ):
            path = registered.hashed_path
            try:
                after = stat_signature(path, services.exclusions)
            except OSError:
                after = ""
            if after == before:
                continue
            try:
                same = (
                    index < len(plan.digests)
                    and services.digest_value(path) == plan.digests[index]
                )
            except (OSError, ValueError):
                same = False
            if not same:
                return f"input {path} changed while the tool ran"
        return ""


def shorten(names: list[str], limit: int = 8) -> str:
    """Join names with commas, the first `limit` of them and a count of the rest.

    Args:
        names: The names.
        limit: How many to show.
    """
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


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
