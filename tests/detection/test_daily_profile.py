"""Daily profiles of robust models: a strong daily cycle is learnt, not flagged, and does not hide drifts."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fleetscore.core import robust
from fleetscore.core.context import HEAVY_TAILED, SEASONAL, context_features
from fleetscore.core.kinds import bundle_from_arrays, bundle_to_arrays, score_bundle
from fleetscore.errors import InputError

RNG = np.random.default_rng(21)
DAY = 1440  # one-minute readings


def cycle_series(minutes: int, amplitude: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Values (noise sigma 1, a daily cycle of ``amplitude`` rising steepest at 02:00) and times of day."""
    phase = (np.arange(minutes) % DAY) / DAY
    return 100.0 + amplitude * np.sin(2 * np.pi * (phase - 120 / DAY)) + RNG.normal(size=minutes), phase


def fit(x: np.ndarray, phase: np.ndarray) -> robust.RobustParams:
    return robust.fit_one(context_features(x, np.array([0])), heavy=HEAVY_TAILED, phase=phase, seasonal=SEASONAL)


def score(params: robust.RobustParams, x: np.ndarray, phase: np.ndarray, history: int) -> np.ndarray:
    """Decisions of the readings after the first ``history`` (which only give the features their past)."""
    X = context_features(x, np.array([0]))[history:]
    return robust.decision_function(params, np.zeros(len(X), np.int64), X, phase[history:])


def test_strong_cycle_alone_is_not_flagged_and_a_drift_is() -> None:
    x, phase = cycle_series(DAY + 6 * 60)
    params = fit(x[:DAY], phase[:DAY])
    assert params.seasonal
    clean = score(params, x, phase, DAY)
    assert np.mean(clean < 0) < 2e-3

    drifted = x.copy()
    ramp = slice(DAY + 120, DAY + 180)  # falling 6 sigmas in an hour while the cycle rises steepest
    drifted[ramp] -= np.linspace(0.1, 6.0, 60)
    flagged = score(params, drifted, phase, DAY) < 0
    assert flagged[120:180].any()
    assert not flagged[:120].any()


def test_without_a_day_of_history_the_center_stays_constant() -> None:
    x, phase = cycle_series(12 * 60)
    params = fit(x, phase)
    assert not params.seasonal
    np.testing.assert_array_equal(params.profile, 0.0)


def test_profile_round_trips_through_npz_and_scores_alike() -> None:
    x, phase = cycle_series(DAY + 120)
    params = robust.RobustParams.concat([fit(x[:DAY], phase[:DAY]), fit(x[:300], phase[:300])])
    buf = io.BytesIO()
    np.savez(buf, **bundle_to_arrays({"robust": params}))
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as npz:
        loaded = bundle_from_arrays({k: npz[k] for k in npz.files})["robust"]
    np.testing.assert_array_equal(loaded.profile, params.profile)
    X = context_features(x, np.array([0]))[DAY:]
    idx = np.tile([0, 1], len(X))[: len(X)]
    np.testing.assert_array_equal(score_bundle({"robust": loaded}, ["robust"] * len(X), idx, X, phase[DAY:]),
                                  robust.decision_function(params, idx, X, phase[DAY:]))


def test_format_1_arrays_load_with_a_constant_center() -> None:
    x, phase = cycle_series(300)
    params = fit(x, phase)
    old = {k: v for k, v in params.to_arrays().items() if k != "profile"} | {"format_version": np.array(1)}
    loaded = robust.RobustParams.from_arrays(old)
    assert not loaded.seasonal
    X = context_features(x, np.array([0]))
    np.testing.assert_array_equal(robust.decision_function(loaded, np.zeros(len(X), np.int64), X),
                                  robust.decision_function(params, np.zeros(len(X), np.int64), X))


def test_models_with_a_profile_need_the_time_of_day() -> None:
    x, phase = cycle_series(DAY)
    params = fit(x, phase)
    X = context_features(x, np.array([0]))[-5:]
    with pytest.raises(InputError, match="phase"):
        robust.decision_function(params, np.zeros(5, np.int64), X)


def test_a_day_of_ten_minute_readings_gets_a_level_profile() -> None:
    phase = (np.arange(144) * 10 % DAY) / DAY
    x = 100.0 + 20.0 * np.sin(2 * np.pi * phase) + RNG.normal(size=144)
    params = fit(x, phase)
    assert np.abs(params.profile[0, 0, 3] - 20.0) < 1.0  # the sine of the first harmonic
