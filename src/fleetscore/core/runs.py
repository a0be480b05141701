"""Run and task records: what the catalog stores about every scoring run, and the run status rules.

Records are immutable values; change them with :meth:`RunRecord.with_status` or ``dataclasses.replace``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from fleetscore.core.times import iso, iso_us
from fleetscore.errors import InputError


class RunStatus(str, enum.Enum):
    """Life cycle of a run: queued → running → succeeded | partial | failed | cancelled | abandoned.

    ``abandoned``: the process running it died (its lease expired with the run unfinished); found by
    whatever looks at the run next. ``runs retry`` takes a finished run back to running and re-runs
    only its tasks that did not succeed.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED, RunStatus.CANCELLED,
                               RunStatus.ABANDONED})
ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
#: Finished statuses a command reporting the run exits 1 for: nothing, or not everything, was scored.
FAILED_STATUSES = frozenset({RunStatus.FAILED, RunStatus.ABANDONED})

#: A run's per-model lists: models that failed, models flagging far more than calibrated (`fleetscore.core.health`),
#: and keys whose readings had no model. The catalog keeps every entry; a run record and a command's output list
#: at most `MAX_LISTED` of each, in key order, beside the list's total.
RUN_LISTS = ("failures", "unhealthy", "unmatched")
MAX_LISTED = 20


@dataclass(frozen=True)
class ModelFailure:
    """One (device, sensor) that could not be scored, and why."""

    device: str
    sensor: str
    reason: str
    task: int | None = None


@dataclass(frozen=True)
class TaskRecord:
    """What one task (one shard of models) did: counts, timings by phase, where it ran, errors."""

    run_id: str
    task: int
    shard: int
    status: str = "queued"
    models: int = 0
    rows: int = 0
    anomalies: int = 0
    unmatched_rows: int = 0
    failed_models: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    load_data_s: float = 0.0
    load_models_s: float = 0.0
    score_s: float = 0.0
    write_s: float = 0.0
    worker: str = ""
    node: str = ""
    attempts: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RunRecord:
    """One scoring run of the window [window_from, window_to) with one model version."""

    run_id: str
    window_from: int  # µs since the epoch, like every time below; ISO 8601 only in as_dict()
    window_to: int
    version: str
    status: RunStatus = RunStatus.QUEUED
    created_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    elapsed_s: float | None = None
    models: int = 0
    rows: int = 0
    anomalies: int = 0
    unmatched_rows: int = 0
    failed_models: int = 0
    tasks: int = 0
    executor: str = "local"
    schedule: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_status(self, status: RunStatus, **changes: Any) -> RunRecord:
        return replace(self, status=status, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The record with its times as ISO 8601 text (windows to the second, stamps to the µs)."""
        out = dict(self.__dict__)
        out["status"] = self.status.value
        out["window_from"], out["window_to"] = iso(self.window_from), iso(self.window_to)
        for name in ("created_at", "started_at", "finished_at"):
            out[name] = None if out[name] is None else iso_us(out[name])
        return out


@dataclass(frozen=True)
class ListPage:
    """Entries ``offset`` .. ``offset + len(items)`` of one of a run's `RUN_LISTS` (in key order), and its ``total``."""

    run_id: str
    name: str
    total: int
    offset: int
    items: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def full_lists(run_id: str) -> dict[str, str]:
    """Where each of run ``run_id``'s per-model lists is in full: a command, and the API route that pages it."""
    where = {"failures": f"fleetscore runs show {run_id} --all", "unhealthy": f"fleetscore models health --run {run_id}",
             "unmatched": f"fleetscore runs show {run_id} --all"}
    return {name: f"{command} (API: /api/runs/{run_id}/{name}?limit=&offset=)" for name, command in where.items()}


def run_status(scored_models: int, failed_models: int, failed_tasks: int) -> RunStatus:
    """Status of a finished run: partial when something failed but something was scored."""
    if failed_models == 0 and failed_tasks == 0:
        return RunStatus.SUCCEEDED
    if scored_models > 0:
        return RunStatus.PARTIAL
    return RunStatus.FAILED


@dataclass(frozen=True)
class FailureLimit:
    """How many failed models a run may have before it is aborted (``--max-failed-models N|P%``): a count,
    or a share of the models the run plans to score. A run past it stops starting tasks and ends ``failed``."""

    count: int | None = None
    share: float | None = None  # 0..1

    @classmethod
    def parse(cls, value: Any) -> FailureLimit:
        """``N`` (a whole number of models, 0 or more) or ``P%`` (0 to 100); InputError on anything else."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(count=value)
        text = value.strip() if isinstance(value, str) else ""
        try:
            if text.endswith("%"):
                share = float(text[:-1])
                if 0 <= share <= 100:
                    return cls(share=share / 100)
            elif text.isdigit():
                return cls(count=int(text))
        except ValueError:
            pass
        raise InputError(f"expected a number of models (e.g. 1000) or a share of the run's models (e.g. 5%), "
                         f"got {str(value)[:40]!r}")

    def allowed(self, models: int) -> int:
        """Failed models a run of ``models`` may have without being aborted."""
        return self.count if self.count is not None else int((self.share or 0.0) * models + 1e-9)

    def abort_reason(self, failed: int, models: int) -> str | None:
        """Why a run with ``failed`` of ``models`` failed models stops, or None while it is within the limit."""
        if failed <= self.allowed(models):
            return None
        return (f"aborted: {failed:,} failed models of {models:,} exceed --max-failed-models {self} "
                f"(at most {self.allowed(models):,}); the tasks not yet run were not started")

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{(self.share or 0.0) * 100:g}%"


def needs_rerun(task: TaskRecord) -> bool:
    """A task a retry runs again: it failed, never finished, or some of its models failed."""
    return task.status != "succeeded" or task.failed_models > 0


def backoff_delay(retry: int, base_s: float, cap_s: float = 300.0) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): base, 2×base, 4×base, ... up to ``cap_s``."""
    return min(cap_s, base_s * 2.0 ** max(0, retry - 1))
