"""Thresholds calibrated to a target false-alarm rate from a model's own (unlabelled) training scores.

A fleet's training data holds anomalies too, and the target alarm rates are far below 1 / rows
(1e-4 on a day of minute readings is 0.14 readings), so the threshold cannot simply be an
empirical quantile: the highest training scores are often the anomalies themselves. Instead the
tail is extrapolated from the body of the distribution, which a few percent of anomalies barely
move: the exceedances over the median are fitted with a Weibull-type tail
``P(u - median > x | u > median) = exp(-(x / lam) ** k)`` through the ``BODY`` quantiles, and the
threshold is read off at the target rate. ``k = 2`` is a Gaussian-like tail, ``k = 1`` an
exponential one; fitting ``k`` lets each model's (and each feature's) own tail speak. With few rows
(or a degenerate body) a Gaussian (or exponential) tail through the body is used instead, at an
upper confidence bound of its spread, which so few values may well understate (`spread_bound`).
Rates large enough to be read straight from the data use the empirical quantile.

`tail_exponent` summarises a tail for severities: the exponent ``k`` of ``p(r) = rate ** (r ** k)``,
the tail probability of a deviation ``r`` thresholds out, through the threshold (``r = 1``) and the
body quantile.

Pure: arrays in, numbers out.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from fleetscore.errors import InputError

#: Default target rate of false alarms per scored row (one reading or window).
DEFAULT_ALARM_RATE = 1e-4
#: Quantiles of the anomaly measure the tail is fitted through (below the top 5%: robust to a few % of anomalies).
BODY = (0.8, 0.95)
#: Fewer finite training values than this: Gaussian tail on the robust spread instead of a fitted tail.
MIN_TAIL_ROWS = 100
#: An empirical quantile is used when at least this many training values lie beyond it.
MIN_EMPIRICAL_EXCEEDANCES = 50
_MAD_TO_SIGMA = 1.4826
#: Confidence with which a threshold fitted on few values allows for the error of their spread (`spread_bound`).
SPREAD_CONFIDENCE = 0.95
#: Degrees of freedom per value of a spread estimate (``1 / (2 n var(estimate / spread))``, a normal sample's
#: standard deviation has 1): the MAD of normal values, the ``BODY[0]`` quantile of their absolute deviations,
#: that of exponential (Laplace) deviations.
MAD_EFFICIENCY = 0.37
BODY_EFFICIENCY = 0.63
HEAVY_BODY_EFFICIENCY = 0.32
#: Quantile of the training deviations that a severity's tail passes through (with the threshold).
SEVERITY_BODY = 0.95
#: Tail exponent of severities where the body says nothing (a Gaussian-like tail), and its bounds.
DEFAULT_TAIL_EXPONENT = 2.0
TAIL_EXPONENT_RANGE = (0.2, 4.0)


def check_alarm_rate(rate: float) -> float:
    """The rate as a float in (0, 0.5), else InputError."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise InputError(f"--alarm-rate must be a number in (0, 0.5), got {rate!r}") from None
    if not 0 < value < 0.5:
        raise InputError(f"--alarm-rate must be in (0, 0.5), got {rate!r}")
    return value


def tail_threshold(u: np.ndarray, rate: float, heavy: bool = False) -> float:
    """Threshold t on an anomaly measure (higher = more anomalous) with P(u > t) ≈ ``rate``.

    ``heavy``: the measure is known to have an exponential (or heavier) far tail that the body
    under-states, so the fitted shape is capped at k = 1. NaNs are ignored. Returns +inf when there
    is no finite value to calibrate on.
    """
    u = np.asarray(u, dtype=np.float64)
    u = u[np.isfinite(u)]
    n = u.size
    if n == 0:
        return math.inf
    if rate * n >= MIN_EMPIRICAL_EXCEEDANCES:
        return float(np.quantile(u, 1.0 - rate))
    median = float(np.median(u))
    if n >= MIN_TAIL_ROWS:
        x1, x2 = (float(q) - median for q in np.quantile(u, BODY))
        if x1 > 0 and x2 > x1:
            s1, s2 = 2.0 * (1.0 - BODY[0]), 2.0 * (1.0 - BODY[1])  # conditional survival above the median
            k = (math.log(-math.log(s2)) - math.log(-math.log(s1))) / math.log(x2 / x1)
            k = min(k, 1.0) if heavy else k
            lam = x2 / (-math.log(s2)) ** (1.0 / k)
            return float(median + lam * (-math.log(min(2.0 * rate, 0.5))) ** (1.0 / k))
    return median + small_sample_z(rate, n, heavy) * robust_spread(u, median)


def tail_exponent(r_body: float, rate: float, body: float = SEVERITY_BODY) -> float:
    """Exponent k of ``p(r) = rate ** (r ** k)`` through the threshold (r = 1, p = rate) and the body
    quantile (``r_body``: its deviation over the threshold's, p = 1 - body), kept in `TAIL_EXPONENT_RANGE`."""
    if not (0.0 < r_body < 1.0) or not 0.0 < rate < 1.0 - body:
        return DEFAULT_TAIL_EXPONENT
    k = math.log(math.log(1.0 - body) / math.log(rate)) / math.log(r_body)
    return min(max(k, TAIL_EXPONENT_RANGE[0]), TAIL_EXPONENT_RANGE[1])


def deviation_threshold(dev: np.ndarray, rate: float, heavy: bool = False) -> float:
    """Threshold t on absolute deviations in robust-sigma units (``|x - center| / spread``), P(dev > t) ≈ ``rate``.

    With enough rows this is `tail_threshold`. With few, the two-sided normal (``heavy``: Laplace)
    quantile on the scale read from the outer body, the ``BODY[0]`` quantile of the deviations (the
    body nearest the tail, as `tail_threshold` reads it; a centre compressed towards 0 shrinks the
    MAD, not it), times the scale's `spread_bound`: a threshold on the understated spread of a few
    values would alarm far above ``rate``.
    """
    dev = np.asarray(dev, dtype=np.float64)
    dev = dev[np.isfinite(dev)]
    n = dev.size
    if n >= MIN_TAIL_ROWS or n == 0:
        return tail_threshold(dev, rate, heavy)
    body = float(np.quantile(dev, BODY[0]))
    if body <= 0:
        return small_sample_z(rate / 2.0, n, heavy)
    if heavy:  # P(dev > t) = exp(-t / b), and the body quantile is b * -log(1 - BODY[0])
        return math.log(rate) / math.log(1.0 - BODY[0]) * body * spread_bound(n, HEAVY_BODY_EFFICIENCY)
    z, z_body = (NormalDist().inv_cdf(1.0 - q / 2.0) for q in (rate, 1.0 - BODY[0]))
    return z / z_body * body * spread_bound(n, BODY_EFFICIENCY)


def small_sample_z(rate: float, n: int, heavy: bool = False) -> float:
    """Normal (``heavy``: Laplace) one-sided quantile for ``rate`` on the robust spread of ``n`` values, times its
    `spread_bound`."""
    z = -math.log(2.0 * rate) / math.sqrt(2.0) if heavy else NormalDist().inv_cdf(1.0 - rate)
    return z * spread_bound(n, MAD_EFFICIENCY)


def spread_bound(n: int, efficiency: float) -> float:
    """Upper `SPREAD_CONFIDENCE` bound of (true spread / estimate) for a spread estimated from ``n`` values.

    The estimate is taken as a chi distribution with ``efficiency * n`` degrees of freedom (at least 1),
    its quantile by the Wilson-Hilferty approximation: a one-sided tolerance factor, 1 for many values.
    """
    nu = max(efficiency * n, 1.0)
    z = NormalDist().inv_cdf(SPREAD_CONFIDENCE)
    low = 1.0 - 2.0 / (9.0 * nu) - z * math.sqrt(2.0 / (9.0 * nu))  # cube root of chi2(nu) at 1 - confidence, / nu
    return 1.0 / math.sqrt(low**3)


def robust_spread(u: np.ndarray, center: float) -> float:
    """MAD scaled to a normal sigma; mean absolute deviation when the MAD is 0; tiny (not 0) if constant."""
    dev = np.abs(u - center)
    mad = float(np.median(dev)) * _MAD_TO_SIGMA
    if mad > 0:
        return mad
    mean_dev = float(np.mean(dev)) * 1.2533  # sqrt(pi/2): mean |N(0,1)| -> sigma
    if mean_dev > 0:
        return mean_dev
    return max(abs(center) * 1e-9, 1e-12)


def decision_offset(decisions: np.ndarray, rate: float) -> float:
    """Offset t for decision values (higher = more normal, < 0 anomaly) so P(decision < t) ≈ rate.

    Folding it into a model's intercept (``intercept - t``) keeps the rule "decision < 0 is an
    anomaly" while the model alarms at the target rate.
    """
    return -tail_threshold(-np.asarray(decisions, dtype=np.float64), rate)
