"""Rules over incidents: selectors and thresholds, idempotent queueing, resolved/recovery, silences."""

from __future__ import annotations

from pathlib import Path

import pytest
from alert_support import MINUTE, T0, hook_config, incident, write_config

from fleetscore.api import Fleet
from fleetscore.config.alerts import Rule
from fleetscore.services.alerts import on_incidents, recover, rule_matches

URL = "http://127.0.0.1:9/hook"  # nothing is delivered in this file


def fleet_with(home: Path, rule: str, now_us: int = T0, extra: str = "") -> Fleet:
    write_config(home, hook_config(URL, rule=rule, extra=extra))
    return Fleet.open(home, clock=lambda: now_us)


@pytest.mark.parametrize(("rule", "inc", "matches"), [
    (Rule(name="r"), incident(), True),
    (Rule(name="r", devices=("pump-*",)), incident(device="pump-17"), True),
    (Rule(name="r", devices=("pump-*",)), incident(device="fan-1"), False),
    (Rule(name="r", devices=("fan-*", "pump-1")), incident(device="pump-1"), True),
    (Rule(name="r", sensors=("flow",)), incident(sensors={"pressure": 4, "flow": 2}), True),
    (Rule(name="r", sensors=("flow",)), incident(sensors={"pressure": 4}), False),
    (Rule(name="r", min_severity=80), incident(severity=80.0), True),
    (Rule(name="r", min_severity=80), incident(severity=79.9), False),
    (Rule(name="r", min_severity=10), incident(severity=None), False),
    (Rule(name="r", min_duration_s=600), incident(minutes=10), True),
    (Rule(name="r", min_duration_s=600), incident(minutes=9), False),
    # min_flags counts the flags on the sensors the rule selects only
    (Rule(name="r", sensors=("flow",), min_flags=3), incident(sensors={"pressure": 9, "flow": 2}), False),
    (Rule(name="r", sensors=("flow",), min_flags=3), incident(sensors={"pressure": 9, "flow": 3}), True),
    # trigger window: 6 flags over 60 minutes is 1.5 per 15 minutes, short of 3
    (Rule(name="r", min_flags=3, trigger_window_s=900), incident(minutes=60, flags=6), False),
    (Rule(name="r", min_flags=3, trigger_window_s=900), incident(minutes=60, flags=12), True),
    (Rule(name="r", min_flags=3, trigger_window_s=900), incident(minutes=10, flags=3), True),
])
def test_rule_selectors_and_thresholds(rule: Rule, inc: object, matches: bool) -> None:
    assert rule_matches(rule, inc) is matches  # type: ignore[arg-type]


def test_same_incident_twice_queues_one_firing_and_one_resolved(home: Path) -> None:
    fleet = fleet_with(home, 'name = "pumps"\ndevice = "pump-*"\nmin_severity = 50')
    ctx = fleet.context
    assert on_incidents(ctx, [incident()]) == 1
    assert on_incidents(ctx, [incident()]) == 0  # re-scoring the window: same incident, nothing new
    assert on_incidents(ctx, [incident(minutes=40, flags=20)]) == 0  # extended by the next window
    assert on_incidents(ctx, [incident(device="fan-1", id="inc-2")]) == 0  # not selected
    assert on_incidents(ctx, [incident(minutes=40, status="resolved")]) == 1
    assert on_incidents(ctx, [incident(minutes=40, status="resolved")]) == 0
    rows = fleet.notifications()
    assert sorted((n.incident, n.state, n.status) for n in rows) == [
        ("inc-1", "firing", "pending"), ("inc-1", "resolved", "pending")]
    firing = next(n for n in rows if n.state == "firing")
    assert firing.payload["incident"]["id"] == "inc-1" and firing.payload["rule"] == "pumps"
    assert firing.payload["idempotency_key"] == firing.key
    assert fleet.alert_counts() == {"sent": 0, "failed": 0, "dead": 0, "pending": 2, "suppressed": 0}


def test_an_incident_that_grows_into_a_rule_fires_then(home: Path) -> None:
    fleet = fleet_with(home, 'name = "long"\nmin_duration = "30m"')
    assert on_incidents(fleet.context, [incident(minutes=10)]) == 0
    assert on_incidents(fleet.context, [incident(minutes=31)]) == 1


def test_superseded_incident_is_resolved_and_one_seen_resolved_first_fires_and_resolves(home: Path) -> None:
    fleet = fleet_with(home, 'name = "all"')
    on_incidents(fleet.context, [incident("a")])
    assert on_incidents(fleet.context, [incident("a", status="superseded"), incident("b", status="resolved")]) == 3
    states = sorted((n.incident, n.state) for n in fleet.notifications())
    assert states == [("a", "firing"), ("a", "resolved"), ("b", "firing"), ("b", "resolved")]


def test_recovery_window_resolves_after_quiet_time(home: Path) -> None:
    now = [T0 + 20 * MINUTE]
    write_config(home, hook_config(URL, rule='name = "r"\nrecovery_window = "30m"'))
    fleet = Fleet.open(home, clock=lambda: now[0])
    assert on_incidents(fleet.context, [incident(minutes=20)]) == 1
    now[0] = T0 + 49 * MINUTE
    assert recover(fleet.context) == 0  # 29 minutes without a flag
    now[0] = T0 + 50 * MINUTE
    assert recover(fleet.context) == 1
    assert recover(fleet.context) == 0
    assert on_incidents(fleet.context, [incident(minutes=20, status="resolved")]) == 0  # resolved once
    assert [n.state for n in fleet.notifications()] == ["resolved", "firing"]


def test_silences_suppress_matching_incidents_only(home: Path) -> None:
    fleet = fleet_with(home, 'name = "all"', now_us=T0 + 5 * MINUTE)
    fleet.add_silence("pump-*", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", sensor="press*", note="maintenance")
    fleet.add_silence("fan-*", "2026-01-02T00:00:00Z", "2026-01-02T01:00:00Z")  # another time
    on_incidents(fleet.context, [incident("silenced"), incident("other-sensor", sensors={"flow": 3}),
                                 incident("fan", device="fan-1")])
    on_incidents(fleet.context, [incident("silenced", status="resolved")])
    got = sorted((n.incident, n.state, n.status) for n in fleet.notifications())
    assert got == [("fan", "firing", "pending"), ("other-sensor", "firing", "pending"),
                   ("silenced", "firing", "suppressed"), ("silenced", "resolved", "suppressed")]
    assert fleet.alert_counts()["suppressed"] == 2


def test_silence_add_list_remove(home: Path) -> None:
    fleet = fleet_with(home, 'name = "all"', now_us=T0)
    s = fleet.add_silence("pump-1", "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z", note="swap", by="ana")
    assert [x.as_dict() for x in fleet.silences()] == [s.as_dict()]
    assert s.as_dict()["start"] == "2026-01-01T00:00:00Z" and s.as_dict()["created_by"] == "ana"
    fleet.remove_silence(s.id)
    assert fleet.silences() == []
