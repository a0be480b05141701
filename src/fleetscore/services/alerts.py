"""Alerts: rules over incidents, and the notifications they queue in the catalog's outbox.

A rule matches an incident when its device patterns match the device, its sensor patterns match at
least one of the incident's sensors, the peak severity reaches ``min_severity``, the incident lasted
``min_duration`` (first to last flag) and its flags on matching sensors reach ``min_flags`` (with a
``trigger_window``: at a rate of at least ``min_flags`` per window over the incident's duration).
A matching incident queues one ``firing`` notification per receiver; when it resolves (or is
superseded), or when no flag came for the rule's ``recovery_window`` (by the context's clock), one
``resolved``. The idempotency key is derived from (rule, receiver, incident, state), so scoring a
window again never queues a second firing. An incident a silence covers (its device and sensors, at
its last flag or when queued) is stored as ``suppressed`` and never sent, its resolved likewise.
Delivery is :mod:`fleetscore.services.delivery`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

from fleetscore.catalog.alerts import FIRING, RESOLVED, AlertStore, NewNotification, Silence, Track
from fleetscore.clock import wall_clock
from fleetscore.config.alerts import Rule
from fleetscore.core.incidents import Incident
from fleetscore.core.times import SECOND_US, iso
from fleetscore.services.context import Context


def idempotency_key(rule: str, receiver: str, incident: str, state: str) -> str:
    """The notification's key, the same every time the same (rule, receiver, incident, state) is queued."""
    return hashlib.sha256("\0".join((rule, receiver, incident, state)).encode()).hexdigest()[:32]


def matching_flags(rule: Rule, incident: Incident) -> int:
    """Flags of ``incident`` on the sensors the rule selects (0 if its device is not selected)."""
    if not any(fnmatchcase(incident.device, p) for p in rule.devices):
        return 0
    return sum(s.flags for s in incident.sensors if any(fnmatchcase(s.sensor, p) for p in rule.sensors))


def rule_matches(rule: Rule, incident: Incident) -> bool:
    """Whether ``incident`` passes the rule's selectors and thresholds."""
    flags = matching_flags(rule, incident)
    if flags == 0 or flags < rule.min_flags:
        return False
    if rule.min_severity > 0 and (incident.severity is None or incident.severity < rule.min_severity):
        return False
    duration_s = (incident.last_us - incident.start_us) / SECOND_US
    if duration_s < rule.min_duration_s:
        return False
    window = rule.trigger_window_s
    return window is None or duration_s <= window or flags * window / duration_s >= rule.min_flags


def severity_label(severity: float | None) -> str:
    """Alertmanager's conventional ``severity`` label for a peak severity in [0, 100]."""
    if severity is None or severity < 50:
        return "info"
    return "critical" if severity >= 90 else "warning"


def on_incidents(ctx: Context, incidents: Sequence[Incident]) -> int:
    """Queue the notifications the rules want for ``incidents``; returns how many were queued.

    One read of the rules' tracks of these incidents and one write transaction, whatever their number.
    """
    settings = ctx.config.alerts
    if not settings.rules or not incidents:
        return 0
    store = AlertStore(ctx.catalog)
    now_us = ctx.clock()
    silences = store.silences()
    tracks = store.get_tracks([i.id for i in incidents])
    items: list[NewNotification] = []
    for incident in incidents:
        for rule in settings.rules:
            track = _evaluate(rule, incident, tracks.get((rule.name, incident.id)), now_us, silences, items)
            if track is not None:
                tracks[(rule.name, incident.id)] = track
    ids = {i.id for i in incidents}
    changed = [t for t in tracks.values() if t.incident in ids]
    return store.save(items, changed, wall_clock() / SECOND_US) + recover(ctx)


def recover(ctx: Context) -> int:
    """Queue ``resolved`` for fired incidents without a flag for their rule's recovery window; how many."""
    settings = ctx.config.alerts
    rules = {r.name: r for r in settings.rules if r.recovery_window_s is not None}
    if not rules:
        return 0
    store = AlertStore(ctx.catalog)
    now_us = ctx.clock()
    items: list[NewNotification] = []
    recovered = []
    for track in store.tracks(FIRING):
        rule = rules.get(track.rule)
        if rule is not None and rule.recovery_window_s is not None \
                and track.last_us + rule.recovery_window_s * SECOND_US <= now_us:
            items += _notifications(rule, track.payload, RESOLVED, now_us)
            recovered.append(replace(track, state=RESOLVED))
    return store.save(items, recovered, wall_clock() / SECOND_US) if recovered else 0


def _evaluate(rule: Rule, incident: Incident, track: Track | None, now_us: int, silences: list[Silence],
              items: list[NewNotification]) -> Track | None:
    """Add what ``rule`` wants for ``incident`` now to ``items`` (firing once, resolved once); its new track."""
    if track is not None and track.state == RESOLVED:
        return None
    body = incident.as_dict()
    if track is not None:  # fired before: keep the labels it fired with (Alertmanager matches by labels)
        body |= {k: track.payload[k] for k in _TRACKED}
    elif rule_matches(rule, incident):
        sensors = [s.sensor for s in incident.sensors]
        silenced = any(s.covers(incident.device, sensors, at) for s in silences for at in (incident.last_us, now_us))
        body |= {"severity_label": severity_label(incident.severity), "silenced": silenced}
        items += _notifications(rule, body, FIRING, now_us)
    else:
        return None
    if not incident.active:
        items += _notifications(rule, body, RESOLVED, now_us)
    return Track(rule.name, incident.id, incident.last_us, FIRING if incident.active else RESOLVED, body)


#: What a track keeps beside the incident: the severity label it fired with, and whether it was silenced.
_TRACKED = ("severity_label", "silenced")


def _notifications(rule: Rule, tracked: dict[str, Any], state: str, now_us: int) -> list[NewNotification]:
    """One notification per receiver of ``rule``; a resolved one is suppressed where its firing was."""
    incident = {k: v for k, v in tracked.items() if k not in _TRACKED}
    out = []
    for receiver in rule.receivers:
        key = idempotency_key(rule.name, receiver, incident["id"], state)
        body = {"idempotency_key": key, "state": state, "rule": rule.name, "receiver": receiver,
                "severity_label": tracked["severity_label"], "queued_at": iso(now_us), "incident": incident}
        out.append(NewNotification(key, rule.name, receiver, incident["id"], incident["device"], state, body,
                                   suppressed=bool(tracked["silenced"])))
    return out
