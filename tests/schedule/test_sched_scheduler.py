"""The scheduler against real scoring, storage and catalog, driven by a fake clock."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

from sched_support import ROWS_PER_HOUR, set_schedule_settings, shard_path, shard_sizes, us, wait_for

from fleetscore.catalog.schedules import ScheduleStore
from fleetscore.core.schedule import ScheduleSpec
from fleetscore.core.times import iso
from fleetscore.schedule.scheduler import Scheduler, start_scheduler_thread


class FakeClock:
    def __init__(self, start: str) -> None:
        self.now = us(start)

    def __call__(self) -> int:
        return self.now

    def set(self, text: str) -> None:
        self.now = us(text)


def add_hourly(fleet, start: str, name: str = "hourly", **changes) -> ScheduleSpec:  # type: ignore[no-untyped-def]
    spec = ScheduleSpec(name=name, cron="5 * * * *", window_s=3600, cursor_us=us(start), **changes)
    ScheduleStore(fleet.catalog).add(spec)
    return spec


def runs_by_window(fleet) -> Counter:  # type: ignore[no-untyped-def]
    return Counter(iso(r.window_from) for r in fleet.runs(1000))


def window_dir(home: Path, lo: str, hi: str) -> Path:
    return home / "data" / "predictions" / f"window={lo.replace('-', '').replace(':', '')}_{hi.replace('-', '').replace(':', '')}"


def committed(home: Path, lo: str, hi: str) -> dict:
    return json.loads((window_dir(home, lo, hi) / "_COMMITTED.json").read_text())


def hours(a: int, b: int) -> list[str]:
    return [f"2026-01-01T{h:02d}:00:00Z" for h in range(a, b)]


def test_hourly_schedule_fires_each_window_once(fleet7) -> None:  # type: ignore[no-untyped-def]
    add_hourly(fleet7, "2026-01-01T04:00:00Z")
    clock = FakeClock("2026-01-01T04:00:00Z")
    sched = Scheduler(fleet7, clock=clock)
    try:
        for minute in range(10, 4 * 60, 10):  # a tick every 10 minutes from 04:10 to 07:50
            clock.now = us("2026-01-01T04:00:00Z") + minute * 60_000_000
            sched.tick()
            fires = (minute - 5) // 60 + 1  # fires at 04:05, 05:05, ... so far
            assert sum(runs_by_window(fleet7).values()) == fires
    finally:
        sched.close()
    runs = sorted(fleet7.runs(1000), key=lambda r: r.created_at)
    assert [iso(r.window_from) for r in runs] == hours(3, 7)  # each window once, in order
    assert all(r.status.value == "succeeded" and r.rows == ROWS_PER_HOUR and r.schedule == "hourly" for r in runs)
    rows = ScheduleStore(fleet7.catalog).windows("hourly")
    assert {(w.window_from, w.status, w.run_id) for w in rows} == {(r.window_from, "succeeded", r.run_id) for r in runs}
    for run in runs:  # one run folder per window, holding one file per shard
        pointer = committed(fleet7.config.home, iso(run.window_from), iso(run.window_to))
        folder = window_dir(fleet7.config.home, iso(run.window_from), iso(run.window_to))
        assert pointer["run_id"] == run.run_id and len(pointer["files"]) == len(shard_sizes(fleet7))
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [f"run={run.run_id}"]


def test_downtime_of_five_hours_catches_up_five_windows_in_order(fleet7) -> None:  # type: ignore[no-untyped-def]
    add_hourly(fleet7, "2026-01-01T01:30:00Z")
    clock = FakeClock("2026-01-01T02:06:00Z")
    sched = Scheduler(fleet7, clock=clock)
    try:
        first = sched.tick()
        assert [iso(r.window_from) for r in first.ran] == hours(1, 2)
        clock.set("2026-01-01T07:06:00Z")  # the scheduler was down from 02:06 to 07:06
        report = sched.tick()
    finally:
        sched.close()
    assert [p["window_from"] for p in report.planned] == hours(2, 7)
    assert [iso(r.window_from) for r in report.ran] == hours(2, 7) and {r.status for r in report.ran} == {"succeeded"}
    runs = sorted(fleet7.runs(1000), key=lambda r: r.created_at)
    assert [iso(r.window_from) for r in runs] == hours(1, 7)


def test_catch_up_is_capped_and_skipped_windows_are_recorded(fleet7) -> None:  # type: ignore[no-untyped-def]
    add_hourly(fleet7, "2026-01-01T01:30:00Z")
    sched = Scheduler(fleet7, clock=FakeClock("2026-01-01T07:06:00Z"))
    sched.settings = sched.settings.with_overrides(max_catch_up=2)
    try:
        report = sched.tick()
    finally:
        sched.close()
    assert [iso(r.window_from) for r in report.ran] == hours(5, 7)
    assert report.skipped == [{"schedule": "hourly", "from": "2026-01-01T01:00:00Z", "to": "2026-01-01T05:00:00Z"}]
    statuses = {iso(w.window_from): w.status for w in ScheduleStore(fleet7.catalog).windows("hourly")}
    assert statuses == {"2026-01-01T01:00:00Z": "skipped", "2026-01-01T05:00:00Z": "succeeded",
                        "2026-01-01T06:00:00Z": "succeeded"}


def test_two_scheduler_processes_never_run_a_window_twice(fleet7, spawn) -> None:  # type: ignore[no-untyped-def]
    add_hourly(fleet7, "2026-01-01T01:30:00Z")
    procs = [spawn("scheduler", "--once", "--now", "2026-01-01T07:06:00Z", "--json") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    ran = [r for out, _ in outs for r in json.loads(out)["ran"]]
    assert sorted(r["window_from"] for r in ran) == hours(1, 7)  # between them, every window once
    assert runs_by_window(fleet7) == Counter({h: 1 for h in hours(1, 7)})
    assert all(r.status.value == "succeeded" for r in fleet7.runs(1000))


def test_two_scheduler_threads_on_one_catalog(home7: Path) -> None:
    from fleetscore.api import Fleet

    fleets = [Fleet.open(home7) for _ in range(2)]
    add_hourly(fleets[0], "2026-01-01T01:30:00Z")
    threads = [start_scheduler_thread(f, clock=FakeClock("2026-01-01T07:06:00Z")) for f in fleets]
    try:
        wait_for(lambda: sum(runs_by_window(fleets[0]).values()) >= 6 and all(
            w.status == "succeeded" for w in ScheduleStore(fleets[0].catalog).windows("hourly")), what="6 windows")
    finally:
        for t in threads:
            t.stop(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert runs_by_window(fleets[0]) == Counter({h: 1 for h in hours(1, 7)})
    for f in fleets:
        f.close()


def test_kill_9_during_a_run_then_restart_completes_the_window_once(home7: Path, fleet7, spawn) -> None:  # type: ignore[no-untyped-def]
    # shard 1 is unreadable and the retry waits 60 s: the run is certainly in progress when it is killed
    set_schedule_settings(home7, retries=3, retry_backoff=60)
    good = shard_path(home7, 1).read_bytes()
    shard_path(home7, 1).write_bytes(b"not a model")
    add_hourly(fleet7, "2026-01-01T06:00:00Z")
    proc = spawn("scheduler", "--now", "2026-01-01T06:06:00Z", "--lease", "2s")
    run_id = wait_for(lambda: next((r.run_id for r in fleet7.runs()), None), what="the run to start")
    expected = {t: "retrying" if t == 1 else "succeeded" for t in shard_sizes(fleet7)}
    wait_for(lambda: {t.task: t.status for t in fleet7.run(run_id)[1]} == expected, what="shard 1 to wait for its retry")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = fleet7.run(run_id)
    assert killed[0].status.value in ("running", "abandoned")  # killed mid-run: nobody finished it
    done_before = {t.task: t for t in killed[1] if t.status == "succeeded"}
    shard_path(home7, 1).write_bytes(good)  # the operator repairs the shard

    set_schedule_settings(home7, retries=3, retry_backoff=0.05)
    from fleetscore.api import Fleet

    fleet = Fleet.open(home7)
    sched = Scheduler(fleet, clock=FakeClock("2026-01-01T06:06:00Z"))
    try:  # the dead scheduler's lease expires after 2 s; until then the window is left alone
        wait_for(lambda: sched.tick().ran, what="the window to be taken over")
    finally:
        sched.close()
    run, tasks, failures = fleet.run(run_id)
    assert run.status.value == "succeeded" and run.rows == ROWS_PER_HOUR and not failures
    assert runs_by_window(fleet) == Counter({"2026-01-01T05:00:00Z": 1})  # resumed, not run again
    assert committed(home7, "2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z")["run_id"] == run_id
    for t in tasks:  # only the task that had not succeeded ran again
        if t.task in done_before:
            assert (t.worker, t.wall_s, t.attempts) == (done_before[t.task].worker, done_before[t.task].wall_s, 1)
    assert next(t for t in tasks if t.task == 1).attempts >= 2
    table = fleet.predictions(run_id=run_id)
    assert table.num_rows == ROWS_PER_HOUR
    keys = set(zip(table.column("device").to_pylist(), table.column("sensor").to_pylist(), table.column("ts").to_pylist()))
    assert len(keys) == ROWS_PER_HOUR  # no duplicates
    fleet.close()


def test_train_schedule_trains_and_releases(fleet7) -> None:  # type: ignore[no-untyped-def]
    spec = ScheduleSpec(name="nightly", cron="0 5 * * *", window_s=4 * 3600, kind="train",
                        cursor_us=us("2026-01-01T04:30:00Z"))
    ScheduleStore(fleet7.catalog).add(spec)
    sched = Scheduler(fleet7, clock=FakeClock("2026-01-01T05:01:00Z"))
    try:
        report = sched.tick()
    finally:
        sched.close()
    (row,) = report.ran
    assert (row.window_from, row.window_to, row.status, row.version) == (
        us("2026-01-01T01:00:00Z"), us("2026-01-01T05:00:00Z"), "succeeded", "v2")
    assert fleet7.catalog.released() == "v2" and fleet7.version("v2").train_from == us("2026-01-01T01:00:00Z")


def test_schedule_without_a_version_waits_then_fails_with_a_reason(fleet7) -> None:  # type: ignore[no-untyped-def]
    add_hourly(fleet7, "2026-01-01T05:30:00Z", version="v9")
    sched = Scheduler(fleet7, clock=FakeClock("2026-01-01T06:06:00Z"))
    try:
        sched.tick()
        row = ScheduleStore(fleet7.catalog).windows("hourly")[0]
        assert row.status == "pending" and "v9" in row.error  # tried again next tick (retries = 1)
        sched.tick()
    finally:
        sched.close()
    row = ScheduleStore(fleet7.catalog).windows("hourly")[0]
    assert row.status == "failed" and row.attempts == 2 and "v9" in row.error


def test_paused_schedule_runs_nothing_until_resumed(fleet7) -> None:  # type: ignore[no-untyped-def]
    add_hourly(fleet7, "2026-01-01T04:30:00Z")
    store = ScheduleStore(fleet7.catalog)
    store.set_paused("hourly", True)
    clock = FakeClock("2026-01-01T06:06:00Z")
    sched = Scheduler(fleet7, clock=clock)
    try:
        assert sched.tick().ran == [] and fleet7.runs() == []
        store.set_paused("hourly", False)
        assert [iso(r.window_from) for r in sched.tick().ran] == hours(4, 6)  # missed while paused: caught up
    finally:
        sched.close()


def test_an_abandoned_run_is_not_resumed_over_a_newer_one(fleet7) -> None:  # type: ignore[no-untyped-def]
    """A run whose lease was lost is abandoned; if the window was scored again meanwhile, the
    scheduler records that newer run for the window instead of resuming the old one over it."""
    from fleetscore.core.schedule import plan_due
    from fleetscore.exec.control import RunControl, RunStopped, StopFlag
    from fleetscore.services.runs import LEASE_LOST
    from fleetscore.services.score import score

    spec = add_hourly(fleet7, "2026-01-01T05:30:00Z")
    store = ScheduleStore(fleet7.catalog)
    store.record_plan(spec, plan_due(spec, us("2026-01-01T06:06:00Z"), 24))
    lost = StopFlag()
    lost.set(LEASE_LOST)
    store.update_window("hourly", us("2026-01-01T05:00:00Z"), status="running", run_id="ab" * 16)
    executor = fleet7.executor(workers=1)
    try:
        try:
            score(fleet7.context, executor, us("2026-01-01T05:00:00Z"), us("2026-01-01T06:00:00Z"), "v1",
                  schedule="hourly", run_id="ab" * 16, control=RunControl(stop=lost))
        except RunStopped as exc:
            assert exc.reason == LEASE_LOST
    finally:
        executor.close()
    assert fleet7.run("ab" * 16)[0].status.value == "abandoned"  # no live process holds it
    newer = fleet7.score("2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z")
    sched = Scheduler(fleet7, clock=FakeClock("2026-01-01T06:06:00Z"))
    try:
        report = sched.tick()
    finally:
        sched.close()
    assert [(r.run_id, r.status) for r in report.ran] == [(newer.run_id, "succeeded")]
    old = fleet7.run("ab" * 16)[0]
    assert old.status.value == "failed" and newer.run_id in old.error
    assert runs_by_window(fleet7) == Counter({"2026-01-01T05:00:00Z": 2})  # no third run
