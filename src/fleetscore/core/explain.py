"""Why a flagged reading was flagged, in the units of the reading: the part of the model that fired, the
value expected there and the band of values it left.

Per kind (`fleetscore.core.kinds`):

* ``robust``: the feature with the largest deviation (as the decision counts it, persistence rule
  included) fired. Its band is where the reading would have kept that feature within its threshold
  (``centre ± intercept / weight``, the centre following the model's daily profile where it has one)
  with the reading's history fixed, and ``expected`` the value nearest the reading at which the
  feature sits at its centre. The level's band is closed form; the context residual and drift are
  monotone piecewise-linear functions of the reading given its history (`fleetscore.core.context`),
  so their band is found exactly by evaluating the feature at its kinks and interpolating.
  A stuck reading (the flat feature) and ``window:`` aggregates have no band in the reading's units.
* ``ocsvm``: the RBF decision has no band in closed form; the reason is the feature farthest from the
  model's training mean in training standard deviations.
* ``device``: the reason names the device-time's top sensors (`device_reason`); T² and Q have no band.

Reasons are the feature labels (`feature_labels`: ``level``, ``residual``, ``drift``, ``stuck``,
``window mean`` ...), with `PROFILED` appended where the centre followed a daily profile. Pure:
arrays in, arrays out; called on the flagged rows only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from fleetscore.core import context, ocsvm, robust
from fleetscore.core.context import _agreeing
from fleetscore.core.windows import WINDOW_FEATURES

#: Labels of the context features (`fleetscore.core.context.CONTEXT_FEATURES`), as reasons name them.
CONTEXT_LABELS = ("level", "residual", "drift", "stuck")
#: Appended to a reason whose feature's centre follows the model's daily profile.
PROFILED = " (daily profile)"
#: The readings before a flagged one that its context features read (the drift's older baseline).
HISTORY = context.GAP + context.LONG - 1
#: Context features (by column) whose band in the reading's units is found from the reading's history.
_FROM_HISTORY = (1, 2)
#: Index of the reading's own level among the features of ``raw`` and ``context``.
_LEVEL = 0


def feature_labels(features: str) -> tuple[str, ...]:
    """Labels of the feature columns of a spec named ``features`` (``raw``, ``context`` or ``window``)."""
    if features == "context":
        return CONTEXT_LABELS
    if features == "window":
        return tuple(f"window {name}" for name in WINDOW_FEATURES)
    return ("level",)


def device_reason(sensors: Sequence[str]) -> str:
    """The reason of a device model's flagged device-time: its top sensors, most contributing first."""
    return "device model: " + ", ".join(sensors) if sensors else "device model"


@dataclass(frozen=True)
class Explanation:
    """Per explained row: ``expected``, ``lower``, ``upper`` in the reading's units (NaN: none) and ``reason``."""

    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    reason: list[str]

    @classmethod
    def unbounded(cls, reason: list[str]) -> Explanation:
        """Reasons without a band."""
        return cls(np.full(len(reason), np.nan), np.full(len(reason), np.nan), np.full(len(reason), np.nan), reason)


def explain_bundle(bundle: Mapping[str, Any], kinds: pa.DictionaryArray, slots: np.ndarray, X: np.ndarray,
                   value: np.ndarray, phase: np.ndarray | None, rows: np.ndarray, features: str,
                   previous: np.ndarray | None = None) -> Explanation:
    """Explain ``rows`` of one scoring pass (``kinds``, ``slots``, ``X``, ``phase`` as `kinds.score_bundle` took
    them; rows of a model together and in time order; ``value`` the readings of ``rows``). ``previous`` (context features):
    per explained row the `HISTORY` readings of its series before it, oldest first, NaN before the series starts.
    Device models are explained where they are scored (`device_reason`)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = Explanation.unbounded([""] * len(rows))
    codes = kinds.indices.to_numpy(zero_copy_only=False)
    for code, name in enumerate(kinds.dictionary.to_pylist()):
        mine = np.flatnonzero(codes[rows] == code)
        if not mine.size:
            continue
        at = rows[mine]
        if name == "robust":
            part = explain_robust(bundle[name], (codes == code, slots), X, value[mine], phase, at, features,
                                  None if previous is None else previous[mine])
        elif name == "ocsvm":
            part = explain_ocsvm(bundle[name], slots[at], X[at], features)
        else:  # per-device kinds are explained where they are scored
            continue
        for column, got in ((out.expected, part.expected), (out.lower, part.lower), (out.upper, part.upper)):
            column[mine] = got
        for i, text in zip(mine.tolist(), part.reason):
            out.reason[i] = text
    return out


def explain_ocsvm(params: ocsvm.OcsvmParams, model_idx: np.ndarray, X: np.ndarray, features: str) -> Explanation:
    """The feature farthest from the training mean (in training standard deviations) of each row; no band."""
    idx = np.asarray(model_idx, dtype=np.int64)
    z = np.abs((np.asarray(X, dtype=np.float64)[:, : params.n_features] - params.mean[idx]) / params.scale[idx])
    fired = np.nan_to_num(z, nan=0.0).argmax(axis=1) if len(idx) else np.empty(0, dtype=np.int64)
    labels = feature_labels(features)
    return Explanation.unbounded([labels[j] for j in fired.tolist()])


def explain_robust(params: robust.RobustParams, same_model: tuple[np.ndarray, np.ndarray], X: np.ndarray,
                   value: np.ndarray, phase: np.ndarray | None, rows: np.ndarray, features: str,
                   previous: np.ndarray | None = None) -> Explanation:
    """Robust models' ``rows`` of a pass over ``X`` (``same_model``: per row of the pass, whether it is of this
    kind, and its slot; ``value``: the readings of ``rows``): the feature that fired and its band (module docstring)."""
    of_kind, slots = same_model
    sub = _with_previous(rows, of_kind, slots, robust.GATE if params.gated else 0)
    at = np.searchsorted(sub, rows)
    dev, _ = robust.deviations(params, slots[sub], X[sub], None if phase is None else phase[sub])
    fired = dev[at].argmax(axis=1)
    idx = slots[rows].astype(np.int64)
    row_phase = None if phase is None else phase[rows]
    centre, t_lo, t_hi = robust.feature_bounds(params, idx, fired, row_phase)
    expected, lower, upper = (np.full(len(rows), np.nan) for _ in range(3))
    v = np.asarray(value, dtype=np.float64)
    if features in ("raw", "context"):
        level = fired == _LEVEL
        expected[level], lower[level], upper[level] = centre[level], t_lo[level], t_hi[level]
    if features == "context" and previous is not None:
        for j in _FROM_HISTORY:
            on = np.flatnonzero(fired == j)
            if on.size:
                got = history_band(previous[on], v[on], j, t_lo[on], t_hi[on], centre[on])
                expected[on], lower[on], upper[on] = got
    profiled = params.profile[idx, fired].any(axis=-1)
    labels = feature_labels(features)
    reason = [labels[j] + (PROFILED if p else "") for j, p in zip(fired.tolist(), profiled.tolist())]
    expected, lower, upper = (np.where(np.isfinite(a), a, np.nan) for a in (expected, lower, upper))
    return Explanation(expected, lower, upper, reason)


def _with_previous(rows: np.ndarray, of_kind: np.ndarray, slots: np.ndarray, depth: int) -> np.ndarray:
    """``rows`` and up to ``depth`` rows of the same model before each (what the persistence rule compares), sorted."""
    if not depth:
        return np.unique(rows)
    back = rows[:, None] - np.arange(depth + 1)
    ok = back >= 0
    back = np.maximum(back, 0)
    ok &= of_kind[back] & (slots[back] == slots[rows][:, None])
    return np.unique(back[ok])


def history_band(previous: np.ndarray, value: np.ndarray, feature: int, t_lo: np.ndarray, t_hi: np.ndarray,
                 centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected, lower, upper) of readings whose context feature ``feature`` (residual or drift) left [t_lo, t_hi]:
    the readings, with the same history ``previous`` (rows, `HISTORY`; oldest first, NaN before the series),
    whose feature stays within it (±inf: unbounded on that side) and the one nearest ``value`` at ``centre``.

    Given its history the feature is a nondecreasing piecewise-linear function of the reading whose kinks lie
    among the history's medians, the two readings before it and their differences: evaluated there
    (`context_feature_at`), its preimages are exact linear interpolations."""
    anchors = _anchors(previous)
    recent, old, nearer, lo, hi = anchors
    kinks = np.stack([recent, old, nearer, lo, hi, hi + old - nearer, lo + old - nearer, value], axis=1)
    points = np.sort(np.where(np.isfinite(kinks), kinks, value[:, None]), axis=1)
    points = np.concatenate([points[:, :1] - 1.0, points, points[:, -1:] + 1.0], axis=1)
    f = context_feature_at(anchors, points, feature)
    upper = _last_at_most(points, f, t_hi)
    lower = _first_at_least(points, f, t_lo)
    expected = np.clip(value, _first_at_least(points, f, centre), _last_at_most(points, f, centre))
    empty = lower > upper
    return (np.where(empty, np.nan, expected), np.where(empty, np.nan, lower), np.where(empty, np.nan, upper))


def _anchors(previous: np.ndarray) -> tuple[np.ndarray, ...]:
    """What a reading's residual and drift compare it with, from the readings before it (``previous``, `HISTORY`
    columns, oldest first): the medians of the residual's baseline and the drift's two baselines (NaN without
    the history), and the smaller and larger of the two readings before it (the short median's others)."""
    base, gap, long, near = context.BASE, context.GAP, context.LONG, context.NEAR_GAP
    h = previous.shape[1]
    recent = np.median(previous[:, h - base:], axis=1)
    old = np.median(previous[:, h - gap - long + 1: h - gap + 1], axis=1)
    nearer = np.median(previous[:, h - near - long + 1: h - near + 1], axis=1)
    last = previous[:, h - context.SHORT + 1:]
    return recent, old, nearer, last.min(axis=1), last.max(axis=1)


def context_feature_at(anchors: tuple[np.ndarray, ...], v: np.ndarray, feature: int) -> np.ndarray:
    """Context feature ``feature`` (1: residual, 2: drift) of a reading of value ``v`` (rows, K) after the history
    summed up by ``anchors`` (`_anchors`), as `fleetscore.core.context.context_features` computes it."""
    recent, old, nearer, lo, hi = (a[:, None] for a in anchors)
    if feature == 1:  # the drift's baseline counts once the series is long enough to have it
        return np.where(np.isnan(old), v - recent, _agreeing(v - recent, v - old))
    short = np.clip(v, lo, hi)  # the median of the reading and the two before it
    return _agreeing(_agreeing(short - old, v - old), short - nearer)


def _last_at_most(v: np.ndarray, f: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sup{x: f(x) <= t} per row, for f nondecreasing, linear between the points ``v`` (sorted) and beyond them."""
    t = np.asarray(t, dtype=np.float64)
    n, k = v.shape
    above = f > t[:, None]
    first = np.where(above.any(axis=1), above.argmax(axis=1), k)
    r = np.arange(n)
    i = np.clip(first, 1, k - 1)  # the segment [v[i-1], v[i]] (the end segments extrapolated)
    df = f[r, i] - f[r, i - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = v[r, i - 1] + (t - f[r, i - 1]) * (v[r, i] - v[r, i - 1]) / df
    out = np.where(df > 0, x, np.where(first == k, np.inf, -np.inf))
    out = np.where((first > 0) & (first < k), x, out)
    return np.where(np.isposinf(t), np.inf, np.where(np.isneginf(t), -np.inf, out))


def _first_at_least(v: np.ndarray, f: np.ndarray, t: np.ndarray) -> np.ndarray:
    """inf{x: f(x) >= t} per row: `_last_at_most` of the mirrored function x -> -f(-x)."""
    return -_last_at_most(-v[:, ::-1], -f[:, ::-1], -np.asarray(t, dtype=np.float64))
