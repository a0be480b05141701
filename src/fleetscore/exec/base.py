"""The executor interface: run a top-level function over task specs, yield results as they finish.

An executor only moves small task specs and results; task functions read their own inputs from
storage (shared by all workers) and write their outputs there, so executors stay interchangeable.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class TaskError:
    """A task that raised: the error text and traceback, kept for the run record and logs."""

    error: str
    traceback: str
    attempts: int = 1

    @classmethod
    def from_exception(cls, exc: BaseException, attempts: int = 1) -> TaskError:
        """The exception as text for run records and logs, with secrets removed."""
        from fleetscore.redact import redact

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(redact(f"{type(exc).__name__}: {exc}"), redact(tb), attempts)


class Executor(Protocol):
    """Runs ``fn(spec)`` for every spec; yields ``(index, result or TaskError)`` in completion order.

    ``can_inline``: a run may instead execute its tasks in the driver (`run_inline`) when that is cheaper
    (local executors; a Ray cluster keeps every task); ``warm``: workers are running now, no start-up to pay;
    ``other_hosts``: the machines other than this one its tasks may run on (what local storage cannot reach).
    """

    name: str
    workers: int
    can_inline: bool

    @property
    def warm(self) -> bool: ...

    def map(self, fn: Callable[[Any], Any], specs: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...

    def other_hosts(self) -> list[str]: ...

    def close(self) -> None: ...


def run_inline(fn: Callable[[Any], Any], specs: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """Run the tasks one after another in this process, as an executor would report them."""
    for i, spec in enumerate(specs):
        try:
            yield i, fn(spec)
        except Exception as exc:  # noqa: BLE001 - a task's failure is data for the run record
            yield i, TaskError.from_exception(exc)


class Inline:
    """Runs every task in this process: what a run uses instead of its executor when a pool would cost
    more than the work (`fleetscore.core.execution`); reports the executor's ``name``."""

    workers = 1
    can_inline = True
    warm = True

    def __init__(self, name: str) -> None:
        self.name = name

    def map(self, fn: Callable[[Any], Any], specs: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        return run_inline(fn, specs)

    def other_hosts(self) -> list[str]:
        """None: every task runs here."""
        return []

    def close(self) -> None:
        """Nothing to stop."""
