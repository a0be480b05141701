"""Robust z-score models (median / calibrated spread per feature) as flat arrays, and their scorer.

The cheap model kind: it needs little history, fits in microseconds and scores in one vectorised
pass. Per model m and feature j it stores a center (the training median) and a weight, the inverse
of the distance from the center at which that feature alone alarms at the target rate (the
feature's own tail calibrated by `fleetscore.core.calibrate`). A feature that carries no
information for this model (too few finite values) gets weight 0: that is how features are chosen
per model. The decision of a row is

    decision(x) = intercept[m] - max_j weight[m, j] * |x_j - center[m, j]|

with intercept 1 after fitting, so decision < 0 (an anomaly) exactly when some feature is beyond
its calibrated threshold, and -3 means "four times as far as the threshold". NaN features (no
history yet) are skipped.

Training envelope: the threshold extrapolated from the body of the training deviations is only
as good as the tail it assumes. Where the training data went far beyond it again and again (at
least twice the threshold in ``ENVELOPE_EPISODES`` separate episodes: bursty request counts, tweet
volumes, a square wave's edges), such deviations are normal for this sensor, and the threshold
moves out to the ``ENVELOPE_EPISODES``-th largest episode; a few anomalies in the training data
(fewer episodes) leave it alone. Where the extrapolated threshold lies beyond ``CAP`` times anything
the training data showed (a very heavy-tailed body: a mostly idle CPU, a byte counter), a *capped*
feature's threshold comes in to ``CAP`` times the training's largest deviation: values far outside
the training range alarm. Both only move a model's thresholds (its ``weight``), at fit time.

Sides: a feature may count deviations on one side only (``side`` -1: below its center, +1: above).

Persistence (``gate`` 1 for a feature; rows of one model in time order, as scoring passes them): a
deviation counts in full only where it is a new extreme of the ``GATE`` readings before it on its
side and those readings were not all beyond the threshold on that side already; elsewhere at most
``NOT_NEW`` (half the threshold). A level shift alarms at its onset and stops when it persists; a
burst no larger than the last few readings' does not alarm again. It depends only on the readings
(never on earlier decisions), so the score of a reading does not depend on where a window starts
once the model's previous ``GATE`` rows are scored with it (`fleetscore.core.context.LOOKBACK`).

Severity: each feature's calibration gives a tail probability for any deviation ``r`` (in units
of its threshold), ``p_j = rate_j ** (r ** tail[m, j])``: ``rate_j = rate[m] / (features used)`` at
the threshold (r = 1), and the exponent ``tail`` fitted through the training body
(`fleetscore.core.calibrate.tail_exponent`). The reading's tail probability is that of its most
extreme feature, counted once per feature used (``p = min(1, used * min_j p_j)``, so ``p = rate``
exactly at the decision threshold), and its severity is
`fleetscore.core.severity.severity_from_tail` of p: 50 at the default rate 1e-4 where decision is
0, and more the rarer the reading.

Daily profile: when the training rows cover every hour of the day, a *seasonal* feature's center
follows the model's own daily cycle: ``center[m, j] + profile[m, j] · daily_basis(phase)``, a few
Fourier harmonics of the reading's time of day (``phase`` in [0, 1)), fitted robustly on the
training values; the threshold is then calibrated on the deviations from that profile. A strong
daily cycle thus neither hides level shifts and drifts nor raises false alarms. Models without the
history (or features not seasonal) keep a zero profile: the center is constant. Pure: arrays in,
arrays out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import bottleneck as bn
import numpy as np

from fleetscore.core.calibrate import (
    DEFAULT_ALARM_RATE,
    DEFAULT_TAIL_EXPONENT,
    SEVERITY_BODY,
    deviation_threshold,
    robust_spread,
    tail_exponent,
)
from fleetscore.core.context import GATE as CONTEXT_GATE
from fleetscore.core.severity import severity_from_tail
from fleetscore.errors import FleetscoreError, InputError, ModelFormatError

#: Arrays written now; format 3 (no ``side`` and ``gate``: both sides count, no persistence rule), format 2
#: (no ``tail`` and ``rate`` either: severities assume a Gaussian-like tail at the default rate) and format 1
#: (no ``profile`` either, written before daily profiles) are still read.
FORMAT_VERSION = 4
READABLE_FORMATS = (1, 2, 3, 4)
#: Fourier harmonics of the time of day in a daily profile (1/day, 2/day, ...).
HARMONICS = 3
#: A daily profile is fitted only when every hour of the day has this many finite training values
#: (a day of readings every 10 minutes gives 6).
MIN_PROFILE_ROWS_PER_HOUR = 5
#: Profile fit: rows farther than this many robust spreads from the fit are left out of the refit.
PROFILE_CLIP = 3.5
PROFILE_ITERATIONS = 3
#: A model needs at least this many rows with a finite first feature (the reading's level).
MIN_ROWS = 3
#: A feature needs at least this many finite training values to be used by a model.
MIN_FEATURE_ROWS = 3
#: Scores are clipped here so that absurd inputs give a very negative, never an infinite, decision.
MAX_DEVIATION = 1e300
#: A gated deviation that is not new, or that persists (see Persistence), counts at most this much of its threshold.
NOT_NEW = 0.5
#: Previous rows a gated deviation is compared with (the context features' ``GATE``).
GATE = CONTEXT_GATE
#: Training envelope: separate episodes that must reach a deviation for it to count as normal, how far beyond the
#: threshold (in thresholds) that deviation must be to move it, and the episodes' grouping: deviations above
#: ``EPISODE_LEVEL`` thresholds at most ``EPISODE_GAP`` rows apart are one episode.
ENVELOPE_EPISODES = 3
ENVELOPE_MIN = 2.0
EPISODE_LEVEL = 0.5
EPISODE_GAP = 10
#: A capped feature's threshold is at most this many times the training's largest deviation.
CAP = 2.0

_FIELDS = ("center", "weight", "intercept", "profile", "tail", "rate", "side", "gate")
#: Fields each format holds (later ones get defaults when an older file is read).
_FORMAT_FIELDS = {1: _FIELDS[:3], 2: _FIELDS[:4], 3: _FIELDS[:6], 4: _FIELDS}


def _bad(name: str, problem: str) -> ModelFormatError:
    return ModelFormatError(f"invalid robust model array {name!r}: {problem}")


@dataclass(frozen=True, eq=False)
class RobustParams:
    """Parameters of M robust models over F features; construction validates (ModelFormatError)."""

    center: np.ndarray  # (M, F) float64, finite
    weight: np.ndarray  # (M, F) float64, finite, >= 0 (0 = feature not used by the model)
    intercept: np.ndarray  # (M,) float64, finite
    profile: np.ndarray = None  # type: ignore[assignment]  # (M, F, 2 * HARMONICS) float64, finite; None = all zero
    tail: np.ndarray = None  # type: ignore[assignment]  # (M, F) float64, > 0: severity tail exponents; None = DEFAULT_TAIL_EXPONENT
    rate: np.ndarray = None  # type: ignore[assignment]  # (M,) float64 in (0, 1): tail probability at the threshold; None = default
    side: np.ndarray = None  # type: ignore[assignment]  # (M, F) float64 in {-1, 0, 1}: the side deviations count on (0 both); None = 0
    gate: np.ndarray = None  # type: ignore[assignment]  # (M, F) float64 in {0, 1}: persistence rule applies; None = 0
    _seasonal: bool = field(init=False, default=False, repr=False)
    _gated: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        if self.profile is None:
            object.__setattr__(self, "profile", np.zeros((*np.shape(self.center), 2 * HARMONICS)))
        if self.tail is None:
            object.__setattr__(self, "tail", np.full(np.shape(self.center), DEFAULT_TAIL_EXPONENT))
        if self.rate is None:
            object.__setattr__(self, "rate", np.full(np.shape(self.center)[:1], DEFAULT_ALARM_RATE))
        for name in ("side", "gate"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(np.shape(self.center)))
        for name in _FIELDS:
            a = np.asarray(getattr(self, name))
            if a.dtype.kind != "f":
                raise _bad(name, f"dtype {a.dtype} is not floating")
            a = np.array(a, dtype=np.float64, order="C")
            a.flags.writeable = False
            object.__setattr__(self, name, a)
            if not np.isfinite(a).all():
                raise _bad(name, "contains NaN or inf")
        if self.center.ndim != 2 or self.center.shape[1] == 0:
            raise _bad("center", f"must be 2-D (models, features >= 1), got shape {self.center.shape}")
        if self.weight.shape != self.center.shape:
            raise _bad("weight", f"shape {self.weight.shape}, expected {self.center.shape}")
        if self.intercept.shape != (self.center.shape[0],):
            raise _bad("intercept", f"shape {self.intercept.shape}, expected ({self.center.shape[0]},)")
        if self.profile.shape != (*self.center.shape, 2 * HARMONICS):
            raise _bad("profile", f"shape {self.profile.shape}, expected {(*self.center.shape, 2 * HARMONICS)}")
        if self.tail.shape != self.center.shape or np.any(self.tail <= 0):
            raise _bad("tail", f"must be positive with shape {self.center.shape}, got shape {self.tail.shape}")
        if self.rate.shape != self.intercept.shape or np.any((self.rate <= 0) | (self.rate >= 1)):
            raise _bad("rate", f"must be in (0, 1) with shape {self.intercept.shape}, got shape {self.rate.shape}")
        if np.any(self.weight < 0):
            raise _bad("weight", "must be >= 0")
        if self.side.shape != self.center.shape or not np.isin(self.side, (-1.0, 0.0, 1.0)).all():
            raise _bad("side", f"must be -1, 0 or 1 with shape {self.center.shape}, got shape {self.side.shape}")
        if self.gate.shape != self.center.shape or not np.isin(self.gate, (0.0, 1.0)).all():
            raise _bad("gate", f"must be 0 or 1 with shape {self.center.shape}, got shape {self.gate.shape}")
        object.__setattr__(self, "_seasonal", bool(np.any(self.profile)))
        object.__setattr__(self, "_gated", bool(np.any(self.gate)))

    @property
    def seasonal(self) -> bool:
        """Whether some model has a daily profile (scoring then needs each row's time of day)."""
        return self._seasonal

    @property
    def gated(self) -> bool:
        """Whether some model applies the persistence rule (scoring then compares rows with the ones before)."""
        return self._gated

    @property
    def history_rows(self) -> int:
        """Rows of a model before a scored row that its score depends on (the persistence rule's `GATE`)."""
        return GATE if self.gated else 0

    @property
    def n_models(self) -> int:
        return int(self.center.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.center.shape[1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numeric arrays (plus ``format_version``) for ``np.savez``; inverse of `from_arrays`."""
        return {"format_version": np.array(FORMAT_VERSION, dtype=np.int64)} | {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> RobustParams:
        """Validate arrays written by `to_arrays` (any of `READABLE_FORMATS`); ModelFormatError if bad."""
        if "format_version" not in arrays:
            raise ModelFormatError("robust model arrays missing: format_version")
        version = np.asarray(arrays["format_version"])
        if version.shape != () or version.dtype.kind not in "iu" or int(version) not in READABLE_FORMATS:
            raise _bad("format_version", f"got {version!r}, this version reads {READABLE_FORMATS}")
        fields = _FORMAT_FIELDS[int(version)]
        missing = [k for k in fields if k not in arrays]
        if missing:
            raise ModelFormatError(f"robust model arrays missing: {', '.join(missing)}")
        return cls(*(np.asarray(arrays[k]) for k in fields))

    def take(self, indices: Sequence[int] | np.ndarray) -> RobustParams:
        idx = np.asarray(indices, dtype=np.int64)
        return RobustParams(*(getattr(self, k)[idx] for k in _FIELDS))

    @classmethod
    def concat(cls, parts: Sequence[RobustParams]) -> RobustParams:
        if not parts:
            raise InputError("concat needs at least one shard; use RobustParams.empty(n_features)")
        widths = {p.n_features for p in parts}
        if len(widths) != 1:
            raise InputError(f"cannot concat robust shards with different feature counts {sorted(widths)}")
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in _FIELDS))

    @classmethod
    def empty(cls, n_features: int) -> RobustParams:
        return cls(np.empty((0, n_features)), np.empty((0, n_features)), np.empty(0))

    def with_intercept(self, intercept: np.ndarray) -> RobustParams:
        return RobustParams(self.center, self.weight, intercept, self.profile, self.tail, self.rate, self.side,
                            self.gate)


def daily_basis(phase: np.ndarray) -> np.ndarray:
    """(N, 2 * HARMONICS) cos/sin of each harmonic of the time of day ``phase`` (fraction of a day)."""
    angle = 2.0 * np.pi * np.asarray(phase, dtype=np.float64)
    cos, sin = [np.cos(angle)], [np.sin(angle)]
    for _ in range(1, HARMONICS):  # angle addition: two trigonometric calls whatever the harmonics
        cos, sin = cos + [cos[-1] * cos[0] - sin[-1] * sin[0]], sin + [sin[-1] * cos[0] + cos[-1] * sin[0]]
    return np.stack(cos + sin, axis=1)


def covers_day(phase: np.ndarray) -> bool:
    """Whether every hour of the day holds at least `MIN_PROFILE_ROWS_PER_HOUR` of the times ``phase``."""
    hours = np.bincount(np.clip((np.asarray(phase) * 24).astype(np.int64), 0, 23), minlength=24)
    return bool(hours.min() >= MIN_PROFILE_ROWS_PER_HOUR)


def fit_profile(col: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Harmonic coefficients of a daily profile (plus a constant) fitted to ``col``, refitted without outliers."""
    design = np.hstack([np.ones((len(col), 1)), basis])
    keep = np.ones(len(col), dtype=bool)
    for _ in range(PROFILE_ITERATIONS):
        coef = np.linalg.lstsq(design[keep], col[keep], rcond=None)[0]
        resid = col - design @ coef
        keep = np.abs(resid) <= PROFILE_CLIP * robust_spread(resid, 0.0)
    coefficients: np.ndarray = coef[1:]
    return coefficients


def episode_peaks(r: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Peak of each episode of ``r`` (deviations in thresholds at training rows ``rows``, in time order): values
    above `EPISODE_LEVEL` at most `EPISODE_GAP` rows apart form one episode."""
    above = np.flatnonzero(r > EPISODE_LEVEL)
    if not above.size:
        return np.empty(0)
    breaks = np.r_[0, np.flatnonzero(np.diff(rows[above]) > EPISODE_GAP) + 1]
    return np.maximum.reduceat(r[above], breaks)


def envelope_scale(r: np.ndarray, rows: np.ndarray, capped: bool) -> float:
    """Factor the threshold moves by (see Training envelope), from training deviations ``r`` in thresholds."""
    peaks = np.sort(episode_peaks(r, rows))[::-1]
    if peaks.size >= ENVELOPE_EPISODES and peaks[ENVELOPE_EPISODES - 1] >= ENVELOPE_MIN:
        return float(peaks[ENVELOPE_EPISODES - 1])
    largest = float(r.max(initial=0.0))
    if capped and 0.0 < CAP * largest < 1.0:
        return CAP * largest
    return 1.0


def fit_one(X: np.ndarray, alarm_rate: float = DEFAULT_ALARM_RATE, heavy: Sequence[bool] = (),
            use: Sequence[bool] = (), phase: np.ndarray | None = None, seasonal: Sequence[bool] = (), *,
            side: Sequence[int] = (), gated: Sequence[bool] = (), capped: Sequence[bool] = ()) -> RobustParams:
    """Fit one model on X (rows, features, in time order); NaN means "feature not available for this row".

    ``heavy[j]``: feature j has a heavy far tail (see `tail_threshold`); ``use[j]`` False: the model
    ignores feature j (weight 0). Both default to all False / all True. ``phase`` (time of day of
    each row) and ``seasonal[j]`` True: feature j gets a daily profile where its rows cover the day.
    ``side[j]`` (-1, 0, 1), ``gated[j]`` and ``capped[j]``: see the module docstring (default 0 / False).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise InputError(f"training data must be 2-D (rows, features >= 1), got shape {X.shape}")
    X = np.where(np.isinf(X), np.nan, X)  # an absurd training value is left out, like a missing one
    if np.count_nonzero(np.isfinite(X[:, 0])) < MIN_ROWS:
        raise InputError(f"training data has {np.count_nonzero(np.isfinite(X[:, 0]))} usable row(s); "
                         f"a robust model needs at least {MIN_ROWS}")
    n_features = X.shape[1]
    uses = np.asarray(use, dtype=bool) if len(use) else np.ones(X.shape[1], dtype=bool)
    heavies = np.asarray(heavy, dtype=bool) if len(heavy) else np.zeros(X.shape[1], dtype=bool)
    used = max(1, int(np.sum(uses & (np.count_nonzero(np.isfinite(X), axis=0) >= MIN_FEATURE_ROWS))))
    per_feature = alarm_rate / used  # each feature's share of the target rate
    seasonals = np.asarray(seasonal, dtype=bool) if len(seasonal) else np.zeros(n_features, dtype=bool)
    if phase is not None and np.shape(phase) != (X.shape[0],):
        raise InputError(f"phase must have shape ({X.shape[0]},), got {np.shape(phase)}")
    sides = np.asarray(side, dtype=np.float64) if len(side) else np.zeros(n_features)
    gate = np.asarray(gated, dtype=np.float64) if len(gated) else np.zeros(n_features)
    caps = np.asarray(capped, dtype=bool) if len(capped) else np.zeros(n_features, dtype=bool)
    center = np.zeros(n_features)
    weight = np.zeros(n_features)
    tail = np.full(n_features, DEFAULT_TAIL_EXPONENT)
    profile = np.zeros((n_features, 2 * HARMONICS))
    for j in range(n_features):
        finite = np.isfinite(X[:, j])
        col = X[:, j][finite]
        if col.size < MIN_FEATURE_ROWS or not uses[j]:
            continue
        if seasonals[j] and phase is not None and covers_day(phase[finite]):
            basis = daily_basis(phase[finite])
            profile[j] = fit_profile(col, basis)
            col = col - basis @ profile[j]
        center[j] = np.median(col)
        spread = robust_spread(col, center[j])
        dev = np.abs(col - center[j])
        distance = deviation_threshold(dev / spread, per_feature, bool(heavies[j])) * spread
        if np.isfinite(distance) and distance > 0:
            r = (col - center[j]) / distance
            r = np.abs(r) if sides[j] == 0 else np.maximum(sides[j] * r, 0.0)
            distance *= envelope_scale(r, np.flatnonzero(finite), bool(caps[j]))
            weight[j] = 1.0 / distance
            tail[j] = tail_exponent(float(np.quantile(dev, SEVERITY_BODY)) / distance, per_feature)
    return RobustParams(center[None], weight[None], np.ones(1), profile[None], tail[None], np.array([alarm_rate]),
                        sides[None], gate[None])


def fit_many(groups: Sequence[np.ndarray], alarm_rate: float = DEFAULT_ALARM_RATE, heavy: Sequence[bool] = (),
             use: Sequence[bool] = (), phases: Sequence[np.ndarray] | None = None,
             seasonal: Sequence[bool] = (), *, side: Sequence[int] = (), gated: Sequence[bool] = (),
             capped: Sequence[bool] = ()) -> tuple[RobustParams, np.ndarray, dict[int, str]]:
    """Fit one model per group: (params of the fitted ones, their group indices, group -> failure reason)."""
    parts: list[RobustParams] = []
    fitted: list[int] = []
    failures: dict[int, str] = {}
    for i, X in enumerate(groups):
        try:
            parts.append(fit_one(X, alarm_rate, heavy, use, None if phases is None else phases[i], seasonal,
                                 side=side, gated=gated, capped=capped))
        except FleetscoreError as exc:
            failures[i] = str(exc)
            continue
        fitted.append(i)
    width = next((np.shape(X)[1] for X in groups if np.ndim(X) == 2 and np.shape(X)[1] > 0), 1)
    params = RobustParams.concat(parts) if parts else RobustParams.empty(width)
    return params, np.array(fitted, dtype=np.int64), failures


def deviations(params: RobustParams, model_idx: np.ndarray, X: np.ndarray,
               phase: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of X (N, F; extra columns are ignored) and feature: |deviation| in units of its threshold
    (0 where missing, unused or on a side the feature does not count; at most `NOT_NEW` where the
    persistence rule says so), and the models' indices as an array. Rows of one model must be
    contiguous and in time order (the persistence rule compares each with the model's rows before it).
    ``phase`` is required when some model has a daily profile."""
    X = np.asarray(X, dtype=np.float64)
    F = params.n_features
    if X.ndim != 2 or X.shape[1] < F:
        raise InputError(f"input has shape {X.shape}, the robust models take {F} features")
    idx = np.asarray(model_idx, dtype=np.int64)
    if idx.shape != (X.shape[0],):
        raise InputError(f"model_idx must have shape ({X.shape[0]},), got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= params.n_models):
        raise InputError(f"model_idx out of range for {params.n_models} models")
    center = params.center[idx]
    if params.seasonal:
        if phase is None or np.shape(phase) != (X.shape[0],):
            raise InputError(f"models with a daily profile need phase of shape ({X.shape[0]},), got "
                             f"{None if phase is None else np.shape(phase)}")
        center = center + np.einsum("nfk,nk->nf", params.profile[idx], daily_basis(phase))
    with np.errstate(invalid="ignore", over="ignore"):
        signed = (X[:, :F] - center) * params.weight[idx]
        signed[np.isnan(signed)] = 0.0  # missing feature, or an unused one (weight 0) with an infinite deviation
        side = params.side[idx]
        signed = np.where(side == 0, signed, side * np.maximum(side * signed, 0.0))
        signed = np.clip(signed, -MAX_DEVIATION, MAX_DEVIATION)
        dev = np.abs(signed)
        if params.gated:
            held = ~_counts_in_full(signed, idx, params.intercept[idx]) & (params.gate[idx] > 0)
            dev = np.where(held, np.minimum(dev, NOT_NEW), dev)
    return dev, idx


def feature_bounds(params: RobustParams, model_idx: np.ndarray, feature: np.ndarray,
                   phase: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the centre of feature ``feature[r]`` of model ``model_idx[r]`` (on its daily profile at ``phase``)
    and the values of that feature within its threshold, [lo, hi] (±inf on a side it does not count; NaN
    where the feature is unused or the threshold leaves no room): where the decision does not flag it."""
    idx = np.asarray(model_idx, dtype=np.int64)
    j = np.asarray(feature, dtype=np.int64)
    centre = params.center[idx, j]
    if params.seasonal and phase is not None:
        centre = centre + np.einsum("nk,nk->n", params.profile[idx, j], daily_basis(phase))
    weight, intercept, side = params.weight[idx, j], params.intercept[idx], params.side[idx, j]
    with np.errstate(divide="ignore"):
        distance = np.where((weight > 0) & (intercept > 0), intercept / weight, np.nan)
    lo = np.where(side > 0, -np.inf, centre - distance) + 0.0 * distance  # NaN stays NaN
    hi = np.where(side < 0, np.inf, centre + distance) + 0.0 * distance
    return centre, lo, hi


def _counts_in_full(signed: np.ndarray, idx: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per row and feature: whether the deviation is a new extreme on its side of the same model's `GATE`
    previous rows, and those rows were not all beyond ``threshold`` on that side (see Persistence).

    Each model's rows are laid out after `GATE` columns of NaN (features as rows, contiguous), so one moving
    maximum and minimum over the whole layout (bottleneck's, skipping NaN) never reach into another model's rows."""
    n = len(idx)
    if n == 0:
        return np.zeros(signed.shape, dtype=bool)
    first = np.r_[True, idx[1:] != idx[:-1]]
    block = np.cumsum(first)  # 1 for the first model's rows, 2 for the next, ...
    rows = np.arange(n)
    pos = rows - np.flatnonzero(first)[block - 1]  # rows of the same model before this one
    at = rows + GATE * block  # each row's place in the padded layout
    padded = np.full((signed.shape[1], n + GATE * int(block[-1])), np.nan)
    padded[:, at] = signed.T
    most = bn.move_max(padded, GATE, min_count=1, axis=1)[:, at - 1].T  # over the GATE rows before; NaN if none
    least = bn.move_min(padded, GATE, min_count=1, axis=1)[:, at - 1].T
    up = signed >= 0
    full = (pos >= GATE)[:, None]  # all GATE rows before exist: a model's first rows never persist
    thr = threshold[:, None]
    with np.errstate(invalid="ignore"):
        new = np.where(up, ~(signed <= most), ~(signed >= least))  # no row before (NaN): new
        persists = full & np.where(up, least > thr, most < -thr)
    counts: np.ndarray = new & ~persists
    return counts


def decision_function(params: RobustParams, model_idx: np.ndarray, X: np.ndarray,
                      phase: np.ndarray | None = None) -> np.ndarray:
    """Score row r of X with model ``model_idx[r]``: intercept - max weighted |deviation| (see `deviations`)."""
    dev, idx = deviations(params, model_idx, X, phase)
    return _decision(params, dev, idx)


def severity(params: RobustParams, model_idx: np.ndarray, X: np.ndarray,
             phase: np.ndarray | None = None) -> np.ndarray:
    """Severity in [0, 100] of row r of X under model ``model_idx[r]``'s calibration (module docstring)."""
    dev, idx = deviations(params, model_idx, X, phase)
    return _severity(params, dev, idx)


def decision_and_severity(params: RobustParams, model_idx: np.ndarray, X: np.ndarray,
                          phase: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`decision_function` and `severity` of every row from one pass over the deviations (what scoring writes)."""
    dev, idx = deviations(params, model_idx, X, phase)
    return _decision(params, dev, idx), _severity(params, dev, idx)


def _decision(params: RobustParams, dev: np.ndarray, idx: np.ndarray) -> np.ndarray:
    decision: np.ndarray = params.intercept[idx] - dev.max(axis=1, initial=0.0)
    return decision


def _severity(params: RobustParams, dev: np.ndarray, idx: np.ndarray) -> np.ndarray:
    used = np.maximum(np.count_nonzero(params.weight > 0, axis=1), 1)[idx]
    scale = np.where(params.intercept > 0, params.intercept, 1.0)[idx]
    r = dev / scale[:, None]
    with np.errstate(over="ignore", divide="ignore"):
        # log10 p_j = log10(rate_j) * r ** k, the most extreme feature's, counted once per feature used
        log_rate = np.log10(params.rate[idx] / used)
        decades = (-log_rate[:, None] * r ** params.tail[idx]).max(axis=1, initial=0.0) - np.log10(used)
    return severity_from_tail(np.power(10.0, -np.maximum(decades, 0.0)))
