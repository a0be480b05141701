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

Novelty: X may carry, after its F feature columns, F novelty codes (`fleetscore.core.context.novelty`:
+1 / -1 when the feature's value is above / below all of its recent past). A deviation then
counts in full only where the reading is new in the direction it deviates; elsewhere at most
``NOT_NEW`` (half the threshold): a burst no larger than recent bursts, or a shift that has
persisted, stops alarming. Training uses the feature columns only.

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
from dataclasses import dataclass

import numpy as np

from fleetscore.core.calibrate import (DEFAULT_ALARM_RATE, DEFAULT_TAIL_EXPONENT, SEVERITY_BODY, deviation_threshold,
                                       robust_spread, tail_exponent)
from fleetscore.core.severity import severity_from_tail
from fleetscore.errors import FleetscoreError, InputError, ModelFormatError

#: Arrays written now; format 2 (no ``tail`` and ``rate``: severities assume a Gaussian-like tail at the
#: default rate) and format 1 (no ``profile`` either, written before daily profiles) are still read.
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
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
#: A deviation in a direction the reading is not new in (see Novelty) counts at most this much of its threshold.
NOT_NEW = 0.5

_FIELDS = ("center", "weight", "intercept", "profile", "tail", "rate")
#: Fields each format holds (later ones get defaults when an older file is read).
_FORMAT_FIELDS = {1: _FIELDS[:3], 2: _FIELDS[:4], 3: _FIELDS}


def _bad(name: str, problem: str) -> ModelFormatError:
    return ModelFormatError(f"invalid robust model array {name!r}: {problem}")


@dataclass(frozen=True, eq=False)
class RobustParams:
    """Parameters of M robust models over F features; construction validates (ModelFormatError)."""

    center: np.ndarray  # (M, F) float64, finite
    weight: np.ndarray  # (M, F) float64, finite, >= 0 (0 = feature not used by the model)
    intercept: np.ndarray  # (M,) float64, finite
    profile: np.ndarray | None = None  # (M, F, 2 * HARMONICS) float64, finite; None = all zero
    tail: np.ndarray | None = None  # (M, F) float64, > 0: severity tail exponents; None = DEFAULT_TAIL_EXPONENT
    rate: np.ndarray | None = None  # (M,) float64 in (0, 1): tail probability at the threshold; None = default

    def __post_init__(self) -> None:
        if self.profile is None:
            object.__setattr__(self, "profile", np.zeros((*np.shape(self.center), 2 * HARMONICS)))
        if self.tail is None:
            object.__setattr__(self, "tail", np.full(np.shape(self.center), DEFAULT_TAIL_EXPONENT))
        if self.rate is None:
            object.__setattr__(self, "rate", np.full(np.shape(self.center)[:1], DEFAULT_ALARM_RATE))
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
        object.__setattr__(self, "_seasonal", bool(np.any(self.profile)))

    @property
    def seasonal(self) -> bool:
        """Whether some model has a daily profile (scoring then needs each row's time of day)."""
        return self._seasonal  # type: ignore[attr-defined]

    @property
    def n_models(self) -> int:
        return self.center.shape[0]

    @property
    def n_features(self) -> int:
        return self.center.shape[1]

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
        return RobustParams(self.center, self.weight, intercept, self.profile, self.tail, self.rate)


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
    return coef[1:]


def fit_one(X: np.ndarray, alarm_rate: float = DEFAULT_ALARM_RATE, heavy: Sequence[bool] = (),
            use: Sequence[bool] = (), phase: np.ndarray | None = None, seasonal: Sequence[bool] = ()) -> RobustParams:
    """Fit one model on X (rows, features); NaN means "feature not available for this row".

    ``heavy[j]``: feature j has a heavy far tail (see `tail_threshold`); ``use[j]`` False: the model
    ignores feature j (weight 0). Both default to all False / all True. ``phase`` (time of day of
    each row) and ``seasonal[j]`` True: feature j gets a daily profile where its rows cover the day.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise InputError(f"training data must be 2-D (rows, features >= 1), got shape {X.shape}")
    X = np.where(np.isinf(X), np.nan, X)  # an absurd training value is left out, like a missing one
    if np.count_nonzero(np.isfinite(X[:, 0])) < MIN_ROWS:
        raise InputError(f"training data has {np.count_nonzero(np.isfinite(X[:, 0]))} usable row(s); "
                         f"a robust model needs at least {MIN_ROWS}")
    n_features = X.shape[1]
    use = np.asarray(use, dtype=bool) if len(use) else np.ones(X.shape[1], dtype=bool)
    heavy = np.asarray(heavy, dtype=bool) if len(heavy) else np.zeros(X.shape[1], dtype=bool)
    used = max(1, int(np.sum(use & (np.count_nonzero(np.isfinite(X), axis=0) >= MIN_FEATURE_ROWS))))
    per_feature = alarm_rate / used  # each feature's share of the target rate
    seasonal = np.asarray(seasonal, dtype=bool) if len(seasonal) else np.zeros(n_features, dtype=bool)
    if phase is not None and np.shape(phase) != (X.shape[0],):
        raise InputError(f"phase must have shape ({X.shape[0]},), got {np.shape(phase)}")
    center = np.zeros(n_features)
    weight = np.zeros(n_features)
    tail = np.full(n_features, DEFAULT_TAIL_EXPONENT)
    profile = np.zeros((n_features, 2 * HARMONICS))
    for j in range(n_features):
        finite = np.isfinite(X[:, j])
        col = X[:, j][finite]
        if col.size < MIN_FEATURE_ROWS or not use[j]:
            continue
        if seasonal[j] and phase is not None and covers_day(phase[finite]):
            basis = daily_basis(phase[finite])
            profile[j] = fit_profile(col, basis)
            col = col - basis @ profile[j]
        center[j] = np.median(col)
        spread = robust_spread(col, center[j])
        dev = np.abs(col - center[j])
        distance = deviation_threshold(dev / spread, per_feature, bool(heavy[j])) * spread
        if np.isfinite(distance) and distance > 0:
            weight[j] = 1.0 / distance
            tail[j] = tail_exponent(float(np.quantile(dev, SEVERITY_BODY)) / distance, per_feature)
    return RobustParams(center[None], weight[None], np.ones(1), profile[None], tail[None], np.array([alarm_rate]))


def fit_many(groups: Sequence[np.ndarray], alarm_rate: float = DEFAULT_ALARM_RATE, heavy: Sequence[bool] = (),
             use: Sequence[bool] = (), phases: Sequence[np.ndarray] | None = None,
             seasonal: Sequence[bool] = ()) -> tuple[RobustParams, np.ndarray, dict[int, str]]:
    """Fit one model per group: (params of the fitted ones, their group indices, group -> failure reason)."""
    parts: list[RobustParams] = []
    fitted: list[int] = []
    failures: dict[int, str] = {}
    for i, X in enumerate(groups):
        try:
            parts.append(fit_one(X, alarm_rate, heavy, use, None if phases is None else phases[i], seasonal))
        except FleetscoreError as exc:
            failures[i] = str(exc)
            continue
        fitted.append(i)
    width = next((np.shape(X)[1] for X in groups if np.ndim(X) == 2 and np.shape(X)[1] > 0), 1)
    params = RobustParams.concat(parts) if parts else RobustParams.empty(width)
    return params, np.array(fitted, dtype=np.int64), failures


def deviations(params: RobustParams, model_idx: np.ndarray, X: np.ndarray,
               phase: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of X (N, F, or N, 2F with novelty codes) and feature: |deviation| in units of its threshold
    (0 where missing or unused; capped at `NOT_NEW` where the reading is not new in its direction), and
    the models' indices as an array. ``phase`` is required when some model has a daily profile."""
    X = np.asarray(X, dtype=np.float64)
    F = params.n_features
    if X.ndim != 2 or X.shape[1] not in (F, 2 * F):
        raise InputError(f"input has shape {X.shape}, the robust models take {F} features (and their novelty)")
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
        diff = X[:, :F] - center
        dev = np.abs(diff) * params.weight[idx]
        dev[np.isnan(dev)] = 0.0  # missing feature, or an unused one (weight 0) with an infinite deviation
        if X.shape[1] == 2 * F:
            new = X[:, F:]
            old = ~np.isnan(new) & (new != np.sign(diff))
            dev = np.where(old, np.minimum(dev, NOT_NEW), dev)
    return np.minimum(dev, MAX_DEVIATION), idx


def decision_function(params: RobustParams, model_idx: np.ndarray, X: np.ndarray,
                      phase: np.ndarray | None = None) -> np.ndarray:
    """Score row r of X with model ``model_idx[r]``: intercept - max weighted |deviation| (see `deviations`)."""
    dev, idx = deviations(params, model_idx, X, phase)
    return params.intercept[idx] - dev.max(axis=1, initial=0.0)


def severity(params: RobustParams, model_idx: np.ndarray, X: np.ndarray,
             phase: np.ndarray | None = None) -> np.ndarray:
    """Severity in [0, 100] of row r of X under model ``model_idx[r]``'s calibration (module docstring)."""
    dev, idx = deviations(params, model_idx, X, phase)
    used = np.maximum(np.count_nonzero(params.weight > 0, axis=1), 1)[idx]
    scale = np.where(params.intercept > 0, params.intercept, 1.0)[idx]
    r = dev / scale[:, None]
    with np.errstate(over="ignore", divide="ignore"):
        # log10 p_j = log10(rate_j) * r ** k, the most extreme feature's, counted once per feature used
        log_rate = np.log10(params.rate[idx] / used)
        decades = (-log_rate[:, None] * r ** params.tail[idx]).max(axis=1, initial=0.0) - np.log10(used)
    return severity_from_tail(np.power(10.0, -np.maximum(decades, 0.0)))
