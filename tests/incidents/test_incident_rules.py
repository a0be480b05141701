"""The pure incident rules: grouping flags by the gap, merging windows' fragments, stable ids, status, event matching."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetscore.core.incidents import (
    ACKNOWLEDGED,
    FLAGS,
    OPEN,
    RESOLVED,
    SUPERSEDED,
    Event,
    Fragment,
    Incident,
    Mark,
    Rules,
    SensorShare,
    device_interval_s,
    flags_of,
    fragment_table,
    fragments,
    group_flags,
    labelled_events,
    learned_intervals,
    lookup,
    match_events,
    merge_fragments,
    new_incidents,
    reconcile,
    refresh_status,
    settled,
)

MIN = 60_000_000  # one minute in µs
GAP = {"pump": 5 * MIN, "fan": 5 * MIN, "valve": 5 * MIN}
RULES = Rules.counted(60.0, 5, 30, horizon_us=40 * MIN)  # flags after minute 10 are not quiet yet


def flags(*rows: tuple[str, int, str, float]) -> list:  # type: ignore[type-arg]
    """group_flags of (device, minute, sensor, severity) rows."""
    device, minute, sensor, severity = zip(*rows)
    return fragments(group_flags(np.array(minute) * MIN, device, sensor, np.array(severity, dtype=float), GAP))


def new_ids(prefix: str = "n"):  # type: ignore[no-untyped-def]
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


def test_flags_within_the_gap_merge_and_beyond_it_split() -> None:
    groups = flags(("pump", 0, "t", 10.0), ("pump", 5, "t", 20.0), ("pump", 10, "t", 30.0), ("pump", 16, "t", 40.0))
    assert [(g.start_us // MIN, g.last_us // MIN, g.flags) for g in groups] == [(0, 10, 3), (16, 16, 1)]


def test_several_sensors_of_a_device_are_one_incident_with_their_shares() -> None:
    groups = flags(("pump", 3, "flow", 50.0), ("pump", 1, "pressure", 70.0), ("pump", 2, "pressure", 90.0),
                   ("fan", 2, "rpm", 99.0))
    pump = next(g for g in groups if g.device == "pump")
    assert (pump.start_us, pump.last_us, pump.flags, pump.severity) == (MIN, 3 * MIN, 3, 90.0)
    assert pump.sensors == (SensorShare("pressure", 2), SensorShare("flow", 1))
    assert [g.device for g in groups] == ["fan", "pump"]  # devices never merge


def test_null_severity_gives_a_null_peak_unless_some_flag_has_one() -> None:
    none = flags(("pump", 0, "t", np.nan), ("pump", 1, "t", np.nan))
    assert len(none) == 1 and none[0].severity is None
    some = flags(("pump", 0, "t", np.nan), ("pump", 1, "t", 42.0))
    assert some[0].severity == 42.0


def test_fragments_of_windows_merge_like_the_flags_at_once() -> None:
    rows = [("pump", m, "t" if m % 2 else "u", float(m)) for m in (50, 53, 57, 59, 61, 64, 80, 119, 121)]
    whole = flags(*rows)
    by_window = flags(*[r for r in rows if r[1] < 60]) + flags(*[r for r in rows if 60 <= r[1] < 120]) \
        + flags(*[r for r in rows if r[1] >= 120])
    assert fragments(merge_fragments(fragment_table(by_window), GAP)) == whole
    assert [(g.start_us // MIN, g.last_us // MIN, g.flags) for g in whole] == [(50, 64, 6), (80, 80, 1), (119, 121, 2)]


def test_flags_of_keeps_the_flagged_rows_as_codes_and_a_null_is_no_flag() -> None:
    ts = pa.array([MIN, 2 * MIN, 3 * MIN], pa.timestamp("us", tz="UTC"))
    predictions = pa.table({"ts": ts, "device": ["a", "b", "a"], "sensor": ["t", "u", "t"],
                            "is_anomaly": [True, None, True], "severity": [50.0, 60.0, None]})
    got = flags_of(predictions)
    assert got.schema == FLAGS
    assert got.to_pydict() == {"ts": [MIN, 3 * MIN], "device": ["a", "a"], "sensor": ["t", "t"], "severity": [50.0, None]}
    assert flags_of(predictions.drop_columns(["severity"])).column("severity").null_count == 2  # kinds without a tail


def test_interval_is_the_median_of_sensors_else_of_times_else_a_minute() -> None:
    assert device_interval_s([10.0, 30.0, None, 20.0]) == 20.0
    assert device_interval_s([None], [0, 5_000_000, 10_000_000, 10_000_000]) == 5.0
    assert device_interval_s([], []) == 60.0


def incident(id_: str, start: int, last: int, **kw: object) -> Incident:
    values = dict(id=id_, device="pump", start_us=start * MIN, last_us=last * MIN, status=OPEN, severity=1.0,
                  flags=last - start + 1, sensors=(SensorShare("t", last - start + 1),), updated_us=0)
    return Incident(**(values | kw))  # type: ignore[arg-type]


def group(start: int, last: int) -> object:
    return flags(*[("pump", m, "t", 1.0) for m in range(start, last + 1)])[0]


def test_an_extended_or_shortened_incident_keeps_id_ack_and_marks() -> None:
    mark = Mark("true", "seen", "ann", 5)
    old = incident("a", 10, 20, status=ACKNOWLEDGED, acknowledged_by="ann", acknowledged_us=3, marks=(mark,))
    for new in (group(10, 40), group(12, 15)):
        (out,) = reconcile([new], [old], RULES, 99, new_ids())
        assert out.id == "a" and out.acknowledged_by == "ann" and out.marks == (mark,)
        assert (out.start_us, out.last_us, out.status, out.updated_us) == (new.start_us, new.last_us, ACKNOWLEDGED, 99)


def test_unchanged_groups_change_nothing() -> None:
    g = group(10, 20)
    (first,) = reconcile([g], [], RULES, 1, new_ids())
    assert reconcile([g], [first], RULES, 2, new_ids()) == []


def test_a_split_supersedes_with_pointers_and_a_removal_with_none() -> None:
    old = incident("a", 10, 30)
    out = reconcile([group(10, 12), group(25, 30)], [old], RULES, 7, new_ids())
    superseded = next(i for i in out if i.id == "a")
    assert superseded.status == SUPERSEDED and superseded.superseded_by == ("n1", "n2")
    assert sorted(i.id for i in out if i.status == OPEN) == ["n1", "n2"]
    (gone,) = reconcile([], [old], RULES, 8, new_ids())
    assert gone.id == "a" and gone.status == SUPERSEDED and gone.superseded_by == () and gone.flags == old.flags


def test_a_group_joining_two_incidents_keeps_the_earliest() -> None:
    a, b = incident("a", 10, 12), incident("b", 20, 22)
    out = {i.id: i for i in reconcile([group(10, 22)], [a, b], RULES, 1, new_ids())}
    assert out["a"].last_us == 22 * MIN and out["a"].status == OPEN
    assert out["b"].status == SUPERSEDED and out["b"].superseded_by == ("a",)


def test_quiet_period_resolves_against_the_horizon() -> None:
    rules = Rules.counted(60.0, 5, 30, horizon_us=100 * MIN)
    (near_end,) = reconcile([group(60, 75)], [], rules, 1, new_ids())
    assert near_end.status == OPEN and near_end.resolved_us is None  # 75 + 30 > 100
    (quiet,) = reconcile([group(60, 70)], [], rules, 1, new_ids())
    assert quiet.status == RESOLVED and quiet.resolved_us == 100 * MIN
    later = Rules.counted(60.0, 5, 30, horizon_us=200 * MIN)
    acked = near_end.with_changes(status=ACKNOWLEDGED, acknowledged_by="bo")
    resolved = refresh_status(acked, later, 5)
    assert resolved is not None and resolved.status == RESOLVED and resolved.acknowledged_by == "bo"
    assert refresh_status(acked, rules, 5) is None  # not quiet yet: stays acknowledged


def test_match_events_counts_incidents_per_event_and_precision() -> None:
    events = [Event("pump", 10 * MIN, 20 * MIN), Event("pump", 100 * MIN, 101 * MIN), Event("fan", 0, MIN)]
    incs = [incident("a", 12, 14), incident("b", 16, 25), incident("c", 50, 51),
            incident("d", 18, 19, status=SUPERSEDED)]
    m = match_events(incs, events)
    assert (m.events, m.events_detected, m.incidents, m.true_incidents) == (3, 1, 3, 2)
    assert m.incidents_per_event == 2.0 and m.precision == pytest.approx(2 / 3) and m.event_recall == pytest.approx(1 / 3)


def test_labelled_events_are_runs_per_series_merged_per_device(small_fleet) -> None:  # type: ignore[no-untyped-def]
    events = labelled_events(small_fleet)
    labelled = small_fleet.filter(small_fleet.column("label").cast("bool"))
    assert events and len(events) <= labelled.num_rows
    for e in events:
        assert e.start_us <= e.end_us and e.kinds and e.sensors
        inside = labelled.filter(pc.and_(pc.equal(labelled.column("device"), e.device),
                                         pc.is_in(labelled.column("sensor"), pa.array(e.sensors))))
        times = inside.column("ts").cast("int64").to_numpy()
        assert ((times >= e.start_us) & (times <= e.end_us)).any()
    one = labelled_events(pa.table({"ts": pa.array([0, 1, 2, 3, 4, 5], pa.int64()), "device": ["d"] * 6,
                                    "sensor": ["s"] * 6, "label": pa.array([1, 1, 0, 1, 1, 1], pa.int8())}))
    assert [(e.start_us, e.end_us) for e in one] == [(0, 1), (3, 5)]  # an unlabelled reading ends a run
    for d in {e.device for e in events}:
        mine = sorted((e.start_us, e.end_us) for e in events if e.device == d)
        assert all(b[0] > a[1] for a, b in zip(mine, mine[1:]))  # a device's events never overlap
    assert match_events([], events).as_dict()["precision"] is None


def test_nested_fragments_merge_by_the_furthest_reach() -> None:
    parts = [fragment(0, 100), fragment(10, 20), fragment(50, 60), fragment(105, 105), fragment(112, 112)]
    merged = fragments(merge_fragments(fragment_table(parts), GAP))
    assert [(g.start_us // MIN, g.last_us // MIN, g.flags) for g in merged] == [(0, 105, 4), (112, 112, 1)]


def fragment(start: int, last: int, device: str = "pump", sensors: tuple[tuple[str, int], ...] = (("t", 1),),
             severity: float | None = 1.0) -> Fragment:
    return Fragment(device, start * MIN, last * MIN, sum(n for _, n in sensors), severity,
                    tuple(SensorShare(s, n) for s, n in sensors))


def as_columns(incidents: list[Incident]) -> pa.Table:
    """Stored incidents as the columns `settled` reads (sensors as the catalog's JSON text)."""
    return pa.table({"device": [i.device for i in incidents], "start_us": [i.start_us for i in incidents],
                     "last_us": [i.last_us for i in incidents], "flags": [i.flags for i in incidents],
                     "severity": pa.array([i.severity for i in incidents], pa.float64()),
                     "sensors": [json.dumps([[s.sensor, s.flags] for s in i.sensors]) for i in incidents],
                     "status": [i.status for i in incidents],
                     "resolved_us": pa.array([i.resolved_us for i in incidents], pa.int64()),
                     "interval_s": [i.interval_s for i in incidents],
                     "acknowledged_by": pa.array([i.acknowledged_by for i in incidents], pa.string())})


def test_settled_devices_are_those_reconcile_leaves_alone() -> None:
    base = [fragment(10, 20, "pump", (("flow", 3), ("t", 2))), fragment(40, 41, "pump"), fragment(5, 5, "fan", severity=None),
            fragment(30, 31, "valve")]
    stored = [i for d in ("pump", "fan", "valve") for i in
              reconcile([f for f in base if f.device == d], [], RULES, 1, new_ids(d))]
    stored = [i.with_changes(status=ACKNOWLEDGED, acknowledged_by="ann") if i.device == "valve" else i for i in stored]
    variants = {
        "same": base,
        "extended": [fragment(10, 22, "pump", (("flow", 3), ("t", 3)))] + base[1:],
        "shares moved": [fragment(10, 20, "pump", (("flow", 2), ("t", 3)))] + base[1:],
        "severity": base[:2] + [fragment(5, 5, "fan", severity=3.0)] + base[3:],
        "removed": base[:1] + base[2:],
    }
    later = Rules.counted(60.0, 5, 30, horizon_us=400 * MIN)  # every incident quiet by now: open ones resolve
    seen = set()
    for rules in (RULES, later):
        for name, groups in variants.items():
            fast = settled(merge_fragments(fragment_table(groups), GAP), as_columns(stored),
                           dict.fromkeys(("pump", "fan", "valve", "idle"), rules))
            for d in ("pump", "fan", "valve", "idle"):
                slow = reconcile([g for g in groups if g.device == d], [i for i in stored if i.device == d], rules, 2,
                                 new_ids())
                assert (d in fast) == (slow == []), (name, d, rules.horizon_us)
                seen.add(d in fast)
    assert seen == {True, False}


def test_new_incidents_are_what_reconcile_makes_of_groups_without_incidents() -> None:
    groups = [fragment(10, 20, "pump", (("flow", 3), ("t\u00e9 \"x\"", 2))), fragment(60, 75, "pump"),
              fragment(5, 5, "fan", severity=None)]
    made = new_incidents(merge_fragments(fragment_table(groups), GAP), {"pump": RULES, "fan": RULES},
                         lambda n: [f"c{k}" for k in range(1, n + 1)], 7)
    expected = sorted((i for d in ("fan", "pump") for i in reconcile([g for g in groups if g.device == d], [], RULES, 7,
                                                                        new_ids("x"))), key=lambda i: (i.device, i.start_us))
    assert made.column("id").to_pylist() == ["c1", "c2", "c3"]
    for row, inc in zip(made.to_pylist(), expected):
        assert (row["device"], row["start_us"], row["last_us"], row["status"], row["severity"], row["flags"],
                row["resolved_us"], row["interval_s"], row["updated_us"]) == \
            (inc.device, inc.start_us, inc.last_us, inc.status, inc.severity, inc.flags, inc.resolved_us,
             inc.interval_s, inc.updated_us)
        assert json.loads(row["sensors"]) == [[s.sensor, s.flags] for s in inc.sensors]
        assert row["sensors"] == json.dumps([[s.sensor, s.flags] for s in inc.sensors])  # the catalog's text exactly
    assert new_incidents(fragment_table([]), {}, lambda n: ["x"] * n, 0).num_rows == 0


def test_learned_intervals_are_each_devices_median_and_lookup_finds_names() -> None:
    device = pa.array(["a", "b", "a", "a", "c", "b", "a"])
    interval = pa.array([10.0, 5.0, 30.0, None, -1.0, 7.0, 20.0])
    assert learned_intervals(device, interval, ["a", "b", "c", "d"]) == {"a": 20.0, "b": 6.0}
    assert device_interval_s([10.0, 30.0, None, 20.0]) == 20.0 and device_interval_s([5.0, 7.0]) == 6.0
    assert lookup(pa.chunked_array([["b", "x"], ["a"]]), ["a", "b"]).tolist() == [1, -1, 0]
    assert lookup(pa.array([], pa.string()), ["a"]).tolist() == []
