"""``fleetscore gc``: gather what exists, let :func:`~fleetscore.core.retention.plan_retention` decide, delete.

Windows with a run in progress count as open, like the windows schedules still have to run, so gc
never deletes under a live run; each kept window says which run or schedule holds it. A run or a
training version whose process died is abandoned (the catalog marks it when it reads it) and pins
nothing: its files go like any other old run's or version's. Model versions keep their catalog row
(status ``deleted``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetscore.catalog.purge import delete_commits, delete_runs, mark_versions_deleted
from fleetscore.catalog.schedules import ScheduleStore
from fleetscore.core.retention import RetentionFacts, RetentionPlan, VersionFact, Window, plan_retention
from fleetscore.core.runs import RunRecord
from fleetscore.core.schedule import next_fire, window_of
from fleetscore.core.times import SECOND_US, iso
from fleetscore.errors import InputError
from fleetscore.services.context import Context
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

ALL = 10**9


@dataclass(frozen=True)
class GcResult:
    cutoff_us: int
    plan: RetentionPlan
    dry_run: bool

    def as_dict(self) -> dict[str, object]:
        p = self.plan
        return {"cutoff": iso(self.cutoff_us), "dry_run": self.dry_run, "deleted": p.counts(),
                "versions": p.versions, "runs": p.runs,
                "predictions": [f"{iso(lo)}..{iso(hi)}" for lo, hi in p.prediction_windows], "kept": p.kept}


def collect_facts(ctx: Context, cutoff_us: int, now_us: int, readings: bool) -> RetentionFacts:
    """What exists and what is still needed, as the retention policy takes it."""
    catalog, storage = ctx.catalog, ctx.storage
    store = ScheduleStore(catalog)
    runs = catalog.runs(ALL)
    schedules = store.all()
    specs = [s for s in schedules if not s.paused]
    busy = _open_windows(runs, store, {s.name for s in schedules})
    needed = [window_of(s, next_fire(s, now_us)).from_us for s in specs] + [lo for lo, _ in busy]
    log_runs = []
    for name in storage.list_dirs("logs"):
        try:
            log_runs.append(layout.check_run_id(name.removeprefix("run=")))
        except InputError:
            continue  # not a folder fleetscore wrote
    return RetentionFacts(
        cutoff_us=cutoff_us,
        runs=runs,
        committed=catalog.committed_runs(),
        prediction_windows=[b for b in map(layout.window_bounds, storage.list_dirs("predictions")) if b],
        log_runs=log_runs,
        versions=[VersionFact(v.version, v.created_at, v.status) for v in catalog.versions()],
        released=catalog.released(),
        pinned_versions=frozenset(s.version for s in store.all() if s.version),
        open_windows=busy,
        schedule_rows=[(r.schedule, (r.window_from, r.window_to), r.status) for r in store.windows(limit=ALL)],
        reading_hours=_reading_hours(storage) if readings else [],
        needed_from_us=min(needed) if needed else None,
        readings=readings,
    )


def _open_windows(runs: list[RunRecord], store: ScheduleStore, schedules: set[str]) -> dict[Window, str]:
    """Windows a live run or an existing schedule still works on, with who holds each (the reason gc keeps it)."""
    held = {(r.window_from, r.window_to): f"schedule {r.schedule} has not finished this window ({r.status})"
            for r in store.open_windows() if r.schedule in schedules}
    held |= {(r.window_from, r.window_to): f"run {r.run_id} is still {r.status.value}"
             for r in runs if not r.status.finished}  # the catalog marked the runs whose process died abandoned
    return held


def _reading_hours(storage: Storage) -> list[int]:
    """The hours that have a readings folder."""
    folders = (f"readings/{day}/{hour}" for day in storage.list_dirs("readings") for hour in storage.list_dirs(f"readings/{day}"))
    return sorted(h for h in map(layout.hour_of_key, folders) if h is not None)


def gc(ctx: Context, keep_s: int, *, readings: bool = False, dry_run: bool = False) -> GcResult:
    """Delete what is older than ``keep_s`` seconds before now (``ctx.clock``) by the retention policy."""
    now_us = ctx.clock()
    cutoff = now_us - keep_s * SECOND_US
    plan = plan_retention(collect_facts(ctx, cutoff, now_us, readings))
    if not dry_run:
        storage, catalog = ctx.storage, ctx.catalog
        for lo, hi in plan.prediction_windows:
            storage.delete(layout.predictions_dir(lo, hi), recursive=True)
        delete_commits(catalog, [(iso(lo), iso(hi)) for lo, hi in plan.prediction_windows])
        delete_runs(catalog, plan.runs)
        for run_id in plan.logs:
            storage.delete(layout.logs_dir(run_id), recursive=True)
        for version in plan.versions:
            storage.delete(layout.model_dir(version), recursive=True)
        mark_versions_deleted(catalog, plan.versions)
        ScheduleStore(catalog).delete_windows(plan.schedule_rows)
        for hour in plan.reading_hours:
            storage.delete(layout.hour_key(hour), recursive=True)
    return GcResult(cutoff, plan, dry_run)
