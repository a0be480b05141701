"""Model kinds: array round-trips, scoring equal to the reference math, calibration, edge cases."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fleetscore.core import ocsvm, robust
from fleetscore.core.calibrate import decision_offset, tail_threshold
from fleetscore.core.context import CONTEXT_FEATURES, HEAVY_TAILED, SHORT_HISTORY, context_features
from fleetscore.core.fitting import FitSettings, fit_shard
from fleetscore.core.kinds import (
    bundle_from_arrays,
    bundle_to_arrays,
    get_kind,
    score_and_severity_bundle,
    score_bundle,
    severity_bundle,
)
from fleetscore.errors import InputError, ModelFormatError

RNG = np.random.default_rng(8)


def series(n: int, level: float = 50.0, sigma: float = 1.0) -> np.ndarray:
    return level + sigma * RNG.normal(size=n)


def features(x: np.ndarray) -> np.ndarray:
    return context_features(x, np.array([0]))


def reference_robust(params: robust.RobustParams, m: int, row: np.ndarray) -> float:
    """decision = intercept - max_j weight_j |x_j - center_j| over the finite features."""
    worst = 0.0
    for j, v in enumerate(row):
        if np.isfinite(v):
            worst = max(worst, params.weight[m, j] * abs(v - params.center[m, j]))
    return params.intercept[m] - worst


def test_robust_scores_equal_reference_math() -> None:
    groups = [features(series(300, lvl, s)) for lvl, s in ((10, 0.1), (1e4, 30), (-5, 2))]
    params, fitted, failures = robust.fit_many(groups)
    assert not failures and list(fitted) == [0, 1, 2]
    X = np.vstack([g[-40:] for g in groups])
    idx = np.repeat(np.arange(3), 40)
    got = robust.decision_function(params, idx, X)
    want = [reference_robust(params, m, row) for m, row in zip(idx, X)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bundle_roundtrip_through_npz_without_pickle() -> None:
    fit = fit_shard([features(series(200)), features(series(5)), series(400).reshape(-1, 4)],
                    FitSettings(kind="robust", alarm_rate=1e-3, min_history=60))
    buf = io.BytesIO()
    np.savez(buf, **bundle_to_arrays(fit.bundle))
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as npz:
        loaded = bundle_from_arrays({k: npz[k] for k in npz.files})
    assert sorted(loaded) == ["robust"]
    assert fit.fallback.tolist() == [False, True, False]
    X = features(series(100))
    for slot in range(loaded["robust"].n_models):
        idx = np.full(len(X), slot)
        np.testing.assert_array_equal(score_bundle(loaded, ["robust"] * len(X), idx, X),
                                      robust.decision_function(fit.bundle["robust"], idx, X))


def test_mixed_bundle_scores_each_kind_with_its_own_models() -> None:
    X = np.column_stack([series(120), series(120, 3.0)])
    oc = ocsvm.fit_one(X, 0.1, 0.5)
    rb = robust.fit_one(X)
    bundle = {"ocsvm": oc, "robust": rb}
    kinds = ["ocsvm", "robust"] * 60
    slots = np.zeros(120, dtype=np.int64)
    got = score_bundle(bundle, kinds, slots, X)
    np.testing.assert_array_equal(got[0::2], ocsvm.decision_function(oc, slots[0::2], X[0::2]))
    np.testing.assert_array_equal(got[1::2], robust.decision_function(rb, slots[1::2], X[1::2]))
    # scoring writes both from one pass per kind: the same decisions, and each kind's own severities
    decision, severity = score_and_severity_bundle(bundle, kinds, slots, X)
    np.testing.assert_array_equal(decision, got)
    np.testing.assert_array_equal(severity, severity_bundle(bundle, kinds, slots, X))
    assert np.isnan(severity[0::2]).all() and np.isfinite(severity[1::2]).all()  # ocsvm has no calibrated tail


def test_format_1_shards_still_load_as_ocsvm() -> None:
    oc = ocsvm.fit_one(series(50).reshape(-1, 1))
    assert list(bundle_from_arrays(oc.to_arrays())) == ["ocsvm"]


@pytest.mark.parametrize("tamper,needle", [
    (lambda a: a.update(kinds=np.array(["forest"])), "unknown kind"),
    (lambda a: a.update(format_version=np.array(9)), "format_version"),
    (lambda a: a.update({"robust.weight": -a["robust.weight"] - 1}), "must be >= 0"),
    (lambda a: a.pop("robust.center"), "missing"),
])
def test_bad_bundles_are_rejected(tamper, needle) -> None:  # type: ignore[no-untyped-def]
    arrays = bundle_to_arrays({"robust": robust.fit_one(features(series(100)))})
    tamper(arrays)
    with pytest.raises(ModelFormatError, match=needle):
        bundle_from_arrays(arrays)


def test_unknown_kind_is_an_input_error() -> None:
    with pytest.raises(InputError, match="available: ocsvm, robust"):
        get_kind("forest")


@pytest.mark.parametrize("rate", [0.01, 0.001])
def test_calibration_reaches_target_alarm_rate_on_clean_data(rate: float) -> None:
    train = [features(series(2000, 100 * k, 1 + k)) for k in range(20)]
    params, _, _ = robust.fit_many(train, rate)
    test = [features(series(20000, 100 * k, 1 + k)) for k in range(20)]
    X = np.vstack(test)
    idx = np.repeat(np.arange(20), 20000)
    alarm = np.mean(robust.decision_function(params, idx, X) < 0)
    assert rate / 4 <= alarm <= rate * 2


def test_ocsvm_calibration_folds_threshold_into_intercept() -> None:
    X = series(3000).reshape(-1, 1)
    settings = FitSettings(kind="ocsvm", nu=0.05, gamma="median", alarm_rate=0.02, min_history=10)
    fit = fit_shard([X], settings)
    plain = ocsvm.fit_one(X, 0.05, fit.bundle["ocsvm"].gamma[0])
    shift = plain.intercept[0] - fit.bundle["ocsvm"].intercept[0]
    offset = decision_offset(ocsvm.decision_function(plain, np.zeros(len(X), np.int64), X), 0.02)
    assert shift == pytest.approx(offset)
    fresh = series(20000).reshape(-1, 1)
    alarm = np.mean(ocsvm.decision_function(fit.bundle["ocsvm"], np.zeros(len(fresh), np.int64), fresh) < 0)
    assert 0.005 <= alarm <= 0.04


def test_tail_threshold_is_robust_to_a_few_anomalies() -> None:
    clean = np.abs(RNG.normal(size=5000))
    dirty = np.concatenate([clean, np.full(50, 40.0)])  # 1% huge anomalies
    assert tail_threshold(dirty, 1e-4) < 10 < 40
    assert tail_threshold(dirty, 1e-4) == pytest.approx(tail_threshold(clean, 1e-4), rel=0.3)


def test_tail_threshold_stays_tight_with_3_percent_moderate_anomalies() -> None:
    """A day with a few noise bursts (3% of readings, 3..10 sigmas) must not loosen the threshold 5-fold."""
    u = np.abs(RNG.normal(size=1440))
    u[:43] = RNG.uniform(3, 10, size=43)
    assert tail_threshold(u, 2.5e-5) < 10


def test_constant_series_flags_any_change() -> None:
    X = features(np.full(200, 7.0))
    params = robust.fit_one(X)
    probe = features(np.r_[np.full(40, 7.0), 7.5])
    scores = robust.decision_function(params, np.zeros(41, np.int64), probe)
    assert (scores[:-1] >= 0).all() and scores[-1] < 0


def test_stuck_sensor_is_flagged_and_noise_is_not() -> None:
    x = series(1500, 20.0, 0.5)
    params = robust.fit_one(features(x[:1440]))
    probe = np.r_[x[1440:], np.full(6, x[-1])]
    scores = robust.decision_function(params, np.zeros(len(probe), np.int64), features(np.r_[x[:1440], probe])[1440:])
    assert (scores[:-6] >= 0).all() and (scores[-3:] < 0).all()


def test_nan_gaps_single_reading_and_huge_values() -> None:
    x = series(300)
    X = features(x)
    X[::7, 1] = np.nan  # features missing here and there
    params = robust.fit_one(X)
    probe = X[:10].copy()
    probe[:, 1:] = np.nan  # only the level known
    assert np.isfinite(robust.decision_function(params, np.zeros(10, np.int64), probe)).all()
    huge = np.array([[1e308, 1e308, -1e308, 1e300]])
    score = robust.decision_function(params, np.zeros(1, np.int64), huge)
    assert np.isfinite(score).all() and score[0] < -1e10
    with pytest.raises(InputError, match="needs at least"):
        robust.fit_one(features(np.array([3.0])))
    fit = fit_shard([features(np.array([3.0])), X], FitSettings(kind="robust", min_history=60))
    assert fit.kinds == [None, "robust"] and "row(s)" in fit.reasons[0]


def test_context_features_never_cross_series() -> None:
    a, b = series(40, 0.0), series(40, 1e6)
    both = context_features(np.r_[a, b], np.array([0, 40]))
    np.testing.assert_array_equal(both[40:], context_features(b, np.array([0])))
    assert np.isnan(both[40, 1:]).all() and both.shape == (80, len(CONTEXT_FEATURES))


def test_fallback_fitted_on_45_readings_does_not_over_alarm() -> None:
    """A model fitted on 45 readings alarms on fresh data within a small factor of its target rate."""
    rate, models = 1e-3, 100
    train = [features(series(45, 100 * k, 1 + k % 3)) for k in range(models)]
    params, fitted, _ = robust.fit_many(train, rate, HEAVY_TAILED, SHORT_HISTORY)
    assert len(fitted) == models
    X = np.vstack([features(series(3000, 100 * k, 1 + k % 3)) for k in range(models)])
    alarm = np.mean(robust.decision_function(params, np.repeat(np.arange(models), 3000), X) < 0)
    assert alarm <= 3 * rate
