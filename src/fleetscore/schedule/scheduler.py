"""The scheduler: plans due windows of every schedule, then runs them oldest first, each under its lease.

One :meth:`Scheduler.tick` does two things. It plans: for each active schedule, the windows due
since its cursor (:func:`~fleetscore.core.schedule.plan_due`) become ``pending`` rows, and the
cursor moves by compare-and-set, so concurrent schedulers plan each fire once. Then it runs: every
open window row, oldest first, is taken under its lease (a window held by another live scheduler is
left to it), read again, and scored (or trained). A row left ``running`` by a scheduler that crashed
is taken over once its lease expires and its run is resumed: only the tasks that did not succeed
run again, into the same run, so the window completes once.

``fleetscore scheduler`` loops over ticks; ``fleetscore serve`` can run the same loop in a thread
(:func:`start_scheduler_thread`). ``clock`` is injectable (µs), so tests drive it with a fake clock.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from fleetscore.catalog.schedules import OPEN_STATUSES, PENDING, RUNNING, ScheduleStore, WindowRow
from fleetscore.clock import Clock, wall_clock
from fleetscore.config import ScheduleSettings
from fleetscore.core.runs import RunRecord, RunStatus
from fleetscore.core.schedule import ScheduleSpec, next_fire, plan_due
from fleetscore.core.times import SECOND_US, iso
from fleetscore.errors import FleetscoreError, NotFoundError
from fleetscore.exec.base import Executor
from fleetscore.exec.control import CANCELLED, RunStopped
from fleetscore.services import runs
from fleetscore.services.context import Context
from fleetscore.services.runs import HeldLease, LeaseBusy, committed_run, hold_lease, score_lease_key

if TYPE_CHECKING:
    from fleetscore.api import Fleet

Say = Callable[[str], None]


@dataclass
class TickReport:
    """What one tick planned and ran (window rows as they ended up), and spans skipped beyond catch-up."""

    planned: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    ran: list[WindowRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"planned": self.planned, "skipped": self.skipped, "ran": [r.as_dict() for r in self.ran]}

    def add(self, other: TickReport) -> None:
        """Add another tick's report to this one (a daemon's running total)."""
        self.planned += other.planned
        self.skipped += other.skipped
        self.ran += other.ran


class Scheduler:
    """Runs the schedules of one home. Not thread-safe: one scheduler per thread (many per catalog are fine)."""

    def __init__(self, fleet: Fleet, *, clock: Clock = wall_clock, settings: ScheduleSettings | None = None,
                 workers: int | None = None, say: Say | None = None) -> None:
        self.fleet = fleet
        self.clock = clock
        self.settings = settings or fleet.config.schedule
        self.workers = workers
        self.say: Say = say or (lambda message: None)
        self.store = ScheduleStore(fleet.context.catalog)
        self._executor: Executor | None = None

    @property
    def context(self) -> Context:
        """The fleet's services context with this scheduler's ``[schedule]`` settings. (Its clock says
        which windows are due; records keep the fleet's own clock.)"""
        ctx = self.fleet.context
        return replace(ctx, config=replace(ctx.config, schedule=self.settings))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    # --- the loop ------------------------------------------------------------------------------
    def tick(self) -> TickReport:
        """Plan every active schedule at ``clock()``, then run every open window this process can lease."""
        report = TickReport()
        now = self.clock()
        for spec in self.store.all():
            if not spec.paused:
                self._plan(spec, now, report)
        for row in self.store.open_windows():
            done = self._take(row)
            if done is not None:
                report.ran.append(done)
        return report

    def run(self, stop: threading.Event, on_tick: Callable[[TickReport], None] | None = None) -> None:
        """Tick until ``stop`` is set; between ticks sleep until the next fire, at most ``poll``."""
        while not stop.is_set():
            try:
                report = self.tick()
            except FleetscoreError as exc:  # e.g. the catalog is unreachable for a while: say so, keep going
                self.say(f"tick failed: {exc}")
            else:
                if on_tick:
                    on_tick(report)
            stop.wait(self._sleep_s())

    def _sleep_s(self) -> float:
        now = self.clock()
        fires = [next_fire(s, now) for s in self.store.all() if not s.paused]
        until = (min(fires) - now) / SECOND_US if fires else self.settings.poll_s
        return max(0.05, min(self.settings.poll_s, until))

    # --- planning ------------------------------------------------------------------------------
    def _plan(self, spec: ScheduleSpec, now: int, report: TickReport) -> None:
        for _ in range(5):  # another scheduler may move the cursor between our read and our write
            plan = plan_due(spec, now, self.settings.max_catch_up)
            if plan.cursor_us == spec.cursor_us or self.store.record_plan(spec, plan):
                break
            spec = self.store.get(spec.name)
        else:
            return
        for d in plan.due:
            report.planned.append({"schedule": spec.name, "window_from": iso(d.from_us), "window_to": iso(d.to_us)})
        if plan.skipped:
            lo, hi = plan.skipped
            report.skipped.append({"schedule": spec.name, "from": iso(lo), "to": iso(hi)})
            self.say(f"{spec.name}: skipped missed windows {iso(lo)}..{iso(hi)} (more than max_catch_up="
                     f"{self.settings.max_catch_up}); run them with `fleetscore backfill` if needed")

    # --- running -------------------------------------------------------------------------------
    def _take(self, row: WindowRow) -> WindowRow | None:
        """Run (or resume) one open window if its lease is free; the row as it ended, or None if not ours."""
        try:
            spec = self.store.get(row.schedule)
        except NotFoundError:
            return None
        if spec.paused:
            return None
        lo, hi = row.window_from, row.window_to
        key = score_lease_key(lo, hi) if spec.kind == "score" else f"train:{spec.name}"
        try:
            with hold_lease(self.context, key) as lease:
                fresh = self.store.window(row.schedule, row.window_from)
                if fresh is None or fresh.status not in OPEN_STATUSES:
                    return None  # another scheduler finished it meanwhile
                if spec.kind == "train":
                    self._train(spec, fresh)
                else:
                    self._score(spec, fresh, lease, lo, hi)
        except LeaseBusy:
            return None
        return self.store.window(row.schedule, row.window_from)

    def _score(self, spec: ScheduleSpec, row: WindowRow, lease: HeldLease, lo: int, hi: int) -> None:
        ctx = self.context
        prior = self._run_record(row.run_id)
        # its run ended after all (e.g. cancelled); one whose process died (abandoned) is resumed below
        if prior is not None and prior.status.finished and prior.status is not RunStatus.ABANDONED:
            self.store.update_window(row.schedule, row.window_from, status=prior.status.value)
            return
        current = committed_run(ctx, lo, hi)
        if prior is not None and current not in (None, prior.run_id):
            now_held = self._run_record(current)
            # scored again by hand after this run began (a commit older than the run is what it was to replace)
            if now_held is None or now_held.created_at > prior.created_at:
                ctx.catalog.save_run(prior.with_status(
                    RunStatus.FAILED, finished_at=ctx.clock(), error=f"abandoned: window scored again by run {current}"))
                self.store.update_window(row.schedule, row.window_from, run_id=current,
                                         status=now_held.status.value if now_held else RunStatus.SUCCEEDED.value)
                return
        version = prior.version if prior else (spec.version or ctx.catalog.released())
        if version is None:
            self._failed(row, "no released model version: train one, or give the schedule --version")
            return
        run_id = row.run_id or uuid.uuid4().hex
        self.store.update_window(row.schedule, row.window_from, status=RUNNING, run_id=run_id, version=version,
                                 attempts=row.attempts + 1, error=None)
        what = "resuming" if prior else "scoring"
        self.say(f"{spec.name}: {what} {_span(row)} with {version} (run {run_id})")
        executor = self._ensure_executor()
        try:
            if prior is not None:
                run = runs.resume_run(ctx, executor, prior, lease=lease)
            else:
                run = runs.score_window(ctx, executor, lo, hi, version, schedule=spec.name, run_id=run_id, lease=lease)
        except RunStopped as exc:
            if exc.reason == CANCELLED:
                self.store.update_window(row.schedule, row.window_from, status=RunStatus.CANCELLED.value)
            self.say(f"{spec.name}: run {run_id} stopped: {exc.reason}")
            return  # a lost lease leaves the row to the scheduler that took it over
        except FleetscoreError as exc:
            self._failed(row, str(exc))
            return
        self.store.update_window(row.schedule, row.window_from, status=run.status.value, error=run.error)
        self.say(f"{spec.name}: {_span(row)} {run.status.value}: {run.rows:,} rows, "
                 f"{run.anomalies:,} anomalies, {run.failed_models} failed models (run {run_id})")

    def _train(self, spec: ScheduleSpec, row: WindowRow) -> None:
        self.store.update_window(row.schedule, row.window_from, status=RUNNING, attempts=row.attempts + 1, error=None)
        self.say(f"{spec.name}: training on {_span(row)}")
        try:
            result = self.fleet.train(iso(row.window_from), iso(row.window_to), release=spec.release, workers=self.workers)
        except FleetscoreError as exc:
            self._failed(row, str(exc))
            return
        self.store.update_window(row.schedule, row.window_from, status=RunStatus.SUCCEEDED.value,
                                 version=result.version)
        self.say(f"{spec.name}: trained {result.version}: {result.models:,} models"
                 + (" (released)" if result.released else ""))

    def _failed(self, row: WindowRow, error: str) -> None:
        """A window that failed before its run could finish: tried again next tick, up to ``retries`` times."""
        attempts = row.attempts + 1
        status = PENDING if attempts <= self.settings.retries else RunStatus.FAILED.value
        self.store.update_window(row.schedule, row.window_from, status=status, attempts=attempts, error=error)
        self.say(f"{row.schedule}: {_span(row)} failed ({error})"
                 + (", will try again" if status == PENDING else ""))

    def _run_record(self, run_id: str | None) -> RunRecord | None:
        if run_id is None:
            return None
        try:
            return self.fleet.context.catalog.get_run(run_id)
        except NotFoundError:
            return None

    def _ensure_executor(self) -> Executor:
        if self._executor is None:
            self._executor = self.fleet.executor(workers=self.workers)
        return self._executor


def warm_kernel_in_background() -> None:
    """Load the ocsvm kernel (numba) in a daemon thread, once per long-lived process: its runs that execute
    in-process (`fleetscore.core.execution`) then find it loaded instead of falling back to numpy."""
    if importlib.util.find_spec("numba") is not None:
        threading.Thread(target=importlib.import_module, args=("fleetscore.exec.warm",), name="kernel warm-up",
                         daemon=True).start()


def run_until_signalled(scheduler: Scheduler, total: TickReport) -> TickReport:
    """Tick until SIGTERM or SIGINT (``fleetscore scheduler``), adding every tick's report to ``total``; alert
    notifications are delivered meanwhile in a thread (when receivers are configured)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    s = scheduler.settings
    warm_kernel_in_background()
    scheduler.say(f"scheduler started (poll {s.poll_s:g}s, lease {s.lease_s:g}s, max catch-up {s.max_catch_up})")
    delivery = scheduler.fleet.alert_delivery_thread(scheduler.say)  # alerts go out while windows run
    try:
        scheduler.run(stop, on_tick=total.add)
    finally:
        if delivery is not None:
            delivery.stop()
    scheduler.say("scheduler stopped")
    return total


class SchedulerThread:
    """A scheduler looping in a daemon thread of this process; :meth:`stop` ends it after the current window."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fleetscore-scheduler", daemon=True)

    def start(self) -> SchedulerThread:
        warm_kernel_in_background()
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self.scheduler.run(self._stop)
        finally:
            self.scheduler.close()
            self.scheduler.fleet.close()  # the thread's own Fleet (see start_scheduler_thread)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)


def start_scheduler_thread(fleet: Fleet, *, settings: ScheduleSettings | None = None, workers: int | None = None,
                           say: Say | None = None, clock: Clock = wall_clock) -> SchedulerThread:
    """Run the scheduler of ``fleet``'s home in a background thread (for ``fleetscore serve``).

    The thread opens its own :class:`~fleetscore.api.Fleet` (own catalog connections) from the same
    config. Call ``.stop()`` on shutdown: the window being run finishes first.
    """
    from fleetscore.api import Fleet

    own = Fleet(fleet.config)
    return SchedulerThread(Scheduler(own, clock=clock, settings=settings, workers=workers, say=say)).start()


def _span(row: WindowRow) -> str:
    """The row's window as operators read it in the scheduler's log."""
    return f"{iso(row.window_from)}..{iso(row.window_to)}"
