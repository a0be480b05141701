"""The executor interface: run a top-level function over task specs, yield results as they finish.

An executor only moves small task specs and results; task functions read their own inputs from
storage (shared by all workers) and write their outputs there, so executors stay interchangeable.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence


@dataclass(frozen=True)
class TaskError:
    """A task that raised: the error text and traceback, kept for the run record and logs."""

    error: str
    traceback: str
    attempts: int = 1

    @classmethod
    def from_exception(cls, exc: BaseException, attempts: int = 1) -> "TaskError":
        """The exception as text for run records and logs, with secrets removed."""
        from fleetscore.redact import redact

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(redact(f"{type(exc).__name__}: {exc}"), redact(tb), attempts)


class Executor(Protocol):
    """Runs ``fn(spec)`` for every spec; yields ``(index, result or TaskError)`` in completion order."""

    name: str
    workers: int

    def map(self, fn: Callable[[Any], Any], specs: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...
