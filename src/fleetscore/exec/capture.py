"""Run a task with its output captured into its log in storage: stdout, stderr, log records, warnings.

:func:`run_captured` wraps a task function in the worker (process pool or Ray), so a task's output
is kept next to its results whichever executor ran it: ``logs/run=<run>/task-NNNNN/attempt-N.*``.
Lines are redacted before they are written. The task's result or exception passes through unchanged.

``sys.stdout``, ``sys.stderr`` and the warnings filters belong to the whole process, so they are
captured only when the task runs in the main thread (always so in pool and Ray workers); a task
run in-process from another thread (e.g. a scheduler thread inside ``serve``) keeps only its log
records, which are picked by thread.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import ExitStack, redirect_stderr, redirect_stdout
from typing import Any, Protocol, TypeVar

from fleetscore.errors import FleetscoreError
from fleetscore.storage.fs import open_storage
from fleetscore.storage.logs import log_line, worker_name, write_task_log

T = TypeVar("T")


class LoggedTask(Protocol):
    """What a task spec needs for its log to be written: where, which run, which task and attempt."""

    storage_url: str
    run_id: str
    task: int
    attempt: int


class _Records(logging.Handler):
    """Log records of one thread (the task's), as log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(log_line("log", record.levelname.lower(), logger=record.name, message=record.getMessage()))


def run_captured(fn: Callable[[Any], T], spec: LoggedTask) -> T:
    """``fn(spec)`` with stdout/stderr, logging and warnings captured and written to the task's log."""
    out, err, records = io.StringIO(), io.StringIO(), _Records()
    lines = [log_line("task.start", task=spec.task, attempt=spec.attempt, worker=worker_name())]
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(min(level or logging.WARNING, logging.INFO))
    t0 = time.perf_counter()
    error: BaseException | None = None
    caught: list[warnings.WarningMessage] = []
    try:
        with ExitStack() as stack:
            if threading.current_thread() is threading.main_thread():
                stack.enter_context(redirect_stdout(out))
                stack.enter_context(redirect_stderr(err))
                caught = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("default")
            try:
                result = fn(spec)
            except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised below
                error = exc
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    lines += records.lines
    lines += [log_line("warning", "warning", category=w.category.__name__, message=str(w.message)) for w in caught]
    wall_s = round(time.perf_counter() - t0, 6)
    if error is None:
        record = getattr(result, "record", None)
        summary = {"wall_s": wall_s, **(record.as_dict() if record is not None and hasattr(record, "as_dict") else {})}
        lines.append(log_line("task.end", **(summary | {"task": spec.task, "attempt": spec.attempt})))
    else:
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        lines.append(log_line("task.error", "error", task=spec.task, attempt=spec.attempt, wall_s=wall_s,
                              error=f"{type(error).__name__}: {error}", traceback=tb))
    try:
        write_task_log(open_storage(spec.storage_url, in_task=True), spec.run_id, spec.task, spec.attempt, lines,
                       out.getvalue(), err.getvalue())
    except (FleetscoreError, OSError):
        pass  # the run log still records the task's outcome; a log that cannot be written must not fail the task
    if error is not None:
        raise error
    return result
