"""Incidents: a device's flagged readings grouped into something an operator acts on.

An incident belongs to one device and spans its flags on any of its sensors that lie within the
merge gap of each other. This module holds the value types every face and service shares and the
rules, as pure functions over arrays and these values: flags grouped into fragments
(:func:`group_flags`), fragments of several windows merged (:func:`merge_fragments`), the groups
reconciled with the stored incidents so ids, acknowledgements and marks stay (:func:`reconcile`),
the quiet-period status (:func:`status_of`), and incidents matched to labelled events
(:func:`labelled_events`, :func:`match_events`). Ids come from the caller: no randomness, no clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.times import iso

OPEN, ACKNOWLEDGED, RESOLVED, SUPERSEDED = "open", "acknowledged", "resolved", "superseded"
#: Every incident status; ``acknowledged`` is an open incident an operator has taken.
STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED, SUPERSEDED)
#: Statuses of incidents still in progress (their ``end`` is null in JSON).
ACTIVE = frozenset({OPEN, ACKNOWLEDGED})
#: What an operator may mark an incident as.
MARKS = ("true", "false", "ignore")


@dataclass(frozen=True)
class SensorShare:
    """One sensor involved in an incident and how many of the incident's flags it carries."""

    sensor: str
    flags: int

    def as_dict(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "flags": self.flags}


@dataclass(frozen=True)
class Mark:
    """An operator's verdict on an incident, kept with its time and author."""

    mark: str  # one of MARKS
    note: str
    by: str
    at_us: int

    def as_dict(self) -> dict[str, Any]:
        return {"mark": self.mark, "note": self.note, "by": self.by, "at": iso(self.at_us)}


@dataclass(frozen=True)
class Incident:
    """One device's incident: first and last flag, peak severity, flags per sensor, status.

    ``start_us`` / ``last_us`` are the first and last flagged reading's event time (µs). While the
    incident is active its JSON ``end`` is null; once resolved or superseded ``end`` is ``last_us``.
    """

    id: str
    device: str
    start_us: int
    last_us: int
    status: str
    severity: float | None
    flags: int
    sensors: tuple[SensorShare, ...]
    updated_us: int
    acknowledged_by: str | None = None
    acknowledged_us: int | None = None
    resolved_us: int | None = None
    superseded_by: tuple[str, ...] = ()
    marks: tuple[Mark, ...] = field(default=())
    interval_s: float = 60.0  # FALLBACK_INTERVAL_S: the device's sampling interval the gap and quiet period were counted in

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def mark(self) -> str | None:
        """The latest mark, or None."""
        return self.marks[-1].mark if self.marks else None

    def with_changes(self, **changes: Any) -> Incident:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The JSON contract: ``id, device, start, end (null while open), status, severity, flags, sensors``."""
        return {
            "id": self.id,
            "device": self.device,
            "start": iso(self.start_us),
            "end": None if self.active else iso(self.last_us),
            "last_flag": iso(self.last_us),
            "status": self.status,
            "severity": self.severity,
            "flags": self.flags,
            "sensors": [s.as_dict() for s in self.sensors],
            "updated_at": iso(self.updated_us),
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": None if self.acknowledged_us is None else iso(self.acknowledged_us),
            "resolved_at": None if self.resolved_us is None else iso(self.resolved_us),
            "superseded_by": list(self.superseded_by),
            "mark": self.mark,
            "marks": [m.as_dict() for m in self.marks],
            "interval_s": self.interval_s,
        }


# ---- grouping flags ---------------------------------------------------------------------------
#: Sampling interval assumed for a device whose interval is unknown and cannot be estimated (s).
FALLBACK_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Fragment:
    """A device's flags that lie within the merge gap of each other: one window's part of an incident,
    or (merged across windows) a whole incident's flags."""

    device: str
    start_us: int
    last_us: int
    flags: int
    severity: float | None
    sensors: tuple[SensorShare, ...]


def device_interval_s(intervals: Sequence[float | None], ts_us: Sequence[int] = ()) -> float:
    """A device's sampling interval: the median of its sensors' learned intervals; else the median
    positive gap of its readings' times ``ts_us``; else :data:`FALLBACK_INTERVAL_S`."""
    known = [float(v) for v in intervals if v is not None and math.isfinite(v) and v > 0]
    if known:
        return float(statistics.median(known))
    gaps = np.diff(np.unique(np.asarray(ts_us, dtype=np.int64)))
    return float(np.median(gaps)) / 1e6 if gaps.size else FALLBACK_INTERVAL_S


def group_flags(ts_us: np.ndarray, device: pa.Array | Sequence[str], sensor: pa.Array | Sequence[str],
                severity: np.ndarray, gap_us: Mapping[str, int]) -> list[Fragment]:
    """Flagged readings (any order) grouped per device: consecutive flags merge while the gap between
    them is at most the device's ``gap_us``. ``severity`` is NaN where a reading has none. Sorted by
    device, then start."""
    n = len(ts_us)
    if n == 0:
        return []
    dev_names, dev_code = _codes(device)
    sen_names, sen_code = _codes(sensor)
    ts = np.asarray(ts_us, dtype=np.int64)
    order = np.lexsort((ts, dev_code))
    ts, dev_code, sen_code = ts[order], dev_code[order], sen_code[order]
    sev = np.asarray(severity, dtype=np.float64)[order]
    gaps = np.array([gap_us[d] for d in dev_names], dtype=np.int64)[dev_code]
    new = np.ones(n, dtype=bool)
    new[1:] = (dev_code[1:] != dev_code[:-1]) | (np.diff(ts) > gaps[1:])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, n))
    lasts = ts[np.append(starts[1:], n) - 1]
    with np.errstate(invalid="ignore"):
        peaks = np.fmax.reduceat(sev, starts)  # NaN only where a whole group has no severity
    width = len(sen_names)
    uniq, per = np.unique((np.cumsum(new) - 1) * width + sen_code, return_counts=True)  # flags per (group, sensor)
    shares: list[dict[str, int]] = [{} for _ in range(len(starts))]
    for k, c in zip(uniq.tolist(), per.tolist()):
        shares[k // width][sen_names[k % width]] = c
    out = [Fragment(dev_names[d], a, last, c, None if math.isnan(p) else p, _shares(sh))
           for d, a, last, c, p, sh in zip(dev_code[starts].tolist(), ts[starts].tolist(), lasts.tolist(),
                                           counts.tolist(), peaks.tolist(), shares)]
    return sorted(out, key=lambda f: (f.device, f.start_us))


def _codes(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct strings and each value's index among them (Arrow's dictionary encoding: no Python strings per row)."""
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    encoded = pc.dictionary_encode(array)
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def merge_fragments(fragments: Sequence[Fragment], gap_us: int) -> list[Fragment]:
    """One device's fragments (of several windows) merged where they lie within ``gap_us`` of each other."""
    groups: list[list[Fragment]] = []
    last = 0
    for f in sorted(fragments, key=lambda f: (f.start_us, f.last_us)):
        if groups and f.start_us - last <= gap_us:
            groups[-1].append(f)
            last = max(last, f.last_us)
        else:
            groups.append([f])
            last = f.last_us
    return [_combine(g) for g in groups]


def _combine(parts: Sequence[Fragment]) -> Fragment:
    if len(parts) == 1:
        return parts[0]
    counts: dict[str, int] = {}
    for p in parts:
        for s in p.sensors:
            counts[s.sensor] = counts.get(s.sensor, 0) + s.flags
    peaks = [p.severity for p in parts if p.severity is not None]
    return Fragment(parts[0].device, min(p.start_us for p in parts), max(p.last_us for p in parts),
                    sum(p.flags for p in parts), max(peaks) if peaks else None, _shares(counts))


def _peak(severity: np.ndarray) -> float | None:
    finite = severity[np.isfinite(severity)]
    return float(finite.max()) if finite.size else None


def _shares(counts: Mapping[str, int]) -> tuple[SensorShare, ...]:
    """Sensors by their flags, most first (then by name)."""
    if len(counts) == 1:
        return tuple([SensorShare(s, int(n)) for s, n in counts.items()])
    return tuple([SensorShare(s, int(n)) for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))])


# ---- incidents from groups --------------------------------------------------------------------
@dataclass(frozen=True)
class Rules:
    """One device's rules in µs: flags merge within ``gap_us``; quiet for ``quiet_us`` after the last flag,
    measured against ``horizon_us`` (the end of the newest committed window), resolves an incident."""

    gap_us: int
    quiet_us: int
    horizon_us: int
    interval_s: float = FALLBACK_INTERVAL_S

    @classmethod
    def counted(cls, interval_s: float, merge_gap: int, quiet_period: int, horizon_us: int) -> Rules:
        """The rules of a device sampled every ``interval_s``, with the gap and quiet period in its readings."""
        return cls(round(merge_gap * interval_s * 1e6), round(quiet_period * interval_s * 1e6), horizon_us, interval_s)


def status_of(last_us: int, acknowledged: bool, rules: Rules) -> tuple[str, int | None]:
    """(status, resolved time) of an incident whose last flag is at ``last_us``: resolved once quiet."""
    if last_us + rules.quiet_us <= rules.horizon_us:
        return RESOLVED, last_us + rules.quiet_us
    return (ACKNOWLEDGED if acknowledged else OPEN), None


def reconcile(groups: Sequence[Fragment], existing: Sequence[Incident], rules: Rules, now_us: int,
              new_id: Callable[[], str]) -> list[Incident]:
    """One device's incidents after a re-grouping of its flags, so that ids are stable.

    ``existing``: the device's stored incidents (not superseded) near the groups. A group that
    overlaps (or lies within the gap of) exactly one existing incident, which overlaps no other
    group, keeps its id, acknowledgement and marks. Groups joining several incidents keep the
    earliest one's and the others are superseded by it; an incident split into several groups, or
    left without one, is superseded by the new ones (``superseded_by`` empty when removed). New
    groups get ``new_id()``. Returns the incidents that changed or are new (``updated_us = now_us``).
    """
    groups = sorted(groups, key=lambda g: g.start_us)
    olds = sorted(existing, key=lambda e: e.start_us)

    def near(g: Fragment, e: Incident) -> bool:
        return g.start_us <= e.last_us + rules.gap_us and e.start_us <= g.last_us + rules.gap_us

    links_g = [[j for j, e in enumerate(olds) if near(g, e)] for g in groups]
    links_e = [[i for i, g in enumerate(groups) if near(g, e)] for e in olds]
    heir: dict[int, Incident] = {}  # group -> the incident it continues
    for i, js in enumerate(links_g):
        if js and all(len(links_e[j]) == 1 for j in js):
            heir[i] = olds[js[0]]  # the earliest of the incidents only this group continues
    ids = [heir[i].id if i in heir else new_id() for i in range(len(groups))]
    kept = {inc.id for inc in heir.values()}
    changed: list[Incident] = []
    for i, g in enumerate(groups):
        base = heir.get(i)
        if base is None or not _same(base, g, rules):
            changed.append(_incident(ids[i], g, base, rules, now_us))
    for j, e in enumerate(olds):
        if e.id not in kept:
            changed.append(e.with_changes(status=SUPERSEDED, superseded_by=tuple(ids[i] for i in links_e[j]),
                                          resolved_us=None, updated_us=now_us))
    return changed


def refresh_status(incident: Incident, rules: Rules, now_us: int) -> Incident | None:
    """The incident with its status recomputed against ``rules.horizon_us``; None when unchanged."""
    if incident.status == SUPERSEDED:
        return None
    status, resolved = status_of(incident.last_us, incident.acknowledged_by is not None, rules)
    if (status, resolved) == (incident.status, incident.resolved_us):
        return None
    return incident.with_changes(status=status, resolved_us=resolved, updated_us=now_us)


def _incident(id_: str, g: Fragment, base: Incident | None, rules: Rules, now_us: int) -> Incident:
    acked = base is not None and base.acknowledged_by is not None
    status, resolved = status_of(g.last_us, acked, rules)
    values = dict(device=g.device, start_us=g.start_us, last_us=g.last_us, status=status, severity=g.severity,
                  flags=g.flags, sensors=g.sensors, updated_us=now_us, resolved_us=resolved, interval_s=rules.interval_s)
    if base is None:
        return Incident(id=id_, **values)  # type: ignore[arg-type]
    return base.with_changes(**values)


def _same(base: Incident, g: Fragment, rules: Rules) -> bool:
    """Whether ``base`` already is what group ``g`` makes of it under ``rules``."""
    status, resolved = status_of(g.last_us, base.acknowledged_by is not None, rules)
    return (base.start_us, base.last_us, base.flags, base.severity, base.sensors, base.status, base.resolved_us,
            base.interval_s) == (g.start_us, g.last_us, g.flags, g.severity, g.sensors, status, resolved, rules.interval_s)


# ---- incidents against labelled events --------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """A labelled anomaly of one device: its first and last labelled reading (µs), the sensors and kinds."""

    device: str
    start_us: int
    end_us: int
    sensors: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventMatch:
    """How incidents meet labelled events: ``incidents_per_event`` (incidents on a detected event, per
    detected event; 1 is ideal) and ``precision`` (incidents that lie on some event, of all incidents)."""

    events: int
    events_detected: int
    incidents: int
    true_incidents: int

    @property
    def incidents_per_event(self) -> float | None:
        hits = self.events_detected
        return None if not hits else self.true_incidents / hits

    @property
    def precision(self) -> float | None:
        return None if not self.incidents else self.true_incidents / self.incidents

    @property
    def event_recall(self) -> float | None:
        return None if not self.events else self.events_detected / self.events

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "events_detected": self.events_detected, "incidents": self.incidents,
                "true_incidents": self.true_incidents, "incidents_per_event": self.incidents_per_event,
                "precision": self.precision, "event_recall": self.event_recall}


def labelled_events(labels: pa.Table) -> list[Event]:
    """The simulator's labels (`fleetscore.core.simulate`: ``ts, device, sensor, label`` and optionally
    ``anomaly_kind``, one row per reading, label 1 inside an injected anomaly) as device events: runs of
    consecutive labelled readings per series, merged per device where they overlap in time (one thing
    happening to the device)."""
    if labels.num_rows == 0:
        return []
    labels = labels.take(pc.sort_indices(labels, [("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]))
    dev_names, dev = _codes(labels.column("device"))
    sen_names, sen = _codes(labels.column("sensor"))
    ts = pc.cast(labels.column("ts"), pa.int64()).to_numpy(zero_copy_only=False)
    mask = pc.fill_null(pc.equal(labels.column("label"), 1), False).to_numpy(zero_copy_only=False)
    same = np.zeros(len(ts), dtype=bool)
    same[1:] = (dev[1:] == dev[:-1]) & (sen[1:] == sen[:-1])
    prev = np.zeros(len(ts), dtype=bool)
    prev[1:] = mask[:-1]
    starts = np.flatnonzero(mask & ~(prev & same))
    nxt = np.zeros(len(ts), dtype=bool)
    nxt[:-1] = mask[1:] & same[1:]
    ends = np.flatnonzero(mask & ~nxt)
    kinds = labels.column("anomaly_kind") if "anomaly_kind" in labels.column_names else None
    runs: dict[str, list[Event]] = {}
    for a, b in zip(starts.tolist(), ends.tolist()):
        kind = kinds[a].as_py() if kinds is not None else ""
        d = dev_names[dev[a]]
        runs.setdefault(d, []).append(Event(d, int(ts[a]), int(ts[b]), (sen_names[sen[a]],), (kind,) if kind else ()))
    out: list[Event] = []
    for d in sorted(runs):
        merged: list[Event] = []
        for e in sorted(runs[d], key=lambda e: e.start_us):
            if merged and e.start_us <= merged[-1].end_us:
                m = merged[-1]
                merged[-1] = Event(d, m.start_us, max(m.end_us, e.end_us), tuple(sorted(set(m.sensors + e.sensors))),
                                   tuple(sorted(set(m.kinds + e.kinds))))
            else:
                merged.append(e)
        out += merged
    return out


def match_events(incidents: Sequence[Incident], events: Sequence[Event], slack_us: int = 0) -> EventMatch:
    """Incidents (superseded ones left out) against labelled events of the same device: an incident
    is true when its span meets an event's (widened by ``slack_us`` each side); an event is detected
    when a true incident meets it."""
    live = [i for i in incidents if i.status != SUPERSEDED]
    by_device: dict[str, list[Event]] = {}
    for e in events:
        by_device.setdefault(e.device, []).append(e)
    hit_events: set[int] = set()
    index = {id(e): k for k, e in enumerate(events)}
    true = 0
    for inc in live:
        met = [e for e in by_device.get(inc.device, ())
               if inc.start_us <= e.end_us + slack_us and e.start_us - slack_us <= inc.last_us]
        if met:
            true += 1
            hit_events.update(index[id(e)] for e in met)
    return EventMatch(events=len(events), events_detected=len(hit_events), incidents=len(live), true_incidents=true)
