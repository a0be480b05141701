"""The one road into scoring: new runs of a window, finishing failed runs (``runs retry``), cancel, backfill.

Every scoring run (``fleetscore score``, the scheduler, ``backfill``, ``runs retry``) comes through
here and holds the lease ``score:<window>`` while it works, so one window is never scored by two
runs at once, by any number of processes. A keeper thread renews the lease and reads its cancel
flag; when the run is cancelled (or the lease was lost) it sets the run's stop flag, and the run
stops between tasks. A holder that crashes stops renewing: its lease expires and the window can be
taken over. A caller that already holds the lease (the scheduler, which checks its window row under
it) passes it in. A run left queued or running by a crashed holder is marked ``abandoned`` by the
catalog as soon as anything reads it after the lease expired; ``runs retry`` (or the scheduler)
finishes it, or ``runs cancel`` closes it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from fleetscore.catalog.leases import LeaseInfo, Leases, LeaseState
from fleetscore.catalog.schedules import OPEN_STATUSES, ScheduleStore
from fleetscore.catalog.sql import TRAINING_LEASE
from fleetscore.config import ScheduleSettings
from fleetscore.core.runs import ACTIVE_STATUSES, RunRecord, RunStatus, needs_rerun
from fleetscore.core.times import SECOND_US, iso
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.exec.base import Executor
from fleetscore.exec.control import CANCELLED, RunControl, StopFlag
from fleetscore.services import score as scoring
from fleetscore.services.context import Context
from fleetscore.storage import layout

Progress = Callable[[int, int], None]
#: Stop reason when another process took the lease over (this one stalled longer than the lease).
LEASE_LOST = "lease lost"
MAX_BACKFILL_WINDOWS = 10_000


class LeaseBusy(InputError):
    """Someone else holds the lease (exit 2: wait, or cancel the run that holds it)."""

    def __init__(self, key: str, holders: list[LeaseInfo]) -> None:
        who = "; ".join(f"held by {h.holder}" + (f" for run {h.run_id}" if h.run_id else "") +
                        f" since {h.acquired_at}" for h in holders) or "held by another process"
        super().__init__(f"{key} is busy ({who}); wait for it or cancel that run")
        self.key = key


def score_lease_key(from_us: int, to_us: int) -> str:
    return f"score:{layout.window_key(from_us, to_us)}"


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class HeldLease:
    """A lease this process holds; ``stop`` is set when the run must stop (cancel, lost lease)."""

    leases: Leases
    key: str
    holder: str
    stop: StopFlag = field(default_factory=StopFlag)

    def set_run(self, run_id: str) -> None:
        self.leases.set_run(self.key, self.holder, run_id)


@contextmanager
def hold_lease(ctx: Context, key: str, *, wait_s: float = 0.0) -> Iterator[HeldLease]:
    """Hold ``key`` (waiting up to ``wait_s`` for it) while the block runs; LeaseBusy if it stays taken."""
    settings = ctx.config.schedule
    leases = Leases(ctx.catalog)
    lease = HeldLease(leases, key, new_holder())
    deadline = time.monotonic() + wait_s
    while not leases.acquire(key, lease.holder, settings.lease_s):
        if time.monotonic() >= deadline:
            raise LeaseBusy(key, leases.live(key))
        time.sleep(min(1.0, settings.lease_s / 4))
    done = threading.Event()
    keeper = threading.Thread(target=_keep, args=(lease, settings.lease_s, done), name=f"lease {key}", daemon=True)
    keeper.start()
    try:
        yield lease
    finally:
        done.set()
        keeper.join()
        leases.release(key, lease.holder)


def training_lease_key(version: str) -> str:
    """The lease a process holds while it trains ``version``: once it expires the version is abandoned."""
    return TRAINING_LEASE + version


def _keep(lease: HeldLease, ttl_s: float, done: threading.Event) -> None:
    """Renew the lease about every second (at most a third of its length); turn cancel/loss into a stop."""
    while not done.wait(min(1.0, ttl_s / 3)):
        try:
            state = lease.leases.renew(lease.key, lease.holder, ttl_s)
        except sa.exc.SQLAlchemyError:
            continue  # the catalog hiccuped; if it stays away the lease expires, as after a crash
        if state is LeaseState.CANCEL:
            lease.stop.set(CANCELLED)
        elif state is LeaseState.LOST:
            lease.stop.set(LEASE_LOST)
            return


def run_control(settings: ScheduleSettings, lease: HeldLease) -> RunControl:
    return RunControl(retries=settings.retries, backoff_s=settings.backoff_s, stop=lease.stop,
                      max_failed=settings.max_failed_models)


@contextmanager
def _leased(ctx: Context, from_us: int, to_us: int, lease: HeldLease | None, wait_s: float) -> Iterator[HeldLease]:
    """The caller's lease on the window, or a new one held for the block."""
    if lease is not None:
        yield lease
        return
    with hold_lease(ctx, score_lease_key(from_us, to_us), wait_s=wait_s) as held:
        yield held


def score_window(ctx: Context, executor: Executor, from_us: int, to_us: int, version: str, *,
                 schedule: str | None = None, run_id: str | None = None, on_progress: Progress | None = None,
                 wait_s: float = 0.0, lease: HeldLease | None = None) -> RunRecord:
    """A new run of the window [from, to) with ``version``, under the window's lease (``lease`` if the
    caller holds it already, else one taken here, waiting up to ``wait_s`` for it)."""
    with _leased(ctx, from_us, to_us, lease, wait_s) as held:
        run_id = run_id or uuid.uuid4().hex
        held.set_run(run_id)
        return scoring.score(ctx, executor, from_us, to_us, version, run_id=run_id, schedule=schedule,
                             control=run_control(ctx.config.schedule, held), on_progress=on_progress)


def resume_run(ctx: Context, executor: Executor, run: RunRecord, *, on_progress: Progress | None = None,
               lease: HeldLease | None = None) -> RunRecord:
    """Finish ``run`` under its window's lease: only its tasks that did not succeed run again."""
    from_us, to_us = run.window_from, run.window_to
    with _leased(ctx, from_us, to_us, lease, 0.0) as held:
        held.set_run(run.run_id)
        return scoring.resume(ctx, executor, run.run_id, control=run_control(ctx.config.schedule, held),
                              on_progress=on_progress)


@dataclass(frozen=True)
class RetryResult:
    """The run after a retry and the tasks that ran again."""

    run: RunRecord
    retried: list[int]

    def as_dict(self) -> dict[str, object]:
        return self.run.as_dict() | {"retried_tasks": self.retried}


def retry_run(ctx: Context, executor: Executor, run_id: str, on_progress: Progress | None = None) -> RetryResult:
    """Re-run only the tasks of ``run_id`` that did not succeed, into its own folder, and commit again."""
    layout.check_run_id(run_id)
    run = ctx.catalog.get_run(run_id)
    from_us, to_us = run.window_from, run.window_to
    current = committed_run(ctx, from_us, to_us)
    if current not in (None, run_id):
        raise InputError(f"window {iso(from_us)}..{iso(to_us)} now holds the predictions of run {current}; "
                         f"score the window again instead of retrying the older run {run_id}")
    with hold_lease(ctx, score_lease_key(from_us, to_us)) as lease:
        run = ctx.catalog.get_run(run_id)  # read again under the lease
        records = ctx.catalog.tasks(run_id)
        before = {t.task: t.attempts for t in records}
        if run.status is RunStatus.SUCCEEDED and not any(needs_rerun(t) for t in records):
            return RetryResult(run, [])
        run = resume_run(ctx, executor, run, on_progress=on_progress, lease=lease)
    retried = [t.task for t in ctx.catalog.tasks(run_id) if t.attempts > before.get(t.task, 0)]
    _set_window_status(ctx, run)
    return RetryResult(run, retried)


def committed_run(ctx: Context, from_us: int, to_us: int) -> str | None:
    """The run whose predictions the window holds now (its ``_COMMITTED.json``), or None."""
    try:
        return str(json.loads(ctx.storage.read_bytes(layout.commit_key(from_us, to_us)))["run_id"])
    except FileNotFoundError:
        return None


def _set_window_status(ctx: Context, run: RunRecord) -> None:
    """A schedule window scored by ``run`` takes the run's final status."""
    store = ScheduleStore(ctx.catalog)
    for row in store.windows_of_run(run.run_id):
        store.update_window(row.schedule, row.window_from, status=run.status.value, error=run.error)


def cancel_run(ctx: Context, run_id: str, wait_s: float = 10.0) -> RunRecord:
    """Cancel a queued or running run: its process stops it between tasks (waits up to ``wait_s`` for that).

    A run that no live process holds (abandoned: its process crashed, and its lease expired) is marked
    cancelled here, so nothing resumes it.
    """
    layout.check_run_id(run_id)
    run = ctx.catalog.get_run(run_id)
    if run.status.finished and run.status is not RunStatus.ABANDONED:
        raise InputError(f"run {run_id} already {run.status.value}; only a queued, running or abandoned run "
                         "can be cancelled")
    leases = Leases(ctx.catalog)
    if leases.request_cancel(run_id):
        deadline = time.monotonic() + wait_s
        while not run.status.finished and time.monotonic() < deadline and leases.live(run_id=run_id):
            time.sleep(0.2)
            run = ctx.catalog.get_run(run_id)
        if run.status not in (RunStatus.ABANDONED, *ACTIVE_STATUSES) or leases.live(run_id=run_id):
            return run  # stopped, or still stopping (its holder is alive and will stop it)
    run = run.with_status(RunStatus.CANCELLED, finished_at=ctx.clock(),
                          error="cancelled (no live process was running it)")
    ctx.catalog.save_run(run)
    store = ScheduleStore(ctx.catalog)
    for row in store.windows_of_run(run_id):
        if row.status in OPEN_STATUSES:
            store.update_window(row.schedule, row.window_from, status=RunStatus.CANCELLED.value)
    return run


@dataclass(frozen=True)
class BackfillResult:
    """One run per window (in window order) and the windows that could not be run, with why."""

    runs: list[RunRecord]
    errors: list[dict[str, str]]

    def as_dict(self) -> dict[str, object]:
        return {"runs": [r.run_id for r in self.runs], "windows": len(self.runs) + len(self.errors),
                "statuses": [r.status.value for r in self.runs], "errors": self.errors,
                "rows": sum(r.rows for r in self.runs), "anomalies": sum(r.anomalies for r in self.runs)}


def backfill_windows(from_us: int, to_us: int, every_s: int) -> list[tuple[int, int]]:
    """[from, to) cut into consecutive windows of ``every_s``; the span must be a whole number of them."""
    step = every_s * SECOND_US
    if to_us <= from_us:
        raise InputError(f"--to ({iso(to_us)}) must be after --from ({iso(from_us)})")
    if (to_us - from_us) % step:
        raise InputError(f"--from {iso(from_us)} .. --to {iso(to_us)} is not a whole number of --every {every_s}s windows")
    count = (to_us - from_us) // step
    if count > MAX_BACKFILL_WINDOWS:
        raise InputError(f"backfill of {count} windows is more than {MAX_BACKFILL_WINDOWS}; split it")
    return [(lo, lo + step) for lo in range(from_us, to_us, step)]


def backfill(ctx: Context, executor: Executor, from_us: int, to_us: int, every_s: int, version: str,
             on_run: Callable[[RunRecord], None] | None = None) -> BackfillResult:
    """Score every window of [from, to) (one run each, oldest first); each run replaces its window's predictions.

    A window being scored by another process is waited for (up to twice the lease), then scored again.
    """
    lease_s = ctx.config.schedule.lease_s
    runs: list[RunRecord] = []
    errors: list[dict[str, str]] = []
    for lo, hi in backfill_windows(from_us, to_us, every_s):
        try:
            run = score_window(ctx, executor, lo, hi, version, wait_s=2 * lease_s)
        except FleetscoreError as exc:
            errors.append({"window_from": iso(lo), "window_to": iso(hi), "error": str(exc)})
            continue
        runs.append(run)
        if on_run:
            on_run(run)
    return BackfillResult(runs, errors)
