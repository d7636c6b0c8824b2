"""Runs on a Dask cluster, behind the scheduler's `Executor` protocol.

Each run becomes one Dask task (`pure=False`, so two fires of the same
request are two tasks). The Dask future is bridged into a
`concurrent.futures.Future` by a done-callback; the Dask future is kept
referenced until then, because Dask cancels a task whose last future is
garbage-collected.

A worker that dies mid-task is Dask's business first: the Dask scheduler
reruns the task on another worker up to `distributed.scheduler.allowed-failures`
times. When Dask gives up (`KilledWorker`), or the cluster goes away, the
future fails with `RunLostError`, which the scheduler records as `interrupted`
and retries up to the entry's `retries`.

Trust: a Dask scheduler unpickles and runs whatever a client sends it, on
every worker. Its port is therefore the trust boundary: whoever can connect
to it runs code as the workers' user. Outside a single trusted host, use a
`tls://` address with client certificates (`DaskTLS`), so that only holders
of a certificate signed by your CA can connect at all.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from styxcache.scheduler.futures import DoneCallback, new_future
from styxcache.scheduler.runs import RunLostError

__all__ = ["DASK_KEYS", "DaskExecutor", "DaskTLS", "dask_address", "is_dask_client"]

_log = logging.getLogger("styxcache.scheduler.dask_executor")

T = TypeVar("T")
A = TypeVar("A")

# Exceptions meaning the cluster, not the target, failed (by class name, so
# this module imports without distributed installed).
_LOST = frozenset(
    {"KilledWorker", "CommClosedError", "CancelledError", "FutureCancelledError"}
)


DASK_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")
"""Keys of a schedule file's `dask:` section."""


@dataclasses.dataclass(frozen=True)
class DaskTLS:
    """TLS settings for `tls://` Dask schedulers (distributed's `Security`).

    Attributes:
        ca_file: CA bundle the scheduler's certificate is checked against.
        cert_file: This client's certificate (the scheduler should require
            one: `dask scheduler --tls-ca-file ... --tls-cert ... --tls-key ...`).
        key_file: The certificate's private key.
    """

    ca_file: str
    cert_file: str
    key_file: str

    @classmethod
    def from_mapping(cls, raw: Any, base_dir: Path | None = None) -> DaskTLS:
        """Validate a schedule file's `dask:` section.

        Args:
            raw: `{tls_ca_file, tls_cert_file, tls_key_file}`.
            base_dir: Folder relative paths are resolved against.

        Returns:
            The settings.

        Raises:
            ValueError: Naming the offending key as `dask.<key>: ...`.
        """
        if not isinstance(raw, Mapping):
            raise ValueError(f"dask: must be a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(DASK_KEYS))
        if unknown:
            raise ValueError(
                f"dask.{unknown[0]}: unknown key; allowed: {', '.join(DASK_KEYS)}"
            )
        paths: list[str] = []
        for key in DASK_KEYS:
            value = raw.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"dask.{key}: must be a file path, got {value!r}")
            path = Path(value).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            paths.append(str(path))
        return cls(*paths)

    def security(self) -> Any:
        """Return distributed's `Security` for a client (encryption required).

        Returns:
            A `distributed.security.Security`.

        Raises:
            OSError: If a file is missing.
        """
        from distributed.security import Security

        for path in (self.ca_file, self.cert_file, self.key_file):
            if not Path(path).is_file():
                raise OSError(f"Dask TLS file {path} does not exist")
        return Security(  # type: ignore[no-untyped-call]
            tls_ca_file=self.ca_file,
            tls_client_cert=self.cert_file,
            tls_client_key=self.key_file,
            require_encryption=True,
        )


def _loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def dask_address(spec: str) -> str:
    """Turn `dask://host:port` into the `tcp://host:port` Dask expects.

    Args:
        spec: `dask://`, `tcp://` or `tls://` address.

    Returns:
        The address for `distributed.Client`.
    """
    if spec.startswith("dask://"):
        return "tcp://" + spec[len("dask://") :]
    return spec


def is_dask_client(obj: object) -> bool:
    """Tell a `distributed.Client` from other objects with `submit()`.

    Args:
        obj: Anything.

    Returns:
        True for a `distributed.Client` (without importing distributed).
    """
    return any(
        cls.__name__ == "Client" and cls.__module__.startswith("distributed")
        for cls in type(obj).__mro__
    )


class DaskExecutor:
    """Submits runs to a Dask cluster through a `distributed.Client`.

    Example:
        >>> from distributed import Client  # doctest: +SKIP
        >>> executor = DaskExecutor(Client("tcp://127.0.0.1:8786"))  # doctest: +SKIP
    """

    name = "dask"

    def __init__(self, client: Any, *, owns_client: bool = False) -> None:
        """Wrap a client.

        Args:
            client: A connected `distributed.Client`.
            owns_client: Close the client on `shutdown()` (true when built
                from an address by `connect`).
        """
        self.client = client
        self._owns_client = owns_client
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Any, cf.Future[Any]]] = {}
        self._closed = False

    @classmethod
    def connect(
        cls, address: str, *, timeout: float = 30.0, tls: DaskTLS | None = None
    ) -> DaskExecutor:
        """Connect to a running Dask scheduler.

        Args:
            address: `dask://host:port`, `tcp://host:port` or
                `tls://host:port`.
            timeout: Seconds to wait for the connection.
            tls: Certificates for a `tls://` scheduler (without them, a
                `tls://` address uses distributed's own configuration,
                `distributed.comm.tls.*`).

        Returns:
            An executor that closes its client on shutdown.

        Raises:
            ImportError: Without the `dask` extra (`distributed`).
        """
        try:
            from distributed import Client
        except ImportError as exc:
            raise ImportError(
                "a dask:// executor needs distributed: pip install 'styxcache[dask]'"
            ) from exc
        target = dask_address(address)
        extra: dict[str, Any] = {}
        if tls is not None:
            if not target.startswith("tls://"):
                raise ValueError(
                    "Dask TLS settings need a tls:// scheduler address,"
                    f" got {address!r}"
                )
            extra["security"] = tls.security()
        elif not target.startswith("tls://") and not _loopback(target):
            _log.warning(
                "the Dask scheduler at %s is reached without TLS: whoever can"
                " connect to its port runs code on every worker",
                address,
            )
        client = Client(  # type: ignore[no-untyped-call]
            target, timeout=timeout, set_as_default=False, **extra
        )
        _log.info("connected to the Dask scheduler at %s", address)
        return cls(client, owns_client=True)

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Start `fn(arg)` as a Dask task.

        Args:
            fn: A module-level function (pickled to the workers).
            arg: Its argument.
            on_done: Called with the future once it is done.

        Returns:
            A future settled from the Dask future.

        Raises:
            RuntimeError: After `shutdown()`.
        """
        future: cf.Future[T] = new_future(on_done)
        run_key = getattr(getattr(arg, "context", None), "key", "run")
        # Readable on the dashboard, unique per submission.
        task_key = f"styxcache-{run_key}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            future.set_running_or_notify_cancel()
            dask_future = self.client.submit(fn, arg, key=task_key, pure=False)
            self._pending[task_key] = (dask_future, future)
        dask_future.add_done_callback(self._settle)
        return future

    def _settle(self, dask_future: Any) -> None:
        with self._lock:
            entry = self._pending.pop(dask_future.key, None)
        if entry is None:
            return
        future = entry[1]
        try:
            status = dask_future.status
            if status == "finished":
                future.set_result(dask_future.result())
                return
            if status == "cancelled":
                raise RunLostError(f"Dask cancelled task {dask_future.key}")
            exc = dask_future.exception()
            if type(exc).__name__ in _LOST:
                raise RunLostError(f"Dask lost the run: {type(exc).__name__}: {exc}")
            future.set_exception(exc)
        except BaseException as exc:
            if type(exc).__name__ in _LOST and not isinstance(exc, RunLostError):
                exc = RunLostError(f"Dask lost the run: {type(exc).__name__}: {exc}")
            future.set_exception(exc)

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop accepting runs; close the client if this executor opened it.

        Args:
            wait: Wait for submitted runs to finish.
            cancel_pending: Cancel runs not finished yet.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending.values())
        if cancel_pending and pending:
            self.client.cancel([dask_future for dask_future, _ in pending])
        if wait:
            cf.wait([future for _, future in pending])
        if self._owns_client:
            self.client.close()
