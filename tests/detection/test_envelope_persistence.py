"""The robust kind's training envelope, persistence rule and calibrated severities: edge cases and contracts."""

from __future__ import annotations

import numpy as np
import pytest

from fleetscore.core import robust
from fleetscore.core.context import GATE, GATED, HEAVY_TAILED, LOOKBACK, ONE_SIDED, context_features
from fleetscore.core.kinds import get_kind, score_bundle, severity_bundle
from fleetscore.errors import ModelFormatError

RNG = np.random.default_rng(21)
RULES = {"side": ONE_SIDED, "gated": GATED, "capped": (True, False, False, False)}


def fit(x: np.ndarray) -> robust.RobustParams:
    return robust.fit_one(context_features(x, np.array([0])), heavy=HEAVY_TAILED, **RULES)


def brute_full(signed: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The persistence rule row by row: new extreme of the model's previous GATE rows, and not persisting."""
    out = np.ones(signed.shape, dtype=bool)
    for t in range(len(idx)):
        prev = [u for u in range(max(0, t - GATE), t) if idx[u] == idx[t] and all(idx[v] == idx[t] for v in range(u, t))]
        for j in range(signed.shape[1]):
            s, p = signed[t, j], signed[prev, j]
            new = s > p.max(initial=-np.inf) if s >= 0 else s < p.min(initial=np.inf)
            persists = len(prev) == GATE and (np.all(p > 1) if s >= 0 else np.all(p < -1))
            out[t, j] = new and not persists
    return out


def test_persistence_rule_matches_brute_force_across_models() -> None:
    signed = np.round(RNG.normal(scale=1.2, size=(300, 3)), 1)
    signed[100:120, 0] = 3.0 + RNG.normal(size=20)  # a persisting shift
    idx = np.repeat([0, 1, 2, 0], [90, 5, 105, 100])  # a model may come back after another (a new run)
    got = robust._counts_in_full(signed, idx, np.ones(len(idx)))
    np.testing.assert_array_equal(got, brute_full(signed, idx))


def test_persisting_shift_alarms_at_its_onset_not_all_along() -> None:
    x = 10 + RNG.normal(size=3000)
    params = fit(x[:1000])
    x[2000:] += 30  # a level shift that stays
    flags = robust.decision_function(params, np.zeros(3000, np.int64), context_features(x, np.array([0]))) < 0
    assert flags[2000:2003].any()
    assert flags[2000:].sum() < 20  # the onset, not 1,000 readings
    assert not flags[1000:2000].any()


def test_a_second_stuck_period_alarms_like_the_first() -> None:
    x = 5 + RNG.normal(size=4000)
    params = fit(x[:1440])
    x[2000:2030] = x[1999]
    x[3000:3030] = x[1999]  # the same value again
    flags = robust.decision_function(params, np.zeros(4000, np.int64), context_features(x, np.array([0]))) < 0
    assert flags[2003:2030].all() and flags[3003:3030].all()
    assert not flags[1500:1990].any() and not flags[3040:].any()


def test_scores_need_exactly_lookback_readings_of_history() -> None:
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=2000)) * 0.3 + rng.normal(size=2000)
    x[1500:] += 25  # a shift whose drift persists: the rule looks at the rows before, each with its own history
    params = fit(x[:1000])
    full = robust.decision_function(params, np.zeros(2000, np.int64), context_features(x, np.array([0])))

    def first_scored(start: int, history: int) -> float:
        part = x[start - history:]
        return robust.decision_function(params, np.zeros(len(part), np.int64), context_features(part, np.array([0])))[history]

    rows = range(1490, 1560)
    assert all(first_scored(t, LOOKBACK) == full[t] for t in rows)
    assert any(first_scored(t, LOOKBACK - 1) != full[t] for t in rows)  # one reading less is not enough


def test_training_envelope_recurring_bursts_are_normal_far_values_alarm() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=3000)
    x[np.arange(50, 1000, 120)] += 30  # bursts far beyond a Gaussian tail, again and again in training
    params = fit(x[:1000])
    assert 1 / params.weight[0, 0] > 25
    later = x.copy()
    later[1500] += 28  # a burst like the training's: normal here
    later[2500] += 90  # far beyond anything in training
    flags = robust.decision_function(params, np.zeros(3000, np.int64), context_features(later, np.array([0]))) < 0
    assert not flags[1000:2400].any() and flags[2500]
    # a Gaussian series with one anomaly in training keeps its extrapolated threshold
    y = rng.normal(size=1000)
    y[500] += 9
    assert robust.fit_one(context_features(y, np.array([0])), heavy=HEAVY_TAILED, **RULES).weight[0, 0] == \
        robust.fit_one(context_features(y, np.array([0])), heavy=HEAVY_TAILED).weight[0, 0]


def test_level_threshold_is_capped_near_the_training_range() -> None:
    rng = np.random.default_rng(2)
    x = np.where(rng.random(2000) < 0.8, 0.1, 90.0) + rng.random(2000) * 0.01  # a mostly idle CPU, bimodal
    params = fit(x[:1000])
    level_threshold = 1 / params.weight[0, 0]
    assert level_threshold <= robust.CAP * np.max(np.abs(x[:1000] - params.center[0, 0])) + 1e-9


def test_severity_is_in_range_monotone_and_50_at_the_threshold() -> None:
    x = 5 + RNG.normal(size=2000)
    params = fit(x)
    X = np.tile(params.center[0], (200, 1))  # every feature at its center but the level
    X[:, 0] = params.center[0, 0] + np.linspace(0, 20, 200) / params.weight[0, 0] / 4  # level, up to 5x its threshold
    idx = np.arange(200)  # one model per row: no persistence between rows
    params = robust.RobustParams.concat([params] * 200)
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
                                                context_features(constant, np.array([0]))], heavy=HEAVY_TAILED, **RULES)
    assert not failures and list(fitted) == [0, 1]
    # no two rows of one model in a row (the persistence rule compares a model's consecutive rows)
    X = np.array([[np.nan] * 4, [1e308, 1e308, np.nan, np.nan], [7.5, 0.5, 0.5, np.nan], [7.0, 0.0, 0.0, np.nan]])
    idx = np.array([1, 0, 1, 2])
    params = robust.RobustParams.concat([params, params.take([1])])
    sev = severity_bundle({"robust": params}, ["robust"] * 4, idx, X)
    dec = score_bundle({"robust": params}, ["robust"] * 4, idx, X)
    assert sev[0] == 0.0 and sev[3] == 0.0  # nothing known, or exactly the constant: nothing rare
    assert sev[2] > 99 and dec[2] < 0  # any change of a constant series is extremely rare
    assert 50 < sev[1] <= 100 and np.isfinite(dec[1])
    assert np.all(params.tail > 0)


def test_ocsvm_has_no_severity_and_old_robust_arrays_still_load() -> None:
    assert np.isnan(get_kind("ocsvm").severity(None, np.zeros(3, np.int64), np.zeros((3, 1)), None)).all()
    params = fit(RNG.normal(size=300))
    arrays = params.to_arrays()
    old = {k: v for k, v in arrays.items() if k not in ("tail", "rate", "side", "gate")} | {"format_version": np.array(2)}
    loaded = robust.RobustParams.from_arrays(old)
    assert np.all(loaded.tail == 2.0) and np.all(loaded.rate == 1e-4) and not loaded.gated and not loaded.side.any()
    v3 = {k: v for k, v in arrays.items() if k not in ("side", "gate")} | {"format_version": np.array(3)}
    assert not robust.RobustParams.from_arrays(v3).gated
    with pytest.raises(ModelFormatError):
        robust.RobustParams.from_arrays(arrays | {"rate": np.array([2.0])})
    with pytest.raises(ModelFormatError):
        robust.RobustParams.from_arrays(arrays | {"gate": np.full((1, 4), 0.5)})
