"""Local executor: tasks in a process pool (forkserver), or in-process when one worker suffices.

Workers end when their driver dies, even by kill -9: each pool hands its workers the read end of a
pipe (the *lifeline*) whose only write end the driver holds, and a watchdog thread in every worker
exits the worker when that pipe reports end of file. (A parent-death signal cannot do this: a
worker's parent is the fork server, which itself waits for its workers to exit.) With the workers
gone the fork server and the resource tracker end too.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

from fleetscore.credentials import call_with_credentials, credential_env
from fleetscore.exec.base import TaskError, run_inline
from fleetscore.exec.deadline import TASK_TIMEOUT_EXIT, run_with_deadline, timed_out_message

#: Exit status of a worker that ended because its driver was gone.
DRIVER_GONE_EXIT = 70


class WorkerDied(RuntimeError):
    """A worker process ended while running a task: the task can run again in a new one."""


def watch_driver(lifeline: Connection) -> None:
    """Pool worker initializer: start the watchdog that ends this worker once its driver is gone."""
    threading.Thread(target=_exit_at_eof, args=(lifeline,), name="driver watchdog", daemon=True).start()


def _exit_at_eof(lifeline: Connection) -> None:
    """Block on the lifeline (nothing is ever sent on it) and exit the process when it closes."""
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(DRIVER_GONE_EXIT)


class LocalExecutor:
    """A process pool of ``workers`` processes, started on first use and reused until closed."""

    name = "local"
    can_inline = True

    def __init__(self, workers: int, preload: tuple[str, ...] = (), *, task_timeout_s: float = 0) -> None:
        self.workers = max(1, int(workers))
        #: Seconds a task may run in a pool worker before the worker is ended (0: no limit; `exec.deadline`).
        self.task_timeout_s = task_timeout_s
        #: Modules the fork server imports before forking workers (plus the kernel warm-up), given by the caller.
        self.preload = preload
        self._pool: ProcessPoolExecutor | None = None
        self._lifeline: tuple[Connection, Connection] | None = None  # (read end for workers, write end)

    @property
    def warm(self) -> bool:
        """The pool is running (started by an earlier map and not broken): a run pays no start-up."""
        return self._pool is not None and not self._pool._broken  # noqa: SLF001

    def map(self, fn: Callable[[Any], Any], specs: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if self.workers == 1 or len(specs) <= 1:
            yield from run_inline(fn, specs)
            return
        env = credential_env()  # the fork server keeps the environment it started with
        pending: dict[Future[Any], int] = {}
        queue = list(enumerate(specs))
        queue.reverse()
        # keep at most 2 tasks per worker in flight so results stream and memory stays bounded
        try:
            while queue or pending:
                while queue and len(pending) < 2 * self.workers:
                    i, spec = queue.pop()
                    pending[self._submit(run_with_deadline, self.task_timeout_s, call_with_credentials, env, fn,
                                         spec)] = i
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    failure = fut.exception()
                    if isinstance(failure, BrokenProcessPool):  # every task in flight fails with it, not only one
                        failure = WorkerDied(self._death_reason())
                    yield i, (TaskError.from_exception(failure) if failure is not None else fut.result())
        finally:  # the caller stopped early (a run aborted or stopped): tasks not yet started never start
            for fut in pending:
                fut.cancel()

    def _death_reason(self) -> str:
        """Why the pool broke: a worker ended for running past the time limit, or one that was killed.

        The pool's manager thread reaps the dead workers as it shuts the broken pool down; reading an exit
        status while it does races it for the fork server's status pipe (the loser sees 255), so it is
        waited for first, for a bounded time.
        """
        manager = getattr(self._pool, "_executor_manager_thread", None)
        if manager is not None:
            manager.join(timeout=10)
        processes = list(((self._pool._processes if self._pool else None) or {}).values())  # noqa: SLF001
        if any(p.exitcode == TASK_TIMEOUT_EXIT for p in processes):
            return timed_out_message(self.task_timeout_s) + " (tasks in flight beside it fail with it); the pool was restarted"
        return "a worker process died while this task was in flight (killed, or out of memory); the pool was restarted"

    def _submit(self, *args: Any) -> Future[Any]:
        """Submit to the pool; a pool broken by a dead worker is replaced first, so retries can run."""
        try:
            return self._ensure_pool().submit(*args)
        except BrokenProcessPool:
            self.close()
            return self._ensure_pool().submit(*args)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([*self.preload, "fleetscore.exec.warm"])
            self._lifeline = ctx.Pipe(duplex=False)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=watch_driver,
                                             initargs=(self._lifeline[0],))
        return self._pool

    def other_hosts(self) -> list[str]:
        """None: the pool's workers are processes of this host."""
        return []

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if pool._broken:  # noqa: SLF001
                # CPython's broken-pool cleanup misses a worker it was still starting when another died:
                # that one waits for work forever and shutdown() would wait for it. End them all first.
                for process in list((pool._processes or {}).values()):  # noqa: SLF001
                    process.kill()
            pool.shutdown(wait=True, cancel_futures=True)
        if self._lifeline is not None:  # after the shutdown: closing it earlier would end workers mid-shutdown
            for end in self._lifeline:
                end.close()
            self._lifeline = None
