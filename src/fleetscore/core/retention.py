"""Retention: what ``fleetscore gc --keep`` deletes, and what it must keep. Pure: facts in, a plan out.

Older than the cutoff (now - keep) and so deleted:

* the predictions of a window that ended before the cutoff, unless a live run or a schedule still has
  the window open (the plan says which);
* finished runs created before the cutoff (their tasks, failures and logs), unless they hold
  predictions that are kept; logs whose run no longer exists;
* model versions created before the cutoff, unless released, pinned by a schedule, or used by a run
  that is kept; versions still training are left alone, those whose training process died
  (``abandoned``) go;
* schedule window rows that ended before the cutoff and are finished;
* readings, only when asked: hours that ended before the cutoff and before the oldest data a
  schedule still needs (the next window it scores, the span it trains on, its open windows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetscore.core.runs import RunRecord
from fleetscore.core.times import HOUR_US, iso

Window = tuple[int, int]
#: Version statuses retention may delete (``training`` is left to its process; ``deleted`` is done).
DELETABLE_VERSIONS = ("ready", "failed", "abandoned")


@dataclass(frozen=True)
class VersionFact:
    version: str
    created_us: int
    status: str


@dataclass(frozen=True)
class RetentionFacts:
    """Everything the plan looks at, gathered from the catalog and storage."""

    cutoff_us: int
    runs: list[RunRecord]
    committed: dict[Window, str]  # window -> the run whose predictions it holds
    prediction_windows: list[Window]  # window folders in storage
    log_runs: list[str]  # runs that have a logs folder
    versions: list[VersionFact]
    released: str | None
    pinned_versions: frozenset[str]  # versions schedules score with
    open_windows: Mapping[Window, str]  # windows live runs or schedules still work on -> which one (why kept)
    schedule_rows: list[tuple[str, Window, str]]  # (schedule, window, status)
    reading_hours: list[int] = field(default_factory=list)
    needed_from_us: int | None = None  # readings from here on are needed by a schedule
    readings: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    """What to delete; ``kept`` says why some old things stay."""

    prediction_windows: list[Window]
    runs: list[str]
    logs: list[str]
    versions: list[str]
    schedule_rows: list[tuple[str, int]]  # (schedule, window start)
    reading_hours: list[int]
    kept: dict[str, str]

    def counts(self) -> dict[str, int]:
        return {"predictions": len(self.prediction_windows), "runs": len(self.runs), "logs": len(self.logs),
                "versions": len(self.versions), "schedule_windows": len(self.schedule_rows),
                "reading_hours": len(self.reading_hours)}


def plan_retention(f: RetentionFacts) -> RetentionPlan:
    """Apply the policy in the module docstring to ``f``."""
    kept: dict[str, str] = {}
    old_windows = [w for w in f.prediction_windows if w[1] < f.cutoff_us]
    drop_windows = [w for w in old_windows if w not in f.open_windows]
    for w in old_windows:
        if w in f.open_windows:
            kept[f"predictions {iso(w[0])}..{iso(w[1])}"] = f.open_windows[w]
    dropped = set(drop_windows)
    holding = {run for w, run in f.committed.items() if w not in dropped}
    runs = [r.run_id for r in f.runs
            if r.status.finished and r.created_at < f.cutoff_us and r.run_id not in holding]
    gone = set(runs)
    existing = {r.run_id for r in f.runs}
    logs = sorted(run for run in f.log_runs if run in gone or run not in existing)
    used = {r.version for r in f.runs if r.run_id not in gone}
    versions = []
    for v in f.versions:
        if v.created_us >= f.cutoff_us or v.status not in DELETABLE_VERSIONS:
            continue
        why = ("released" if v.version == f.released else "pinned by a schedule" if v.version in f.pinned_versions
               else "used by a run that is kept" if v.version in used else None)
        if why:
            kept[f"version {v.version}"] = why
        else:
            versions.append(v.version)
    rows = [(name, w[0]) for name, w, status in f.schedule_rows
            if w[1] < f.cutoff_us and w not in f.open_windows and status not in ("pending", "running")]
    hours: list[int] = []
    if f.readings:
        limit = f.cutoff_us if f.needed_from_us is None else min(f.cutoff_us, f.needed_from_us)
        hours = [h for h in f.reading_hours if h + HOUR_US <= limit]
    return RetentionPlan(drop_windows, runs, logs, versions, rows, hours, kept)
