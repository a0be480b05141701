"""Steering a run while it executes: how often failed tasks are retried, and a stop flag.

The flag is set from another thread (the lease keeper, when the run is cancelled or its lease is
lost); the run checks it between tasks and while it waits to retry, and stops with
:class:`RunStopped`. Tasks already running finish; no new ones start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fleetscore.core.runs import FailureLimit
from fleetscore.errors import FleetscoreError

#: Stop reason of a run cancelled by ``fleetscore runs cancel``.
CANCELLED = "cancelled"
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 2.0


class RunStopped(FleetscoreError):
    """The run stopped before it finished: cancelled, or its lease was lost to another process."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"run {run_id} stopped: {reason}")
        self.run_id = run_id
        self.reason = reason


class StopFlag:
    """Set once, from any thread, with the reason the run must stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self, run_id: str) -> None:
        """Raise :class:`RunStopped` when the flag is set."""
        if self._event.is_set():
            raise RunStopped(run_id, self.reason or "stopped")

    def sleep(self, run_id: str, seconds: float) -> None:
        """Wait ``seconds``, or raise :class:`RunStopped` as soon as the flag is set."""
        if self._event.wait(max(0.0, seconds)):
            raise RunStopped(run_id, self.reason or "stopped")


@dataclass(frozen=True)
class RunControl:
    """Retries (how many more attempts a failed task gets, first wait ``backoff_s``, doubling), the failed
    models past which the run is aborted (None: never) and the stop flag."""

    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    stop: StopFlag = field(default_factory=StopFlag)
    max_failed: FailureLimit | None = None
