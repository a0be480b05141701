"""Due-window planning is a pure function of (schedule, cursor, now): fake clocks need no sleeping."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_support import us

from fleetscore.core.times import HOUR_US, iso
from fleetscore.errors import InputError
from fleetscore.core.schedule import ScheduleSpec, check_cron, check_name, next_fire, plan_due, window_of

#: Fires at minute 5 of every hour; its last tick planned the fire of 00:05.
HOURLY = ScheduleSpec(name="hourly", cron="5 * * * *", window_s=3600, cursor_us=us("2026-01-01T00:05:00Z"))


def windows(plan) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(iso(d.from_us), iso(d.to_us)) for d in plan.due]


def test_a_fire_runs_the_window_that_just_ended() -> None:
    plan = plan_due(HOURLY, us("2026-01-01T01:05:00Z"), max_catch_up=24)  # a fire exactly at now is due
    assert windows(plan) == [("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z")]
    assert plan.cursor_us == us("2026-01-01T01:05:00Z") and plan.skipped is None
    assert plan_due(HOURLY, us("2026-01-01T01:04:59Z"), 24).due == ()


def test_lag_waits_for_late_data() -> None:
    lagged = replace(HOURLY, cron="0 * * * *", lag_s=600, cursor_us=us("2026-01-01T01:30:00Z"))
    assert windows(plan_due(lagged, us("2026-01-01T02:00:00Z"), 24)) == [
        ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z")]  # 02:00 - 10 min = 01:50: the last whole hour is 00-01


def test_downtime_catches_up_oldest_first_then_nothing_twice() -> None:
    plan = plan_due(HOURLY, us("2026-01-01T05:10:00Z"), 24)
    assert windows(plan) == [(f"2026-01-01T0{h}:00:00Z", f"2026-01-01T0{h + 1}:00:00Z") for h in range(5)]
    again = plan_due(replace(HOURLY, cursor_us=plan.cursor_us), us("2026-01-01T05:50:00Z"), 24)
    assert again.due == ()


def test_catch_up_is_capped_and_the_older_span_is_reported_skipped() -> None:
    plan = plan_due(HOURLY, us("2026-01-01T05:10:00Z"), max_catch_up=2)
    assert windows(plan) == [("2026-01-01T03:00:00Z", "2026-01-01T04:00:00Z"), ("2026-01-01T04:00:00Z", "2026-01-01T05:00:00Z")]
    assert plan.skipped == (us("2026-01-01T00:00:00Z"), us("2026-01-01T03:00:00Z"))


def test_several_fires_of_one_window_plan_it_once() -> None:
    every_15 = replace(HOURLY, cron="*/15 * * * *", cursor_us=us("2026-01-01T00:59:00Z"))
    assert windows(plan_due(every_15, us("2026-01-01T02:20:00Z"), 24)) == [
        ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"), ("2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z")]


def test_paused_or_clock_behind_plans_nothing() -> None:
    assert plan_due(replace(HOURLY, paused=True), us("2026-01-01T05:00:00Z"), 24).due == ()
    behind = plan_due(HOURLY, us("2025-12-31T00:00:00Z"), 24)
    assert behind.due == () and behind.cursor_us == HOURLY.cursor_us


def test_training_windows_end_on_the_hour() -> None:
    nightly = ScheduleSpec(name="n", cron="30 2 * * *", window_s=7 * 86_400, kind="train")
    w = window_of(nightly, us("2026-01-08T02:30:00Z"))
    assert (iso(w.from_us), iso(w.to_us)) == ("2026-01-01T02:00:00Z", "2026-01-08T02:00:00Z")
    assert next_fire(nightly, us("2026-01-08T02:30:00Z")) == us("2026-01-09T02:30:00Z")


@pytest.mark.parametrize("expr,needle", [
    ("61 * * * *", "out of range"),
    ("5 * * *", "expected 5 fields"),
    ("*/5 * * * * *", "expected 5 fields"),
    ("x * * * *", "bad cron"),
    ("", "expected 5 fields"),
])
def test_bad_cron_says_why(expr: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        check_cron(expr)


def test_good_cron_is_normalised() -> None:
    assert check_cron("  5  *  * * * ") == "5 * * * *"
    assert check_cron("@hourly") == "@hourly"


@pytest.mark.parametrize("name", ["", "a b", "../x", "x" * 65, "-lead"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InputError, match="schedule name"):
        check_name(name)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=40))
def test_any_sequence_of_ticks_runs_each_hourly_window_exactly_once(steps: list[int]) -> None:
    """Ticking at arbitrary times (minutes apart) plans every window once, in order, none twice."""
    spec, now, seen = HOURLY, HOURLY.cursor_us, []
    for minutes in steps:
        now += minutes * 60_000_000
        plan = plan_due(spec, now, max_catch_up=10_000)
        seen += [d.from_us for d in plan.due]
        spec = replace(spec, cursor_us=plan.cursor_us)
    fires = (now - HOURLY.cursor_us) // HOUR_US  # 01:05, 02:05, ... up to now
    assert seen == [us("2026-01-01T00:00:00Z") + k * HOUR_US for k in range(fires)]
