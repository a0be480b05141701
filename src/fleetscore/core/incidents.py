"""Incidents: a device's flagged readings grouped into something an operator acts on.

An incident belongs to one device and spans its flags on any of its sensors that lie within the
merge gap of each other. This module holds the value types every face and service shares and the
rules, as pure functions over arrays and these values: flags grouped into fragments
(:func:`group_flags`, a :data:`FRAGMENTS` table), fragments of several windows merged
(:func:`merge_fragments`), the groups reconciled with the stored incidents so ids,
acknowledgements and marks stay (:func:`reconcile` on values; on columns its two common cases:
devices it would leave alone, :func:`settled`, and groups that continue nothing,
:func:`new_incidents`), the quiet-period status (:func:`status_of`), and incidents matched to
labelled events (:func:`labelled_events`, :func:`match_events`). Ids come from the caller: no
randomness, no clock.
"""

from __future__ import annotations

import functools
import json
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
#: A fragments table: one row per (fragment, sensor), a fragment's rows consecutive, its sensors most flags first
#: (then by name), fragments by device, then start. ``start_us`` / ``last_us`` are the fragment's; ``flags`` and
#: ``severity`` (peak, null when none) the sensor's in it. Columns keep one window's part of the incidents small.
FRAGMENTS = pa.schema([("device", pa.string()), ("start_us", pa.int64()), ("last_us", pa.int64()),
                       ("sensor", pa.string()), ("flags", pa.int64()), ("severity", pa.float64())])


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


_NAMES = pa.dictionary(pa.int32(), pa.string())
#: Flagged readings as incident building takes them: ts (µs), device and sensor dictionary-encoded (no string per
#: row), severity (null without a calibrated tail).
FLAGS = pa.schema([("ts", pa.int64()), ("device", _NAMES), ("sensor", _NAMES), ("severity", pa.float64())])


def flags_of(predictions: pa.Table) -> pa.Table:
    """The flagged rows of a predictions table (``ts, device, sensor, is_anomaly``, ``severity`` when it has one) as a
    :data:`FLAGS` table: what a scoring task hands back with its outcome, and what is read of an older task's file."""
    table = predictions.filter(predictions.column("is_anomaly"))  # a null is no flag
    names = table.column_names
    severity = table.column("severity") if "severity" in names else pa.nulls(table.num_rows, pa.float64())
    columns = [pc.cast(table.column("ts"), pa.int64()), _dictionary(table.column("device")),
               _dictionary(table.column("sensor")), pc.cast(severity, pa.float64())]
    return pa.table(columns, schema=FLAGS)


def _dictionary(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return (values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)).cast(_NAMES)


def device_interval_s(intervals: Sequence[float | None], ts_us: Sequence[int] = ()) -> float:
    """A device's sampling interval: the median of its sensors' learned intervals; else the median
    positive gap of its readings' times ``ts_us``; else :data:`FALLBACK_INTERVAL_S`."""
    known = [float(v) for v in intervals if v is not None and math.isfinite(v) and v > 0]
    if known:
        return float(statistics.median(known))
    gaps = np.diff(np.unique(np.asarray(ts_us, dtype=np.int64)))
    return float(np.median(gaps)) / 1e6 if gaps.size else FALLBACK_INTERVAL_S


def learned_intervals(device: pa.Array | pa.ChunkedArray, interval_s: pa.Array | pa.ChunkedArray,
                      devices: Sequence[str]) -> dict[str, float]:
    """:func:`device_interval_s` from learned intervals for many devices at once (a manifest's ``device`` and
    ``interval_s`` columns, one row per model): the median per device of ``devices``, those without one left out."""
    code = lookup(device, devices)
    values = pc.fill_null(pc.cast(interval_s, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    known = (code >= 0) & np.isfinite(values) & (values > 0)
    code, values = code[known], values[known]
    order = np.lexsort((values, code))
    code, values = code[order], values[order]
    counts = np.bincount(code, minlength=len(devices))
    firsts = np.cumsum(counts) - counts
    has = np.flatnonzero(counts)
    lo, hi = firsts[has] + (counts[has] - 1) // 2, firsts[has] + counts[has] // 2
    medians = (values[lo] + values[hi]) / 2
    return {devices[d]: float(m) for d, m in zip(has.tolist(), medians.tolist())}


def group_flags(ts_us: np.ndarray, device: pa.Array | pa.ChunkedArray | Sequence[str],
                sensor: pa.Array | pa.ChunkedArray | Sequence[str], severity: np.ndarray,
                gap_us: Mapping[str, int]) -> pa.Table:
    """Flagged readings (any order) grouped per device into a :data:`FRAGMENTS` table: consecutive flags merge
    while the gap between them is at most the device's ``gap_us``. ``severity`` is NaN where a reading has none."""
    ts = np.asarray(ts_us, dtype=np.int64)
    return _merge(_codes(device), ts, ts, _codes(sensor), np.ones(len(ts), dtype=np.int64),
                  np.asarray(severity, dtype=np.float64), gap_us)


def merge_fragments(parts: pa.Table, gap_us: Mapping[str, int]) -> pa.Table:
    """Fragments (:data:`FRAGMENTS` rows, of several windows and devices, any order) merged per device where they
    lie within the device's ``gap_us`` of each other."""
    sev = pc.fill_null(pc.cast(parts.column("severity"), pa.float64()), np.nan)
    return _merge(_codes(parts.column("device")), as_ints(parts.column("start_us")), as_ints(parts.column("last_us")),
                  _codes(parts.column("sensor")), as_ints(parts.column("flags")),
                  sev.to_numpy(zero_copy_only=False).astype(np.float64), gap_us)


def fragments(table: pa.Table) -> list[Fragment]:
    """A :data:`FRAGMENTS` table as values, in its order (for the devices whose incidents change)."""
    if table.num_rows == 0:
        return []
    start, last = as_ints(table.column("start_us")), as_ints(table.column("last_us"))
    device = table.column("device").to_pylist()
    firsts = np.flatnonzero(_changes(_codes(table.column("device"))[1], start, last))
    sensor, flags = table.column("sensor").to_pylist(), table.column("flags").to_pylist()
    sev = pc.fill_null(table.column("severity"), np.nan).to_numpy(zero_copy_only=False)
    ends = np.append(firsts[1:], table.num_rows)
    peaks = np.fmax.reduceat(sev, firsts) if firsts.size else sev
    totals = np.add.reduceat(as_ints(table.column("flags")), firsts)
    return [Fragment(device[a], int(start[a]), int(last[a]), int(n), None if math.isnan(p) else float(p),
                     _share_tuple(tuple(zip(sensor[a:b], flags[a:b]))))
            for a, b, n, p in zip(firsts.tolist(), ends.tolist(), totals.tolist(), peaks.tolist())]


def fragment_table(parts: Sequence[Fragment]) -> pa.Table:
    """Fragment values as a :data:`FRAGMENTS` table (the inverse of :func:`fragments`); severity is each fragment's peak."""
    rows = [(f, s) for f in parts for s in f.sensors]
    return pa.table({"device": [f.device for f, _ in rows], "start_us": [f.start_us for f, _ in rows],
                     "last_us": [f.last_us for f, _ in rows], "sensor": [s.sensor for _, s in rows],
                     "flags": [s.flags for _, s in rows], "severity": [f.severity for f, _ in rows]}, schema=FRAGMENTS)


def _merge(dev_codes: tuple[list[str], np.ndarray], start: np.ndarray, last: np.ndarray,
           sen_codes: tuple[list[str], np.ndarray], flags: np.ndarray, sev: np.ndarray,
           gap_us: Mapping[str, int]) -> pa.Table:
    """The rows (device code, span, sensor code, flags, severity) grouped per device by the gap: a FRAGMENTS table."""
    (dev_names, dev), (sen_names, sen) = dev_codes, sen_codes
    n = len(start)
    if n == 0:
        return FRAGMENTS.empty_table()
    order = _order(dev, start)  # codes follow the names' order: by device name, then start
    dev, sen, start, last, flags, sev = dev[order], sen[order], start[order], last[order], flags[order], sev[order]
    used = np.flatnonzero(np.bincount(dev, minlength=len(dev_names)))
    gap_of = np.zeros(len(dev_names), dtype=np.int64)
    gap_of[used] = [gap_us[dev_names[d]] for d in used.tolist()]
    reach = _running_max(last, dev)
    new = np.ones(n, dtype=bool)
    new[1:] = (dev[1:] != dev[:-1]) | (start[1:] - reach[:-1] > gap_of[dev[1:]])
    firsts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    g_start, g_last, g_dev = start[firsts], np.maximum.reduceat(last, firsts), dev[firsts]
    width = len(sen_names)
    key = group * width + sen  # one row per (fragment, sensor)
    slots = len(firsts) * width
    if slots <= max(4 * n, 1 << 22):  # few (fragment, sensor) slots: count into them, no sort
        r_flags_all = np.bincount(key, weights=flags, minlength=slots).astype(np.int64)
        keys = np.flatnonzero(np.bincount(key, minlength=slots))
        peaks = np.full(slots, np.nan)
        np.fmax.at(peaks, key, sev)
        r_flags, r_sev = r_flags_all[keys], peaks[keys]
    else:
        by = np.argsort(key, kind="stable")
        key = key[by]
        edges = np.flatnonzero(np.append(True, key[1:] != key[:-1]))
        keys, r_flags = key[edges], np.add.reduceat(flags[by], edges)
        with np.errstate(invalid="ignore"):
            r_sev = np.fmax.reduceat(sev[by], edges)  # NaN only where none of the sensor's flags has a severity
    r_group, r_sen = keys // width, keys % width
    out = np.lexsort((r_sen, -r_flags, r_group))  # a fragment's sensors: most flags first, then by name
    r_group, r_sen, r_flags, r_sev = r_group[out], r_sen[out], r_flags[out], r_sev[out]
    return pa.table({"device": pa.array(dev_names, pa.string()).take(pa.array(g_dev[r_group])),
                     "start_us": pa.array(g_start[r_group]), "last_us": pa.array(g_last[r_group]),
                     "sensor": pa.array(sen_names, pa.string()).take(pa.array(r_sen)),
                     "flags": pa.array(r_flags), "severity": pa.array(r_sev, pa.float64(), mask=np.isnan(r_sev))},
                    schema=FRAGMENTS)


def _order(dev: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The order by device code, then start: one sort of a combined key where it fits in 63 bits."""
    if not len(start):
        return np.arange(0)
    low, span = int(start.min()), int(start.max()) - int(start.min()) + 1
    if (int(dev.max()) + 1) * span < 1 << 62:
        return np.argsort(dev * span + (start - low), kind="stable")
    return np.lexsort((start, dev))


def _running_max(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """The running maximum of ``values`` within each run of equal ``segment`` codes (sorted by segment)."""
    if not np.any((segment[1:] == segment[:-1]) & (values[1:] < values[:-1])):
        return values  # already non-decreasing within each segment (flags, one window's fragments)
    ranks, inverse = np.unique(values, return_inverse=True)
    base = segment.astype(np.int64) * len(ranks)  # segments ascending: a later one's keys exceed every earlier one's
    return ranks[np.maximum.accumulate(base + inverse) - base]


def _changes(dev: np.ndarray, start: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Where a new fragment begins in a FRAGMENTS table's rows."""
    new = np.ones(len(dev), dtype=bool)
    new[1:] = (dev[1:] != dev[:-1]) | (start[1:] != start[:-1]) | (last[1:] != last[:-1])
    return new


def as_ints(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer (or timestamp) column as int64 numbers."""
    return np.asarray(pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def lookup(values: pa.Array | pa.ChunkedArray, names: Sequence[str]) -> np.ndarray:
    """Each value's index in ``names`` (-1: not among them), one Python lookup per distinct value (Arrow's
    ``is_in`` / ``index_in`` import pandas on first use: a third of a second of a short run)."""
    distinct, codes = _codes(values)
    index = {n: i for i, n in enumerate(names)}
    found: np.ndarray = np.array([index.get(d, -1) for d in distinct], dtype=np.int64)[codes]
    return found


def _codes(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct strings, sorted, and each value's index among them (Arrow's dictionary encoding: no Python
    strings per row; a dictionary-encoded column is used as it is)."""
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.unify_dictionaries().combine_chunks() if pa.types.is_dictionary(array.type) \
            else array.combine_chunks()
    if not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array)
    names = array.dictionary.to_pylist()
    indices = array.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if len(set(names)) < len(names):  # a dictionary with repeats: encode its values afresh
        return _codes(array.cast(array.type.value_type))
    perm = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[perm] = np.arange(len(names))
    return [names[p] for p in perm], rank[indices]


@functools.lru_cache(maxsize=65536)
def _share_tuple(pairs: tuple[tuple[str, int], ...]) -> tuple[SensorShare, ...]:
    return tuple([SensorShare(s, int(n)) for s, n in pairs])


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


def settled(groups: pa.Table, existing: pa.Table, rules: Mapping[str, Rules]) -> set[str]:
    """Devices of ``rules`` whose incidents :func:`reconcile` would leave as they are: its fast path, on columns.

    ``groups``: a :data:`FRAGMENTS` table of the devices' regrouped flags; ``existing``: their stored incidents
    (``device, start_us, last_us, flags, severity, sensors`` (:func:`sensors_text`), ``status, resolved_us,
    interval_s, acknowledged_by``). A device is settled when its groups and incidents pair up one to one,
    each pair equal in everything reconcile sets; the others need :func:`reconcile` on values."""
    names = sorted(rules)
    if not names:
        return set()
    g_start, g_last = as_ints(groups.column("start_us")), as_ints(groups.column("last_us"))
    g_dev = lookup(groups.column("device"), names)
    firsts = np.flatnonzero(_changes(g_dev, g_start, g_last))
    g_dev = g_dev[firsts]
    g_flags = np.add.reduceat(as_ints(groups.column("flags")), firsts) if firsts.size else firsts
    sev = pc.fill_null(groups.column("severity"), np.nan).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        g_sev = np.fmax.reduceat(sev, firsts) if firsts.size else sev[:0]
    g_text = sensors_text(groups).to_numpy(zero_copy_only=False)
    g_start, g_last = g_start[firsts], g_last[firsts]
    e_dev = lookup(existing.column("device"), names)
    order = np.lexsort((as_ints(existing.column("start_us")), e_dev))
    existing, e_dev = existing.take(pa.array(order, pa.int64())), e_dev[order]
    count_g = np.bincount(g_dev, minlength=len(names))
    count_e = np.bincount(e_dev, minlength=len(names))
    pairs = (count_g == count_e)[g_dev]  # groups sort by device then start, and so do the incidents: pair them in order
    keep_e = (count_g == count_e)[e_dev]
    e = existing.filter(pa.array(keep_e))
    g = np.flatnonzero(pairs)
    acked = pc.is_valid(e.column("acknowledged_by")).to_numpy(zero_copy_only=False)
    status, resolved, interval = _statuses(g_last[g], acked, [rules[names[d]] for d in g_dev[g].tolist()])
    e_sev = pc.fill_null(pc.cast(e.column("severity"), pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    same = ((as_ints(e.column("start_us")) == g_start[g]) & (as_ints(e.column("last_us")) == g_last[g])
            & (as_ints(e.column("flags")) == g_flags[g])
            & ((e_sev == g_sev[g]) | (np.isnan(e_sev) & np.isnan(g_sev[g])))
            & (e.column("sensors").to_numpy(zero_copy_only=False) == g_text[g])
            & (e.column("status").to_numpy(zero_copy_only=False) == status)
            & (as_ints(pc.fill_null(e.column("resolved_us"), -1)) == resolved)
            & (e.column("interval_s").to_numpy(zero_copy_only=False) == interval))
    differs = np.bincount(g_dev[g][~same], minlength=len(names)) > 0
    return {names[d] for d in np.flatnonzero((count_g == count_e) & ~differs).tolist()}


def new_incidents(groups: pa.Table, rules: Mapping[str, Rules], new_ids: Callable[[int], Sequence[str]],
                  now_us: int) -> pa.Table:
    """Groups (a :data:`FRAGMENTS` table) that continue no incident, as new incidents named by ``new_ids(count)``,
    in columns: what :func:`reconcile` makes of them, without a value per incident. ``sensors`` is
    :func:`sensors_text`; acknowledgement and supersession are left out (none)."""
    start, last = as_ints(groups.column("start_us")), as_ints(groups.column("last_us"))
    firsts = np.flatnonzero(_changes(_codes(groups.column("device"))[1], start, last))
    device = groups.column("device").take(pa.array(firsts, pa.int64()))
    sev = pc.fill_null(groups.column("severity"), np.nan).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        peaks = np.fmax.reduceat(sev, firsts) if firsts.size else sev
    flags = np.add.reduceat(as_ints(groups.column("flags")), firsts) if firsts.size else firsts
    names, code = _codes(device)
    status, resolved, interval = _statuses(last[firsts], np.zeros(len(firsts), dtype=bool),
                                           [rules[names[d]] for d in code.tolist()])
    return pa.table({"id": pa.array(new_ids(len(firsts)), pa.string()), "device": device, "start_us": start[firsts],
                     "last_us": last[firsts], "status": pa.array(status, pa.string()),
                     "severity": pa.array(peaks, pa.float64(), mask=np.isnan(peaks)), "flags": flags,
                     "sensors": sensors_text(groups), "interval_s": interval,
                     "updated_us": np.full(len(firsts), now_us, dtype=np.int64),
                     "resolved_us": pa.array(resolved, pa.int64(), mask=resolved < 0)})


def _statuses(last_us: np.ndarray, acknowledged: np.ndarray, rules: Sequence[Rules]) -> tuple[np.ndarray, ...]:
    """:func:`status_of` on arrays (``rules``: each incident's): status, resolved time (-1: none) and interval."""
    quiet_us = np.array([r.quiet_us for r in rules], dtype=np.int64)
    horizon = np.array([r.horizon_us for r in rules], dtype=np.int64)
    quiet = last_us + quiet_us <= horizon
    status = np.where(quiet, RESOLVED, np.where(acknowledged, ACKNOWLEDGED, OPEN))
    return status, np.where(quiet, last_us + quiet_us, -1), np.array([r.interval_s for r in rules], dtype=np.float64)


def sensors_text(fragments: pa.Table) -> pa.Array:
    """Each fragment's sensors as JSON ``[[sensor, flags], ...]`` (most flags first), what the catalog keeps of an
    incident's: equal texts are equal shares, compared without decoding them."""
    if fragments.num_rows == 0:
        return pa.array([], pa.string())
    names, code = _codes(fragments.column("sensor"))
    quoted = pa.array([json.dumps(n) for n in names], pa.string()).take(pa.array(code))
    counts = pc.cast(fragments.column("flags").combine_chunks(), pa.string())
    rows = pc.binary_join_element_wise("[", quoted, ", ", counts, "]", "")
    firsts = np.flatnonzero(_changes(_codes(fragments.column("device"))[1], as_ints(fragments.column("start_us")),
                                     as_ints(fragments.column("last_us"))))
    lists = pa.ListArray.from_arrays(pa.array(np.append(firsts, fragments.num_rows), pa.int32()), rows)
    return pc.binary_join_element_wise("[", pc.binary_join(lists, ", "), "]", "")


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
