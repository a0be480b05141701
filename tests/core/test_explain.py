"""Explanations of flagged readings (core.explain): the feature that fired and its band in the reading's units."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.core import explain, ocsvm, robust
from fleetscore.core.context import CONTEXT_FEATURES, context_features
from fleetscore.core.features import parse_features


def _kinds(names: list[str]) -> pa.DictionaryArray:
    return pa.array(names, pa.string()).dictionary_encode()


def _context_model(values: np.ndarray) -> robust.RobustParams:
    spec = parse_features("context")
    X = context_features(values, np.array([0]))
    return robust.fit_one(X, heavy=spec.heavy_tailed, side=spec.one_sided, gated=spec.gated, capped=spec.capped)


def test_a_reading_far_above_the_training_range_is_a_level_flag_with_the_training_centre() -> None:
    rng = np.random.default_rng(1)
    params = robust.fit_one(rng.normal(50.0, 2.0, (600, 1)), capped=[True])
    X = np.array([[50.5], [49.0], [90.0]])
    assert (robust.decision_function(params, np.zeros(3, dtype=np.int64), X) < 0).tolist() == [False, False, True]
    why = explain.explain_bundle({"robust": params}, _kinds(["robust"] * 3), np.zeros(3, dtype=np.int64), X,
                                 np.array([90.0]), None, np.array([2]), "raw")
    assert why.reason == ["level"]
    assert why.expected[0] == pytest.approx(50.0, abs=0.5)  # the training median
    assert why.lower[0] < 50.0 < why.upper[0] < 90.0  # the reading left the band above
    # the band is exactly where the decision turns: just inside it scores normal, just outside it flags
    inside, outside = np.array([[why.upper[0] - 1e-6]]), np.array([[why.upper[0] + 1e-6]])
    assert robust.decision_function(params, np.zeros(1, dtype=np.int64), inside)[0] >= 0
    assert robust.decision_function(params, np.zeros(1, dtype=np.int64), outside)[0] < 0


def test_a_daily_profile_moves_the_expected_value_with_the_time_of_day() -> None:
    rng = np.random.default_rng(2)
    phase = np.arange(24 * 60 * 3) / (24 * 60) % 1.0
    values = 20.0 + 8.0 * np.sin(2 * np.pi * phase) + rng.normal(0, 0.3, phase.size)
    params = robust.fit_one(values[:, None], phase=phase, seasonal=[True], capped=[True])
    at = np.array([0.25, 0.75])  # the daily peak and trough
    X = np.array([[20.0], [20.0]])  # the daily mean: far from either
    assert (robust.decision_function(params, np.zeros(2, dtype=np.int64), X, at) < 0).all()
    why = explain.explain_bundle({"robust": params}, _kinds(["robust"] * 2), np.zeros(2, dtype=np.int64), X,
                                 X[:, 0], at, np.arange(2), "raw")
    assert why.reason == ["level" + explain.PROFILED] * 2
    assert why.expected == pytest.approx([28.0, 12.0], abs=0.5)
    assert why.upper[1] < 20.0 < why.lower[0]


def test_a_jump_that_keeps_the_level_is_a_residual_flag_banded_around_the_recent_readings() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    values = 100.0 + 30.0 * np.sin(np.arange(n) / 150.0) + rng.normal(0, 0.5, n)  # wide level, quiet noise
    params = _context_model(values[:2000])
    t = 2600
    values[t] += 8.0  # well inside the level's range, 16 noise sigmas off the recent readings
    X = context_features(values, np.array([0]))
    scores = robust.decision_function(params, np.zeros(n, dtype=np.int64), X)
    assert scores[t] < 0
    previous = values[t - explain.HISTORY:t][None]
    why = explain.explain_bundle({"robust": params}, _kinds(["robust"] * n), np.zeros(n, dtype=np.int64), X,
                                 values[[t]], None, np.array([t]), "context", previous)
    assert why.reason == ["residual"]
    recent = np.median(values[t - 10:t])
    assert why.expected[0] == pytest.approx(recent, abs=1.0)
    assert why.lower[0] < recent < why.upper[0] < values[t]
    level = robust.feature_bounds(params, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    assert level[1][0] < values[t] < level[2][0]  # the level alone would not have flagged it


@pytest.mark.parametrize("feature", [1, 2])
def test_history_bands_are_exact_preimages_of_the_context_feature(feature: int) -> None:
    rng = np.random.default_rng(4)
    values = 10 + rng.normal(0, 1, 4000) + 3 * np.sin(np.arange(4000) / 40)
    values[::53] += 6.0
    X = context_features(values, np.array([0, 2000]))
    rows = np.r_[np.arange(2030, 2200, 3), np.arange(40, 400, 3)]
    previous = np.stack([values[r - explain.HISTORY:r] for r in rows])
    anchors = explain._anchors(previous)
    at_value = explain.context_feature_at(anchors, values[rows][:, None], feature)[:, 0]
    np.testing.assert_allclose(at_value, X[rows, feature])  # the same feature context_features computes
    lo, hi, centre = X[rows, feature] - 0.4, X[rows, feature] + 0.4, X[rows, feature] - 0.1
    expected, lower, upper = explain.history_band(previous, values[rows], feature, lo, hi, centre)
    for edge, target in ((lower, lo), (upper, hi), (expected, centre)):
        finite = np.isfinite(edge)
        assert finite.mean() > 0.3
        got = explain.context_feature_at(anchors, np.where(finite, edge, 0.0)[:, None], feature)[:, 0]
        np.testing.assert_allclose(got[finite], target[finite], atol=1e-9)
    assert (lower[np.isfinite(lower)] <= values[rows][np.isfinite(lower)]).all()


def test_an_unbounded_side_is_reported_as_none() -> None:
    previous = np.full((1, explain.HISTORY), 5.0)
    expected, lower, upper = explain.history_band(previous, np.array([9.0]), 1, np.array([-1.0]), np.array([np.inf]),
                                                  np.array([0.0]))
    assert lower[0] == pytest.approx(4.0) and upper[0] == np.inf and expected[0] == pytest.approx(5.0)


def test_ocsvm_names_the_feature_farthest_from_its_training_mean_and_has_no_band() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(0, 1, (300, 4))
    params = ocsvm.fit_one(X)
    rows = np.array([[0.1, 9.0, 0.0, 0.0], [0.0, 0.0, 0.0, -7.0], [np.nan, 0.0, 5.0, 0.0]])
    why = explain.explain_bundle({"ocsvm": params}, _kinds(["ocsvm"] * 3), np.zeros(3, dtype=np.int64), rows,
                                 rows[:, 0], None, np.arange(3), "context")
    assert why.reason == ["residual", "stuck", "drift"]
    assert np.isnan(why.expected).all() and np.isnan(why.lower).all() and np.isnan(why.upper).all()


def test_window_features_and_a_stuck_sensor_have_a_reason_but_no_band() -> None:
    rng = np.random.default_rng(6)
    spec = parse_features("window:10m")
    X = rng.normal(10, 1, (400, spec.n_features))
    X[:, 0] = 10  # count
    params = robust.fit_one(X)
    row = np.array([[10, 10, 9.0, 10, 10]])  # the std far out
    why = explain.explain_robust(params, (np.ones(1, dtype=bool), np.zeros(1, dtype=np.int64)), row,
                                 np.array([10.0]), None, np.array([0]), "window")
    assert why.reason == ["window std"] and np.isnan(why.upper).all()
    stuck = _context_model(10 + rng.normal(0, 1, 2000))
    values = 10 + rng.normal(0, 1, 2100)
    values[2050:2060] = values[2049]
    Xc = context_features(values, np.array([0]))
    flagged = np.flatnonzero(robust.decision_function(stuck, np.zeros(2100, dtype=np.int64), Xc) < 0)
    assert flagged.size and (flagged >= 2050).any()
    rows = flagged[flagged >= 2052][:1]
    previous = np.stack([values[r - explain.HISTORY:r] for r in rows])
    why = explain.explain_robust(stuck, (np.ones(2100, dtype=bool), np.zeros(2100, dtype=np.int64)), Xc,
                                 values[rows], None, rows, "context", previous)
    assert why.reason == ["stuck"] and np.isnan(why.lower).all() and np.isnan(why.expected).all()


def test_device_reason_names_the_top_sensors() -> None:
    assert explain.device_reason(["pressure", "flow"]) == "device model: pressure, flow"
    assert explain.device_reason([]) == "device model"
    assert explain.feature_labels("context")[: len(CONTEXT_FEATURES)] == ("level", "residual", "drift", "stuck")
