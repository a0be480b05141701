"""Retention (``fleetscore gc``): old predictions, logs, runs and versions go; what is released,
pinned, still needed by a schedule or held by a live run stays."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sched_support import ROWS_PER_HOUR, T0, T4, us

from fleetscore.catalog.schedules import ScheduleStore
from fleetscore.core.retention import RetentionFacts, VersionFact, plan_retention
from fleetscore.core.runs import RunRecord, RunStatus
from fleetscore.core.schedule import DueWindow, Plan, ScheduleSpec
from fleetscore.core.times import HOUR_US, iso
from fleetscore.services.gc import gc

DAY = 24 * HOUR_US
NOW = us("2026-03-01T00:00:00Z")


def run(run_id: str, window: str, created: str, status: RunStatus = RunStatus.SUCCEEDED, version: str = "v1") -> RunRecord:
    lo = us(window)
    return RunRecord(run_id, lo, lo + HOUR_US, version, status, created_at=us(created))


def facts(**changes: object) -> RetentionFacts:
    base = dict(
        cutoff_us=NOW - 30 * DAY,
        runs=[run("a" * 16, "2026-01-01T00:00:00Z", "2026-01-01T01:05:00Z"),
              run("b" * 16, "2026-01-01T01:00:00Z", "2026-01-01T02:05:00Z", version="v2"),
              run("c" * 16, "2026-02-20T00:00:00Z", "2026-02-20T01:05:00Z", version="v3"),
              run("d" * 16, "2026-01-01T02:00:00Z", "2026-01-01T03:05:00Z", RunStatus.RUNNING, version="v4")],
        committed={(us("2026-01-01T00:00:00Z"), us("2026-01-01T01:00:00Z")): "a" * 16,
                   (us("2026-01-01T01:00:00Z"), us("2026-01-01T02:00:00Z")): "b" * 16,
                   (us("2026-02-20T00:00:00Z"), us("2026-02-20T01:00:00Z")): "c" * 16},
        prediction_windows=[(us("2026-01-01T00:00:00Z"), us("2026-01-01T01:00:00Z")),
                            (us("2026-01-01T01:00:00Z"), us("2026-01-01T02:00:00Z")),
                            (us("2026-02-20T00:00:00Z"), us("2026-02-20T01:00:00Z"))],
        log_runs=["a" * 16, "c" * 16, "e" * 16],
        versions=[VersionFact(f"v{i}", us("2026-01-01T00:00:00Z"), "ready") for i in range(1, 7)]
        + [VersionFact("v7", us("2026-01-01T00:00:00Z"), "training")],
        released="v5",
        pinned_versions=frozenset({"v6"}),
        open_windows={(us("2026-01-01T01:00:00Z"), us("2026-01-01T02:00:00Z")): "schedule h has not finished this window"},
        schedule_rows=[("h", (us("2026-01-01T00:00:00Z"), us("2026-01-01T01:00:00Z")), "succeeded"),
                       ("h", (us("2026-01-01T01:00:00Z"), us("2026-01-01T02:00:00Z")), "pending")],
    )
    return RetentionFacts(**(base | changes))  # type: ignore[arg-type]


def test_policy_deletes_old_and_keeps_what_is_needed() -> None:
    plan = plan_retention(facts())
    assert plan.prediction_windows == [(us("2026-01-01T00:00:00Z"), us("2026-01-01T01:00:00Z"))]
    assert plan.runs == ["a" * 16]  # b holds kept predictions, c is recent, d is still running
    assert plan.logs == ["a" * 16, "e" * 16]  # e's run no longer exists
    assert plan.versions == ["v1"]  # v2..v4 used by kept runs, v5 released, v6 pinned, v7 still training
    assert plan.kept["version v5"] == "released" and plan.kept["version v6"] == "pinned by a schedule"
    assert plan.schedule_rows == [("h", us("2026-01-01T00:00:00Z"))]
    assert plan.reading_hours == []


def test_readings_only_when_asked_and_never_what_a_schedule_needs() -> None:
    hours = [us("2026-01-01T00:00:00Z") + h * HOUR_US for h in range(24 * 60)]
    asked = plan_retention(facts(readings=True, reading_hours=hours, needed_from_us=us("2026-01-10T00:00:00Z")))
    assert asked.reading_hours == [h for h in hours if h + HOUR_US <= us("2026-01-10T00:00:00Z")]
    nothing_needed = plan_retention(facts(readings=True, reading_hours=hours))
    assert nothing_needed.reading_hours == [h for h in hours if h + HOUR_US <= NOW - 30 * DAY]


def test_gc_on_a_real_home(fleet7, home7: Path, cli) -> None:  # type: ignore[no-untyped-def]
    first = fleet7.score("2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z")
    second = fleet7.score("2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z")
    fleet7.train(T0, T4, release=False)  # v2, not released
    store = ScheduleStore(fleet7.catalog)
    spec = ScheduleSpec(name="daily", cron="0 8 * * *", window_s=3600, cursor_us=us("2026-01-01T06:30:00Z"))
    store.add(spec)  # it still has to run 07:00-08:00, and so needs those readings
    store.record_plan(spec, Plan((DueWindow(us("2026-01-01T08:00:00Z"), us("2026-01-01T07:00:00Z"), us("2026-01-01T08:00:00Z")),),
                                 None, us("2026-01-01T08:00:00Z")))
    now = us("2027-06-01T00:00:00Z")  # everything is older than 30 days by then

    dry = cli("gc", "--keep", "30d", "--now", iso(now), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    assert dry.json["deleted"]["runs"] == 2 and dry.json["versions"] == ["v2"] and dry.json["dry_run"]
    assert fleet7.run(first.run_id)[0].run_id == first.run_id  # nothing deleted yet

    result = gc(replace(fleet7.context, clock=lambda: now), 30 * 86_400, readings=True)
    assert sorted(result.plan.runs) == sorted([first.run_id, second.run_id])
    assert result.plan.kept["version v1"] == "released"
    assert not (home7 / "data" / "predictions").exists() or not any((home7 / "data" / "predictions").iterdir())
    assert fleet7.runs() == [] and not any((home7 / "data" / "logs").iterdir())
    assert fleet7.version("v2").status == "deleted" and not (home7 / "data" / "models" / "v2").exists()
    assert fleet7.version("v1").status == "ready" and fleet7.catalog.released() == "v1"
    hours = sorted(p.parent.name + "/" + p.name for p in (home7 / "data" / "readings").glob("date=*/hour=*"))
    assert hours == ["date=2026-01-01/hour=07"]  # the schedule's open window keeps its readings
    assert fleet7.readings("2026-01-01T07:00:00Z", "2026-01-01T08:00:00Z").num_rows == ROWS_PER_HOUR
    assert [w.status for w in store.windows("daily")] == ["pending"]
    refused = cli("score", "--from", "2026-01-01T07:00:00Z", "--to", "2026-01-01T08:00:00Z", "--version", "v2", "--json")
    assert refused.exit_code == 2 and "deleted" in refused.json["error"]
