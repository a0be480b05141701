"""Ray executor: each task (a shard of many models) is one Ray task, retried when its worker dies.

Only small task specs travel through Ray; workers read their inputs from shared storage and write
their outputs there (one atomic file per task, committed by the driver at the end of the run), so a
task that is run again after its worker was killed simply rewrites its own file.

Without an address the executor joins the Ray instance that ``RAY_ADDRESS`` or a local ``ray start``
names, else starts a local one with ``workers`` CPUs; the process stays connected between runs, so
a long-lived driver finds its Ray workers warm. Storage credentials set in the driver's
environment are forwarded to the workers through the object store, never through ``runtime_env``
(Ray writes runtime environments in plain text to its logs).
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from fleetscore.credentials import call_with_credentials, credential_env
from fleetscore.errors import ConfigError, FleetscoreError
from fleetscore.exec.base import TaskError
from fleetscore.exec.deadline import run_with_deadline, timed_out_message
from fleetscore.exec.place import other_hosts, placed, this_process
from fleetscore.redact import redact

#: Times Ray runs a task again after its worker process or node died (application errors are not retried).
DEFAULT_MAX_RETRIES = 3
#: Tasks a run keeps submitted at once: this many per CPU of the cluster (at least MIN_IN_FLIGHT), so every
#: CPU has its next task queued while the driver's waits stay small.
IN_FLIGHT_PER_CPU = 4
MIN_IN_FLIGHT = 64
#: CPUs one task asks Ray for; a task scores its shard on one core.
TASK_CPUS = 1
#: Seconds to wait for the cluster's address to answer before giving up.
CONNECT_TIMEOUT_S = 10.0
#: Ray Client's proxy sometimes fails to start the server for a new driver (the next free port taken by
#: another cluster's proxy, or the previous driver's server not yet reaped): what it then says, and
#: how often connecting is tried in all (1 s, then 2 s apart).
CLIENT_STARTUP_RACES = ("Starting Ray client server failed", "Initialization failure from server")
CONNECT_ATTEMPTS = 3


class RayExecutor:
    """Runs tasks on a Ray cluster (``address``), or on the local Ray instance when there is none."""

    name = "ray"
    can_inline = False  # a run on a cluster keeps its tasks there (storage may not even be reachable here)

    def __init__(self, workers: int, address: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES, *,
                 env_address: str | None = None, task_timeout_s: float = 0) -> None:
        self.workers = max(1, int(workers))
        #: Seconds a task may run in a Ray worker before the worker is ended and Ray retries it (0: no limit).
        self.task_timeout_s = task_timeout_s
        self.address = address
        #: ``RAY_ADDRESS`` as the settings read it: what ``ray.init()`` joins when no address is given.
        self.env_address = env_address
        self.max_retries = max(0, int(max_retries))
        self._task: Any = None
        self._env: Any = None

    @property
    def warm(self) -> bool:
        """Connected to the cluster (its workers start warm on their own)."""
        return self._task is not None

    def map(self, fn: Callable[[Any], Any], specs: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if not specs:
            return
        import ray

        self._connect()
        from fleetscore.version import __version__

        task = self._task.options(name=_task_name(fn))
        # A window of tasks in flight, refilled as results come: every ray.wait looks at the window, not at
        # all of a run's thousands of tasks, so the driver's cost per task stays flat however many there are.
        window = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", self.workers)))
        queue = list(enumerate(specs))
        queue.reverse()
        index: dict[Any, int] = {}
        pending: list[Any] = []
        try:
            while queue or pending:
                while queue and len(pending) < window:
                    i, spec = queue.pop()
                    ref = task.remote(fn, spec, self._env, __version__, self.task_timeout_s)
                    index[ref] = i
                    pending.append(ref)
                done, pending = ray.wait(pending, num_returns=1)
                if pending:
                    more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                    done += more
                for ref in done:
                    yield index.pop(ref), self._result(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _result(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            # the worker or its node died on every attempt, or the task was cancelled
            failed = TaskError.from_exception(exc, attempts=self.max_retries + 1)
            if isinstance(exc, ray.exceptions.WorkerCrashedError) and self.task_timeout_s:
                # Ray does not say why a worker ended: a hung task's ends by its time limit (`exec.deadline`)
                return replace(failed, error=f"{failed.error} (or {timed_out_message(self.task_timeout_s)})")
            return failed

    def _connect(self) -> None:
        import ray

        if self._task is None:
            connect(self.address, self.workers, self.env_address)
            self._task = ray.remote(num_cpus=TASK_CPUS, max_retries=self.max_retries, retry_exceptions=False)(
                run_task
            )
            self._env = ray.put(credential_env())

    def other_hosts(self) -> list[str]:
        """The hosts other than this one that may run its tasks: the address's host when that is another
        machine (found without connecting), else the cluster's live nodes on other machines."""
        address = self.address or self.env_address
        if address and ":" in address:
            elsewhere = other_hosts([_split_address(address)[0]])
            if elsewhere:
                return elsewhere
        import ray

        self._connect()
        return other_hosts(str(node.get("NodeManagerAddress", "")) for node in ray.nodes() if node.get("Alive"))

    def close(self) -> None:
        """Forget this executor's tasks; the process stays connected to Ray (see :func:`connect`)."""
        self._task = self._env = None


class _Connection:
    """The Ray connection this process opened, and the address it was asked for."""

    opened = False
    address: str | None = None


def connect(address: str | None, workers: int, env_address: str | None = None) -> None:
    """Connect this process to Ray at ``address`` (None: ``RAY_ADDRESS``, a local ``ray start``, else a new
    local instance of ``workers`` CPUs), unless it is connected already.

    The connection outlives the executor: Ray starts worker processes per connection (per job), so
    the next run of a long-lived process (scheduler, web app) finds its workers warm; Ray closes it
    when the process exits. A connection the application opened itself is used as it is.
    """
    import ray

    if ray.is_initialized() and (not _Connection.opened or _Connection.address == address):
        return
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        ray.shutdown()  # ours, to another address
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "namespace": "fleetscore"}
    if address is None and _starts_local_instance(env_address):
        options.update(num_cpus=workers, include_dashboard=False)
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address, **options)
            break
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            if attempt < CONNECT_ATTEMPTS and any(text in str(exc) for text in CLIENT_STARTUP_RACES):
                if ray.is_initialized():
                    ray.shutdown()
                time.sleep(attempt)
                continue
            where = address or env_address or "the local Ray instance"
            raise FleetscoreError(redact(f"cannot connect to Ray at {where}: {exc}")) from exc
    _Connection.opened, _Connection.address = True, address


def _task_name(fn: Callable[[Any], Any]) -> str:
    """``fleetscore.score_shard`` for ``score_shard`` and for wrappers of it (``partial(wrapper, score_shard)``)."""
    while isinstance(fn, functools.partial):
        fn = next((a for a in fn.args if callable(a)), fn.func)
    return f"fleetscore.{getattr(fn, '__name__', 'task')}"


def _split_address(address: str) -> tuple[str, int]:
    """Host and port of ``[ray://]host:port``, refused clearly when the address has another shape."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"Ray address must look like host:port or ray://host:port, got {address[:100]!r}")
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with a clear message when nothing listens at ``[ray://]host:port`` (Ray itself retries for minutes)."""
    host, port = _split_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise FleetscoreError(f"cannot connect to Ray at {address}: nothing answers there ({exc})") from exc


def _starts_local_instance(env_address: str | None) -> bool:
    """True when ``ray.init()`` without an address would start a new instance rather than join one."""
    if env_address:
        return False
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without this helper: let ray.init decide, with its own defaults
        return False
    return canonicalize_bootstrap_address(None) is None  # type: ignore[arg-type]  # None: no address given


def run_task(fn: Callable[[Any], Any], spec: Any, env: dict[str, str], driver_version: str,
             task_timeout_s: float = 0) -> Any:
    """Inside a Ray worker: take the driver's credentials, record node and attempt, run ``fn(spec)`` (the
    worker ends, and Ray runs the task again, should it run past ``task_timeout_s``).

    Exceptions of ``fn`` come back as :class:`TaskError` values (so Ray does not retry them); only a
    dead worker or node makes Ray run the task again.
    """
    import ray

    from fleetscore.version import __version__

    node_id = ray.get_runtime_context().get_node_id()
    place = this_process(f"{ray.util.get_node_ip_address()}/{node_id[:12]}", _attempt_number())
    if __version__ != driver_version:
        return TaskError(f"fleetscore {__version__} on node {place.node} but {driver_version} on the driver: "
                         "install the same version everywhere (one image for driver and workers)", "", place.attempt)
    with placed(place):
        try:
            return run_with_deadline(task_timeout_s, call_with_credentials, env, fn, spec)
        except Exception as exc:  # noqa: BLE001 - a task's failure is data for the run record
            return TaskError.from_exception(exc, attempts=place.attempt)


def _attempt_number() -> int:
    """1 for the first run of the current Ray task, 2 after one retry, ... (1 when Ray cannot tell)."""
    from ray._private.worker import global_worker

    getter = getattr(getattr(global_worker, "core_worker", None), "get_current_task_attempt_number", None)
    return int(getter()) + 1 if getter is not None else 1
