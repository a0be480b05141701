"""A task's time limit inside a worker: a task still running after ``[executor] task_timeout`` ends its worker.

A hung task (a stuck read, a wedged native library) cannot be interrupted from inside Python, so a
timer thread ends the whole worker process with :data:`TASK_TIMEOUT_EXIT`. Its executor then sees a
dead worker, as after a kill: the process pool fails the tasks in flight and is replaced, Ray runs
the task again on another worker, and the run's retries take it from there. Tasks that run in the
driver (in-process runs) are never timed: ending the driver would end the run itself.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

#: Exit status of a worker ended because its task ran past the time limit.
TASK_TIMEOUT_EXIT = 71


def run_with_deadline(timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in this worker; should it still run after ``timeout_s`` (0: no limit), the worker ends."""
    if not timeout_s:
        return fn(*args)
    timer = threading.Timer(timeout_s, _end_worker, args=(timeout_s,))
    timer.daemon = True
    timer.start()
    try:
        return fn(*args)
    finally:
        timer.cancel()


def timed_out_message(timeout_s: float) -> str:
    """What a task that ran past its limit fails with."""
    return (f"a task ran longer than [executor] task_timeout ({timeout_s:g} s) and its worker was ended; "
            "the task can run again in a new worker")


def _end_worker(timeout_s: float) -> None:
    sys.stderr.write(f"fleetscore: {timed_out_message(timeout_s)}\n")
    sys.stderr.flush()
    os._exit(TASK_TIMEOUT_EXIT)
