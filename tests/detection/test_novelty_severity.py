"""Novelty codes and calibrated severities of the robust kind: edge cases and their contracts."""

from __future__ import annotations

import numpy as np
import pytest

from fleetscore.core import robust
from fleetscore.core.context import HEAVY_TAILED, LOOKBACK, NOVELTY, context_features, novelty
from fleetscore.core.kinds import get_kind, score_bundle, severity_bundle
from fleetscore.errors import ModelFormatError

RNG = np.random.default_rng(21)


def with_novelty(x: np.ndarray) -> np.ndarray:
    X = context_features(x, np.array([0]))
    return np.hstack([X, novelty(X, np.array([0]))])


def brute_novelty(f: np.ndarray, starts: list[int]) -> np.ndarray:
    out = np.full(f.shape, np.nan)
    for t in range(len(f)):
        start = max(s for s in starts if s <= t)
        past = f[max(start, t - NOVELTY):t]
        past = past[~np.isnan(past)]
        if past.size and not np.isnan(f[t]):
            out[t] = 1.0 if f[t] > past.max() else -1.0 if f[t] < past.min() else 0.0
    return out


def test_novelty_matches_brute_force_across_series_and_nan_gaps() -> None:
    f = RNG.normal(size=(900, 2))
    f[[3, 4, 400], 0] = np.nan
    starts = [0, 250, 260]
    got = novelty(f, np.array(starts))
    for j in range(2):
        np.testing.assert_array_equal(np.nan_to_num(got[:, j], nan=9), np.nan_to_num(brute_novelty(f[:, j], starts), nan=9))
    assert LOOKBACK >= NOVELTY


def test_persisting_shift_alarms_at_its_onset_not_all_along() -> None:
    x = 10 + RNG.normal(size=3000)
    params = robust.fit_one(context_features(x[:1000], np.array([0])), heavy=HEAVY_TAILED)
    x[2000:] += 30  # a level shift that stays
    flags = robust.decision_function(params, np.zeros(3000, np.int64), with_novelty(x)) < 0
    assert flags[2000:2005].any()
    assert flags[2000:].sum() < 40  # the onset and a few new extremes, not 1,000 readings
    assert not flags[1000:2000].any()


def test_severity_is_in_range_monotone_and_50_at_the_threshold() -> None:
    x = 5 + RNG.normal(size=2000)
    params = robust.fit_one(context_features(x, np.array([0])), heavy=HEAVY_TAILED)
    X = np.tile(params.center[0], (200, 1))  # every feature at its center but the level
    X[:, 0] = params.center[0, 0] + np.linspace(0, 20, 200) / params.weight[0, 0] / 4  # level, up to 5x its threshold
    idx = np.zeros(200, np.int64)
    sev = robust.severity(params, idx, X)
    dec = robust.decision_function(params, idx, X)
    assert np.all((sev >= 0) & (sev <= 100)) and np.all(np.diff(sev) >= 0)
    assert sev[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all((sev > 50) == (dec < 0))
    at = params.center[:1].copy()
    at[0, 0] += 1 / params.weight[0, 0]
    assert robust.severity(params, np.zeros(1, np.int64), at)[0] == pytest.approx(50.0, abs=1e-6)


def test_severity_of_heavy_tails_constant_series_and_missing_features() -> None:
    heavy = RNG.pareto(1.5, size=3000)
    constant = np.full(500, 7.0)
    params, fitted, failures = robust.fit_many([context_features(heavy, np.array([0])),
                                                context_features(constant, np.array([0]))], heavy=HEAVY_TAILED)
    assert not failures and list(fitted) == [0, 1]
    X = np.array([[np.nan] * 4, [7.0, 0.0, 0.0, np.nan], [7.5, 0.5, 0.5, np.nan], [1e308, 1e308, np.nan, np.nan]])
    idx = np.array([1, 1, 1, 0])
    sev = severity_bundle({"robust": params}, ["robust"] * 4, idx, X)
    dec = score_bundle({"robust": params}, ["robust"] * 4, idx, X)
    assert sev[0] == 0.0 and sev[1] == 0.0  # nothing known, or exactly the constant: nothing rare
    assert sev[2] > 99 and dec[2] < 0  # any change of a constant series is extremely rare
    assert 50 < sev[3] <= 100 and np.isfinite(dec[3])
    assert np.all(params.tail > 0)


def test_ocsvm_has_no_severity_and_old_robust_arrays_still_load() -> None:
    assert np.isnan(get_kind("ocsvm").severity(None, np.zeros(3, np.int64), np.zeros((3, 1)), None)).all()
    params = robust.fit_one(context_features(RNG.normal(size=300), np.array([0])))
    arrays = params.to_arrays()
    old = {k: v for k, v in arrays.items() if k not in ("tail", "rate")} | {"format_version": np.array(2)}
    loaded = robust.RobustParams.from_arrays(old)
    assert np.all(loaded.tail == 2.0) and np.all(loaded.rate == 1e-4)
    with pytest.raises(ModelFormatError):
        robust.RobustParams.from_arrays(arrays | {"rate": np.array([2.0])})
