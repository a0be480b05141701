"""Incidents from real scoring runs: continuation across windows, re-scoring exactly once, superseding, quiet periods."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from fleetscore.api import Fleet
from fleetscore.catalog.incidents import IncidentStore
from fleetscore.core.incidents import RESOLVED, SUPERSEDED, flags_of, fragments, group_flags
from fleetscore.core.times import parse_time
from fleetscore.services import incidents as building
from fleetscore.storage import layout

T0, T6, T7, T8 = "2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z", "2026-01-01T08:00:00Z"
W1, W2 = (T6, T7), (T7, T8)
MIN = 60_000_000
HOSTILE = "pump \"17\" <b>&amp;</b> 'x' [bold]{{x}}"


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, small_fleet) -> Path:  # type: ignore[no-untyped-def]
    """small_fleet (dev-00002 renamed to a hostile id), trained on [T0, T6): v1 released, v2 with fewer alarms."""
    home = tmp_path_factory.mktemp("incidents") / "home"
    readings = small_fleet.select(["ts", "device", "sensor", "value"])
    names = pc.if_else(pc.equal(readings.column("device"), "dev-00002"), HOSTILE, readings.column("device"))
    readings = readings.set_column(1, "device", names)
    fleet = Fleet.open(home, workers=1)
    fleet.import_table(readings)
    fleet.train(T0, T6)
    fleet.train(T0, T6, alarm_rate=1e-7, release=False)
    fleet.close()
    return home


@pytest.fixture
def fleet(trained_home: Path, home: Path):  # type: ignore[no-untyped-def]
    shutil.copytree(trained_home, home)
    f = Fleet.open(home, workers=1)
    yield f
    f.close()


def spans(incidents) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    """(device, start, last, flags, sensors) of the live incidents, sorted."""
    return sorted((i.device, i.start_us, i.last_us, i.flags, i.sensors) for i in incidents if i.status != SUPERSEDED)


def expected(fleet: Fleet, start: str, end: str) -> list[tuple]:  # type: ignore[type-arg]
    """The committed flags of [start, end) grouped at once with the default gap (5 minute readings)."""
    p = fleet.predictions(start=start, end=end)
    p = p.filter(p.column("is_anomaly"))
    groups = fragments(group_flags(pc.cast(p.column("ts"), pa.int64()).to_numpy(), p.column("device").to_pylist(),
                         p.column("sensor").to_pylist(), pc.fill_null(p.column("severity"), np.nan).to_numpy(),
                         {d: 5 * MIN for d in p.column("device").to_pylist()}))
    return sorted((g.device, g.start_us, g.last_us, g.flags, g.sensors) for g in groups)


def everything(fleet: Fleet) -> list:  # type: ignore[type-arg]
    return fleet.incidents(limit=10_000) + fleet.incidents(status=SUPERSEDED, limit=10_000)


def test_adjacent_windows_extend_one_incident_not_two(fleet: Fleet) -> None:
    first = fleet.score(*W1)
    assert first.extra["incidents"]["changed"] == len(fleet.incidents()) > 0
    open_at_end = {i.id: i for i in fleet.incidents(status="open")}
    fleet.score(*W2)
    assert spans(fleet.incidents(limit=1000)) == expected(fleet, T6, T8)
    assert fleet.incidents(status=SUPERSEDED) == []
    assert {i.interval_s for i in fleet.incidents(limit=1000)} == {60.0}  # the models' learned interval
    crossing = [i for i in fleet.incidents() if i.start_us < parse_time(T7) <= i.last_us]
    assert crossing, "the simulated fleet should have an incident across 07:00"
    for inc in crossing:  # the incident open at the end of the first window, extended by the second's flags
        assert inc.id in open_at_end and inc.last_us > open_at_end[inc.id].last_us


def test_rescoring_changes_nothing_and_doubles_nothing(fleet: Fleet) -> None:
    fleet.score(*W1)
    fleet.score(*W2)
    before = [i.as_dict() | {"updated_at": None} for i in everything(fleet)]
    for window in (W1, W2, W1):
        assert fleet.score(*window).extra["incidents"]["changed"] == 0
    assert [i.as_dict() | {"updated_at": None} for i in everything(fleet)] == before
    flagged = fleet.predictions(start=T6, end=T8).column("is_anomaly")
    assert sum(i.flags for i in fleet.incidents(limit=1000)) == pc.sum(flagged).as_py()


def test_windows_scored_out_of_order_give_the_same_incidents(fleet: Fleet) -> None:
    fleet.score(*W2)
    fleet.score(*W1)
    assert spans(fleet.incidents(limit=1000)) == expected(fleet, T6, T8)
    live = {i.id for i in fleet.incidents(limit=1000)}
    for gone in fleet.incidents(status=SUPERSEDED):  # W2's half of a crossing incident joined W1's
        assert gone.superseded_by and set(gone.superseded_by) <= live


def test_rescore_with_other_flags_supersedes_never_deletes(fleet: Fleet) -> None:
    fleet.score(*W1)
    first = {i.id: i for i in fleet.incidents(limit=1000)}
    fleet.score(*W1, version="v2")  # fewer alarms: incidents shrink, split or vanish
    assert spans(fleet.incidents(limit=1000)) == expected(fleet, T6, T7)
    now = {i.id: i for i in everything(fleet)}
    assert set(first) <= set(now), "no incident is ever deleted"
    superseded = [now[k] for k in first if now[k].status == SUPERSEDED]
    kept = [now[k] for k in first if now[k].status != SUPERSEDED]
    assert superseded and any(s.superseded_by == () for s in superseded), "v2 should remove some incident"
    live = {i.id for i in fleet.incidents(limit=1000)}
    for s in superseded:
        assert set(s.superseded_by) <= live and (s.start_us, s.flags) == (first[s.id].start_us, first[s.id].flags)
    for k in kept:
        assert k.flags <= first[k.id].flags


def test_quiet_period_resolves_against_the_newest_window(fleet: Fleet) -> None:
    fleet.score(*W1)
    end1 = parse_time(T7)
    for i in fleet.incidents(limit=1000):
        quiet = i.last_us + 30 * MIN <= end1
        assert (i.status == RESOLVED) == quiet
        assert i.resolved_us == (i.last_us + 30 * MIN if quiet else None)
    assert fleet.incidents(status="active"), "flags near the window's end stay open"
    fleet.score(*W2)
    end2 = end1 + 60 * MIN
    for i in fleet.incidents(limit=1000):
        assert (i.status == RESOLVED) == (i.last_us + 30 * MIN <= end2)


def test_ack_and_marks_survive_rescoring(fleet: Fleet) -> None:
    fleet.score(*W1)
    active = fleet.incidents(status="active")
    taken = fleet.ack_incident(active[0].id, "ann")
    assert taken.status == "acknowledged" and taken.acknowledged_by == "ann"
    marked = fleet.mark_incident(active[-1].id, "false", "sensor cleaned", "bo")
    fleet.score(*W1)
    again = fleet.incident(taken.id)
    assert (again.status, again.acknowledged_by, again.acknowledged_us) == ("acknowledged", "ann", taken.acknowledged_us)
    assert fleet.incident(marked.id).marks == marked.marks and marked.mark == "false"
    fleet.score(*W2)
    later = fleet.incident(taken.id)
    assert later.acknowledged_by == "ann" and later.status in ("acknowledged", RESOLVED)
    assert [s[0] for s in IncidentStore(fleet.catalog).marked_spans("false")] == [marked.device]
    assert IncidentStore(fleet.catalog).marked_spans("true") == []


def test_a_hostile_device_id_is_kept_verbatim(fleet: Fleet, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    fleet.score(*W1)
    mine = fleet.incidents(device=HOSTILE)
    assert mine and all(i.device == HOSTILE for i in mine)
    assert fleet.incident(mine[0].id).as_dict()["device"] == HOSTILE
    r = cli("incidents", "list", "--device", HOSTILE, "--json")
    assert r.exit_code == 0 and {x["device"] for x in r.json["incidents"]} == {HOSTILE}
    monkeypatch.setenv("COLUMNS", "400")
    assert HOSTILE in cli("incidents", "show", mine[0].id).stdout  # printed literally, never as markup
    bad = fleet.import_table(pa.table({"ts": pa.array([parse_time(T7)], pa.timestamp("us", tz="UTC")),
                                       "device": ["pump\n17"], "sensor": ["t"], "value": [1.0]}))
    assert bad.accepted == 0 and bad.rejected == 1  # a newline never reaches a model or an incident


def test_a_failing_build_does_not_fail_the_committed_run(fleet: Fleet) -> None:
    with fleet.catalog.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE incident_parts"))
    run = fleet.score(*W1)
    assert run.status.value == "succeeded" and run.anomalies > 0
    assert "incident_parts" in run.extra["incidents"]["error"]
    assert fleet.catalog.get_run(run.run_id).extra["incidents"] == run.extra["incidents"]


def test_a_run_builds_from_the_flags_its_tasks_hand_back(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    def unread(table: pa.Table) -> pa.Table:
        raise AssertionError("a prediction file was read back")

    with monkeypatch.context() as patched:
        patched.setattr(building, "flags_of", unread)  # what reads the flags of a file no task handed back
        run = fleet.score(*W1)
    assert run.extra["incidents"]["changed"] == len(fleet.incidents(limit=1000)) > 0
    assert spans(fleet.incidents(limit=1000)) == expected(fleet, T6, T7)
    ctx = fleet.context
    files = json.loads(ctx.storage.read_bytes(layout.commit_key(run.window_from, run.window_to)))["files"]
    # a resumed run's older tasks: their files read back give the same incidents, so nothing changes
    assert building.after_commit(ctx, run.window_from, run.window_to, run.run_id) == 0
    handed = {key: flags_of(ctx.storage.read_parquet(key)) for key in files[1:]}
    assert building.after_commit(ctx, run.window_from, run.window_to, run.run_id, handed) == 0
