"""A scheduler keeps its executor's pool warm from run to run, and replaces it after a worker dies."""

from __future__ import annotations

import os
import signal

import pytest
from sched_support import ROWS_PER_HOUR, us, wait_for

from fleetscore.api import Fleet
from fleetscore.catalog.schedules import ScheduleStore
from fleetscore.core import ocsvm
from fleetscore.core.schedule import ScheduleSpec
from fleetscore.schedule.scheduler import Scheduler


def _workers(fleet: Fleet, run_id: str) -> set[int]:
    """The pids of the processes that ran the run's tasks."""
    return {int(t.worker.rsplit(":", 1)[1]) for t in fleet.run(run_id)[1]}


def test_pool_stays_warm_across_scheduled_runs_and_is_replaced_after_a_worker_dies(home7) -> None:  # type: ignore[no-untyped-def]
    now = {"us": us("2026-01-01T05:10:00Z")}
    fleet = Fleet.open(home7, workers=2, in_process="never")  # small runs would run in-process otherwise
    ScheduleStore(fleet.catalog).add(ScheduleSpec(name="hourly", cron="5 * * * *", window_s=3600,
                                                  cursor_us=us("2026-01-01T04:00:00Z")))
    sched = Scheduler(fleet, clock=lambda: now["us"])
    try:
        seen: set[str] = set()

        def next_runs():  # type: ignore[no-untyped-def]
            """Tick, move the clock an hour on; the runs that tick made, oldest first."""
            sched.tick()
            now["us"] += 3600 * 1_000_000
            new = sorted((r for r in fleet.runs(100) if r.run_id not in seen), key=lambda r: r.created_at)
            seen.update(r.run_id for r in new)
            assert new and all(r.status.value == "succeeded" and r.rows == ROWS_PER_HOUR for r in new)
            return new

        first = next_runs()
        pool = sched._executor._pool
        later = next_runs()
        reasons = [r.extra["execution"]["reason"] for r in first + later]
        assert all(r.extra["execution"]["mode"] == "pool" for r in first + later)
        assert "pool start" in reasons[0]  # the first run paid the start ...
        assert all("warm pool" in why for why in reasons[1:])  # ... the later ones found it running
        assert sched._executor._pool is pool and _workers(fleet, later[-1].run_id) <= set(pool._processes)
        assert os.getpid() not in _workers(fleet, later[-1].run_id)

        victim = next(iter(pool._processes))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pool._broken, what="the pool to see its dead worker")
        third = next_runs()[-1]
        assert sched._executor._pool is not pool  # replaced, not reused broken
        assert victim not in _workers(fleet, third.run_id) and _workers(fleet, third.run_id) <= set(
            sched._executor._pool._processes)
    finally:
        sched.close()
        fleet.close()


def test_a_small_run_executes_in_the_driver_and_says_why(home7) -> None:  # type: ignore[no-untyped-def]
    fleet = Fleet.open(home7, workers=2)  # in_process = auto: 18 models cost less than starting a pool
    try:
        run = fleet.score("2026-01-01T04:00:00Z", "2026-01-01T05:00:00Z")
        execution = run.extra["execution"]
        loaded = ocsvm.numba_kernel_loaded()  # by an earlier run of this process: then numba costs nothing more
        assert execution["mode"] == "in-process" and execution["workers"] == 1
        assert execution["kernel"] == ("numba" if loaded else "numpy")
        assert execution["estimated_s"] < execution["other_s"] and "pool start" in execution["reason"]
        assert _workers(fleet, run.run_id) == {os.getpid()} and run.rows == ROWS_PER_HOUR
        scores = fleet.predictions(run_id=run.run_id).column("score").to_pylist()
        on_pool = Fleet.open(home7, workers=2, in_process="never")
        try:
            pooled = on_pool.score("2026-01-01T04:00:00Z", "2026-01-01T05:00:00Z")
            assert pooled.extra["execution"]["mode"] == "pool" and os.getpid() not in _workers(fleet, pooled.run_id)
            assert fleet.predictions(run_id=pooled.run_id).column("score").to_pylist() == pytest.approx(scores)
        finally:
            on_pool.close()
    finally:
        fleet.close()
