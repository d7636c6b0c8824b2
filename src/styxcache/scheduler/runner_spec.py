"""How a worker builds its own cached runner from a schedule entry's settings.

A `CachingRunner` holds open SQLite connections, event files and a lease
renewal thread, so it cannot travel to a Dask worker or a NATS worker. What
travels is a `RunnerSpec` (plain strings and numbers, picklable and
JSON-able); each worker process builds the runner from it once and reuses it
for every run with the same settings.

Example entry::

    runner:
      cache_dir: /shared/styxcache
      base: local
      policy: {lease_seconds: 60, env_allowlist: [OMP_NUM_THREADS]}
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from styxcache.errors import RunnerSpecError
from styxcache.scheduler.config_errors import unknown_keys

__all__ = [
    "POLICY_FIELDS",
    "RUNNER_KEYS",
    "RunnerSpec",
    "RunnerSpecError",
    "runner_from_spec",
    "using_runner",
]

_log = logging.getLogger("styxcache.scheduler.runner_spec")

RUNNER_KEYS = frozenset(
    {
        "cache_dir",
        "base",
        "data_dir",
        "read_only_caches",
        "policy",
        "remote",
        "remote_write",
    }
)
"""Keys an entry's `runner:` mapping may carry."""

POLICY_FIELDS = frozenset(
    {
        "env_allowlist",
        "bypass_tools",
        "extra",
        "path_params",
        "verify",
        "read_only_outputs",
        "lease_seconds",
        "lock_timeout",
        "max_age",
        "max_size",
        "memo_dir",
        "memo",
        "read_only_miss",
        "keep_failed",
        "check_command",
    }
)
"""`CachePolicy` fields settable from a file (the callables are code-only)."""

_BASES = ("local",)


def _frozen(value: Any) -> Any:
    # Lists from YAML become tuples so the spec is hashable (the per-process
    # runner memo is keyed on it).
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    return value


def _thawed(name: str, value: Any) -> Any:
    if name == "extra" and isinstance(value, tuple):
        return dict(value)
    return value


@dataclasses.dataclass(frozen=True)
class RunnerSpec:
    """The settings a worker builds `CachingRunner(LocalRunner(...))` from.

    Attributes:
        cache_dir: The cache directory, absolute (shared by every node).
        base: The base runner kind; only `local` for now.
        data_dir: The base runner's scratch folder; None picks a private
            temporary folder per worker process.
        read_only_caches: Extra cache directories searched, never written.
        policy: `CachePolicy` fields as sorted `(name, value)` pairs.
        remote: Remote cache URL (`s3://bucket/prefix`); None lets each
            worker read `STYXCACHE_REMOTE`, `""` switches it off.
        remote_write: Upload to the remote; None reads
            `STYXCACHE_REMOTE_WRITE` on the worker (default true).
    """

    cache_dir: str
    base: str = "local"
    data_dir: str | None = None
    read_only_caches: tuple[str, ...] = ()
    policy: tuple[tuple[str, Any], ...] = ()
    remote: str | None = None
    remote_write: bool | None = None

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], base_dir: Path | None = None
    ) -> RunnerSpec:
        """Validate a `runner:` mapping (from YAML, JSON or code).

        Args:
            raw: The mapping.
            base_dir: Folder relative paths are resolved against (the YAML
                file's folder); None: the current folder, now (workers may
                start elsewhere).

        Returns:
            The spec.

        Raises:
            RunnerSpecError: Naming the offending field.
        """
        if not isinstance(raw, Mapping):
            raise RunnerSpecError(
                f"must be a mapping with a cache_dir, got {type(raw).__name__}",
                "runner",
            )
        unknown = unknown_keys(raw, RUNNER_KEYS, "runner")
        if unknown:
            raise RunnerSpecError(*unknown)

        def path(key: str, value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise RunnerSpecError(
                    f"must be a folder path, got {value!r}", f"runner.{key}"
                )
            folder = Path(value).expanduser()
            if not folder.is_absolute():
                folder = (base_dir if base_dir is not None else Path.cwd()) / folder
            return str(folder)

        if "cache_dir" not in raw:
            raise RunnerSpecError("is required", "runner.cache_dir")
        cache_dir = path("cache_dir", raw["cache_dir"])
        base = raw.get("base", "local")
        if base not in _BASES:
            raise RunnerSpecError(
                f"must be one of {', '.join(_BASES)}; got {base!r}", "runner.base"
            )
        data_dir = raw.get("data_dir")
        if data_dir is not None:
            data_dir = path("data_dir", data_dir)
        tiers = raw.get("read_only_caches", [])
        if isinstance(tiers, str) or not isinstance(tiers, (list, tuple)):
            raise RunnerSpecError(
                f"must be a list of folders, got {tiers!r}", "runner.read_only_caches"
            )
        policy_raw = raw.get("policy") or {}
        if not isinstance(policy_raw, Mapping):
            raise RunnerSpecError("must be a mapping", "runner.policy")
        unknown = unknown_keys(
            policy_raw, POLICY_FIELDS, "runner.policy", "policy field"
        )
        if unknown:
            raise RunnerSpecError(*unknown)
        remote, remote_write = _remote_settings(raw)
        spec = cls(
            cache_dir=cache_dir,
            base=str(base),
            data_dir=data_dir,
            read_only_caches=tuple(path("read_only_caches", t) for t in tiers),
            policy=tuple(sorted((k, _frozen(v)) for k, v in policy_raw.items())),
            remote=remote,
            remote_write=remote_write,
        )
        spec.make_policy()  # every knob is checked now, not on a worker
        return spec

    def make_policy(self) -> Any:
        """Build the `CachePolicy`.

        Returns:
            The policy.

        Raises:
            RunnerSpecError: If a field is rejected by `CachePolicy`.
        """
        from styxcache.policy import CachePolicy

        fields = {name: _thawed(name, value) for name, value in self.policy}
        try:
            return CachePolicy(**fields)
        except (TypeError, ValueError) as exc:
            text = str(exc)
            field = next(
                (f"runner.policy.{n}" for n in sorted(fields) if n in text),
                "runner.policy",
            )
            raise RunnerSpecError(text, field) from None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able mapping that `from_mapping` turns back into this."""
        return {
            "cache_dir": self.cache_dir,
            "base": self.base,
            "data_dir": self.data_dir,
            "read_only_caches": list(self.read_only_caches),
            "remote": self.remote,
            "remote_write": self.remote_write,
            "policy": {
                name: dict(value) if name == "extra" else _jsonable(value)
                for name, value in self.policy
            },
        }


def _remote_settings(raw: Mapping[str, Any]) -> tuple[str | None, bool | None]:
    """Check `runner.remote` (a URL) and `runner.remote_write` (a boolean)."""
    remote = raw.get("remote")
    if remote is not None:
        from styxcache.remote import RemoteConfigError, check_url

        if not isinstance(remote, str):
            raise RunnerSpecError(
                f"must be a URL like s3://bucket/prefix, got {remote!r}",
                "runner.remote",
            )
        if remote.strip():
            try:
                remote = check_url(remote, source="runner.remote")
            except RemoteConfigError as exc:
                raise RunnerSpecError(str(exc), "runner.remote") from None
    write = raw.get("remote_write")
    if write is not None and not isinstance(write, bool):
        raise RunnerSpecError(
            f"must be true or false, got {write!r}", "runner.remote_write"
        )
    return remote, write


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


_built: dict[RunnerSpec, Any] = {}
_built_lock = threading.Lock()
_global_lock = threading.Lock()


# Runs overlapping in one process (a thread pool) share one swap of the global
# runner: the runner before the first comes back after the last. Overlapping
# runs with *different* specs see the latest one; they should use
# `RunContext.runner` instead of the global runner.
@dataclasses.dataclass
class _Swap:
    depth: int = 0
    previous: Any = None


_swap = _Swap()


def runner_from_spec(spec: RunnerSpec) -> Any:
    """Return this process's `CachingRunner` for a spec, building it once.

    Reusing it keeps one event file and one memo connection per worker
    process instead of one per run.

    Args:
        spec: The settings.

    Returns:
        A `CachingRunner` wrapping a `LocalRunner`.
    """
    with _built_lock:
        runner = _built.get(spec)
        if runner is None:
            from styxdefs import LocalRunner

            from styxcache.runner import CachingRunner

            data_dir = spec.data_dir or tempfile.mkdtemp(prefix="styxcache-worker-")
            runner = CachingRunner(
                LocalRunner(data_dir=data_dir),
                spec.cache_dir,
                policy=spec.make_policy(),
                read_only_caches=spec.read_only_caches,
                remote=spec.remote,
                remote_write=spec.remote_write,
            )
            _built[spec] = runner
            _log.debug("built a cached runner for %s", spec.cache_dir)
        return runner


@contextlib.contextmanager
def using_runner(spec: RunnerSpec | None) -> Iterator[Any]:
    """Make the spec's runner the global Styx runner for the duration.

    NiWrap wrappers called without `runner=` use the global runner, so the
    target needs no styxcache code. The previous global runner comes back
    once the last overlapping run in this process ends.

    Args:
        spec: The settings; None leaves the global runner alone.

    Yields:
        The runner, or None without a spec.
    """
    if spec is None:
        yield None
        return
    from styxdefs import get_global_runner, set_global_runner

    runner = runner_from_spec(spec)
    with _global_lock:
        if _swap.depth == 0:
            _swap.previous = get_global_runner()
        _swap.depth += 1
        set_global_runner(runner)
    try:
        yield runner
    finally:
        with _global_lock:
            _swap.depth -= 1
            if _swap.depth == 0 and _swap.previous is not None:
                set_global_runner(_swap.previous)
                _swap.previous = None
