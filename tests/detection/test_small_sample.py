"""Thresholds fitted on few values (below `MIN_TAIL_ROWS`) keep near the target alarm rate on average."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from fleetscore.core import robust
from fleetscore.core.calibrate import deviation_threshold, robust_spread, spread_bound
from fleetscore.core.context import GATED, HEAVY_TAILED, ONE_SIDED, SHORT_HISTORY, context_features

RATE = 5e-5
DRAWS = 600


def _mean_exceedance(n: int, shape: str, seed: int) -> float:
    """Mean over many training samples of n values of the true P(|x - center| > threshold), over RATE."""
    rng = np.random.default_rng(seed)
    normal = NormalDist()
    total = 0.0
    for _ in range(DRAWS):
        x = rng.laplace(size=n) if shape == "laplace" else rng.normal(size=n)
        center = float(np.median(x))
        spread = robust_spread(x, center)
        t = deviation_threshold(np.abs(x - center) / spread, RATE, heavy=shape == "laplace") * spread
        if shape == "laplace":
            total += 0.5 * math.exp(-(t - center)) + 0.5 * math.exp(-(t + center))
        else:
            total += 1.0 - normal.cdf(t - center) + normal.cdf(-t - center)
    return total / DRAWS / RATE


@pytest.mark.parametrize("shape", ["normal", "laplace"])
@pytest.mark.parametrize("n", [20, 45, 90])
def test_a_short_history_alarms_near_its_target_rate(n: int, shape: str) -> None:
    ratio = _mean_exceedance(n, shape, seed=n)
    assert 0.05 < ratio < 2.0  # the MAD widened by 1 + 2/sqrt(n) gave 1.5-10 (normal), 7-14 (laplace)


def test_the_spread_bound_shrinks_to_one_with_many_values() -> None:
    bounds = [spread_bound(n, 0.63) for n in (10, 100, 1_000, 100_000)]
    assert bounds == sorted(bounds, reverse=True)
    assert bounds[0] > 1.5 and 1.0 < bounds[-1] < 1.01


def test_fallbacks_on_45_minutes_of_noise_alarm_near_their_rate() -> None:
    """The context features of a short history (a residual whose centre the drift's baseline compresses, the
    flat feature's overlapping windows) through fallback models: a few flags in 72,000 scored readings."""
    rng = np.random.default_rng(7)
    flags = 0
    for _ in range(200):
        x = rng.normal(size=45 + 360)
        X = context_features(x, np.array([0]))
        params = robust.fit_one(X[:45], 1e-4, HEAVY_TAILED, SHORT_HISTORY, side=ONE_SIDED, gated=GATED)
        flags += int(np.count_nonzero(robust.decision_function(params, np.zeros(len(x), np.int64), X)[45:] < 0))
    assert flags <= 20  # 7 at the target rate of 1e-4; the MAD widened by 1 + 2/sqrt(n) gave 95
