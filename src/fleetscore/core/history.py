"""How much history scoring reads before a window: learned sampling intervals and the readings features need.

A reading's features depend on the readings before it (`fleetscore.core.context` reads `LOOKBACK`
readings back, the device kind `fleetscore.core.device.HISTORY` device-times), so a window scored
with too little history gets other features, and other scores, than the same readings scored as
one span. The look-back is therefore counted in *readings*, not in time:

* **training** learns each series' typical sampling interval (`series_intervals`: the mean of its
  intervals up to `GAP_FACTOR` times their median, so irregular series get their mean rate and a
  gap does not count as an interval) and stores it with the model (the manifest's ``interval_s``);
  a device model's series are its device-times, spaced by its tick;
* **scoring** a shard first reads back ``need × interval × SLACK + interval`` for the model that
  needs the longest (`first_lookback_s`), then, while some model that has readings in the window
  still has fewer than it needs before the window (`short_units`), doubles the look-back for the
  key range of just those models, up to the maximum look-back (``context[:MAX]``; `MAX_LOOKBACK_S`,
  7 days, by default). A model that needs 0 readings (``raw``) reads nothing before the window;
  ``window:D`` aggregates read their window's width (`fleetscore.core.features.FeatureSpec`).

Scores are then the same however the readings are cut into windows, except after a gap longer
than the maximum look-back (a series silent for more than 7 days restarts its history; its first
readings after the gap are scored as the first readings of a series). Versions trained before
intervals were stored (no ``interval_s``: model format < 4) have an unknown interval and read the
fixed look-back of their features (``context:30m`` then reads 30 minutes, as it always did).

Pure: arrays in, numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleetscore.core import device
from fleetscore.core.context import LOOKBACK
from fleetscore.core.kinds import KINDS

#: Longest look-back scoring reads before a window by default (``context`` means ``context:7d``).
MAX_LOOKBACK_S = 7 * 86_400
#: An interval longer than this many times the series' median interval is a gap, not a sampling interval.
GAP_FACTOR = 10.0
#: The first read covers this many times the readings a model needs (irregular series vary around their rate).
SLACK = 1.1
_US = 1_000_000


def series_intervals(ts_us: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Typical sampling interval in seconds of each series (rows ``bounds[i]:bounds[i + 1]``, sorted by time).

    The mean of the series' positive intervals no longer than `GAP_FACTOR` times their median: the
    sampling interval of a regular series, the mean rate of an irregular one, gaps left out. NaN for
    a series with fewer than two distinct timestamps.
    """
    ts = np.asarray(ts_us, dtype=np.int64)
    bounds = np.asarray(bounds, dtype=np.int64)
    n_groups = bounds.size - 1
    out = np.full(max(n_groups, 0), np.nan)
    if n_groups <= 0 or ts.size < 2:
        return out
    group = np.repeat(np.arange(n_groups), np.diff(bounds))
    diff = np.diff(ts).astype(np.float64)
    same = group[1:] == group[:-1]
    ok = same & (diff > 0)
    g, d = group[1:][ok], diff[ok]
    if not g.size:
        return out
    order = np.lexsort((d, g))
    g, d = g[order], d[order]
    counts = np.bincount(g, minlength=n_groups)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    lo = first + (counts - 1) // 2
    hi = first + counts // 2
    median = np.zeros(n_groups)
    median[has] = (d[lo[has]] + d[hi[has]]) / 2.0
    typical = d <= GAP_FACTOR * median[g]
    total = np.bincount(g[typical], weights=d[typical], minlength=n_groups)
    kept = np.bincount(g[typical], minlength=n_groups)
    out[has] = total[has] / kept[has] / _US
    return out


def max_lookback_s(features: str, width_s: int, device_models: bool) -> float:
    """The most history scoring reads: ``context:LOOKBACK``'s (and ``window:D``'s) own width; for ``raw``
    features none, unless device models need their device-times (then `MAX_LOOKBACK_S`)."""
    if features in ("context", "window"):
        return float(width_s)
    return float(MAX_LOOKBACK_S) if device_models else 0.0


def first_lookback_s(need: np.ndarray, interval_s: np.ndarray, fixed_s: float, max_s: float) -> float:
    """Seconds of history the first read of a shard covers: enough for every model at its learned rate.

    ``need[m]``: readings (device-times) model m needs before a scored one; ``interval_s[m]`` its
    learned interval (NaN: unknown, the model then reads ``fixed_s``, its features' fixed look-back).
    Never more than ``max_s``; 0 when no model needs history.
    """
    need = np.asarray(need, dtype=np.float64)
    interval = np.asarray(interval_s, dtype=np.float64)
    wants = need > 0
    if not wants.any():
        return 0.0
    known = wants & np.isfinite(interval) & (interval > 0)
    longest = float(np.max(need[known] * interval[known] * SLACK + interval[known])) if known.any() else 0.0
    if (wants & ~known).any():
        longest = max(longest, float(fixed_s))
    return float(min(max(longest, 0.0), max_s))


@dataclass(frozen=True)
class HistoryNeeds:
    """Per model of a shard (a unit of history: one (device, sensor), or a device model's device-times).

    ``unit[r]``: the unit of manifest row r (rows of one device model share it); ``need[u]``: steps
    of history unit u needs; ``step_us[u]``: 0 when a step is one reading, else the width of a
    device-time (readings in one tick count once); ``known[u]``: whether its interval is known
    (unknown intervals read the fixed look-back only, never widen).
    """

    unit: np.ndarray
    need: np.ndarray
    step_us: np.ndarray
    known: np.ndarray


def readings_needed(features: str, kind: str | None) -> int:
    """Readings (device-times, for a device model) of history a model needs before a scored one.

    ``context`` features read `fleetscore.core.context.LOOKBACK` readings, device models
    `fleetscore.core.device.HISTORY` device-times; ``raw`` none (``window:D`` aggregates need their
    window's width in time, not readings: `fleetscore.core.features.FeatureSpec.lookback_s`).
    """
    if kind in KINDS and KINDS[kind].per_device:
        return device.HISTORY
    return LOOKBACK if features == "context" else 0


def history_needs(kinds: Sequence[str | None], slots: np.ndarray, interval_s: np.ndarray, features: str,
                  device_ticks_us: np.ndarray | None = None) -> HistoryNeeds:
    """What each model of a shard's manifest (rows: ``kinds``, ``slots``, learned ``interval_s``) needs.

    Rows of one device model (kind ``device``, one slot) share a unit, counted in device-times of
    ``device_ticks_us[slot]``; every other row is its own unit, counted in readings.
    """
    n = len(kinds)
    slots = np.asarray(slots, dtype=np.int64)
    interval = np.asarray(interval_s, dtype=np.float64)
    names = sorted({k for k in kinds if k is not None})
    code = np.array([-1 if k is None else names.index(k) for k in kinds], dtype=np.int64) if n else \
        np.zeros(0, dtype=np.int64)
    per_kind = np.array([readings_needed(features, k) for k in names] + [0], dtype=np.int64)
    need = per_kind[code]  # code -1 (no kind) takes the trailing 0
    per_device = np.array([k in KINDS and KINDS[k].per_device for k in names] + [False])[code] & (slots >= 0)
    unit = np.arange(n, dtype=np.int64)
    step = np.zeros(n, dtype=np.int64)
    known = np.isfinite(interval) & (interval > 0)
    rows = np.flatnonzero(per_device)
    if rows.size:  # rows of one device model share the unit of its first row, counted in device-times
        _, first_at, inverse = np.unique(slots[rows], return_index=True, return_inverse=True)
        first = rows[first_at]
        unit[rows] = first[inverse]
        step[first] = device_ticks_us[slots[first]] if device_ticks_us is not None else 0
        known[first] = True  # a device model's tick is always stored with it
        need[rows] = np.where(unit[rows] == rows, need[rows], 0)
    return HistoryNeeds(unit, need, step, known)


def short_units(needs: HistoryNeeds, run_unit: np.ndarray, bounds: np.ndarray, ts_us: np.ndarray,
                from_us: int) -> np.ndarray:
    """Units with readings at or after ``from_us`` that have fewer steps of history before it than they need.

    Rows come in runs (``bounds``: offsets of the runs, plus the end), each of one key and sorted by
    time, ``ts_us`` per row; ``run_unit[k]``: the unit of run k (-1: a key no model scores). A unit may
    have several runs (readings read in two parts). Counted per run, except for device models'
    units, whose readings in one device-time count once.
    """
    run_unit = np.asarray(run_unit, dtype=np.int64)
    bounds = np.asarray(bounds, dtype=np.int64)
    ts = np.asarray(ts_us, dtype=np.int64)
    n_units = needs.need.size
    if not n_units or not run_unit.size or not ts.size:
        return np.zeros(0, dtype=np.int64)
    lengths = np.diff(bounds)
    before = np.add.reduceat((ts < from_us).astype(np.int64), bounds[:-1]) if lengths.all() else \
        np.array([int(np.sum(ts[a:b] < from_us)) for a, b in zip(bounds[:-1], bounds[1:])], dtype=np.int64)
    scored = run_unit >= 0
    unit = np.where(scored, run_unit, 0)
    ticked = scored & (needs.step_us[unit] > 0)
    counted = scored & ~ticked
    active = np.bincount(unit[scored], weights=(lengths - before)[scored], minlength=n_units) > 0
    have = np.bincount(unit[counted], weights=before[counted], minlength=n_units)  # a key's timestamps are distinct
    if ticked.any():  # a device-time counts once, however many of its sensors have a reading in it
        runs = np.flatnonzero(ticked)
        rows = np.concatenate([np.arange(bounds[k], bounds[k] + before[k]) for k in runs.tolist()])
        tu = np.repeat(unit[runs], before[runs])
        slot = ts[rows] // needs.step_us[tu] if rows.size else rows
        order = np.lexsort((slot, tu))
        tu, slot = tu[order], slot[order]
        new = np.ones(tu.size, dtype=bool)
        new[1:] = (tu[1:] != tu[:-1]) | (slot[1:] != slot[:-1])
        have += np.bincount(tu[new], minlength=n_units)
    return np.flatnonzero(active & needs.known & (have < needs.need))


def widened(lookback_s: float, max_s: float) -> float:
    """The next look-back: twice this one, and at least an hour more (fast series need not creep out
    second by second over a gap), never beyond ``max_s``."""
    return float(min(max(2.0 * lookback_s, lookback_s + 3600.0), max_s))
