"""Tests of fleetscore.core.devicegrid: device-times on a learned tick, and readings scored with their device-time."""

from __future__ import annotations

import numpy as np

from fleetscore.core import device
from fleetscore.core.devicegrid import TICKS_US, build_grid, device_tick_us, score_readings, snap_tick_us

S = 1_000_000


def test_ticks_divide_an_hour_or_a_day_and_snap_to_the_nearest() -> None:
    assert all(3600 * S % t == 0 or (t % (3600 * S) == 0 and 86_400 * S % t == 0) for t in TICKS_US.tolist())
    assert snap_tick_us(60.0) == 60 * S and snap_tick_us(59.2) == 60 * S and snap_tick_us(61.5) == 60 * S
    assert snap_tick_us(7.3) == 8 * S and snap_tick_us(1.0) == S and snap_tick_us(0.1) == 100_000
    assert snap_tick_us(290.0) == 300 * S and snap_tick_us(3500.0) == 3600 * S and snap_tick_us(2e5) == 86_400 * S
    assert snap_tick_us(float("nan")) == S
    assert device_tick_us(np.array([60.0, 58.0, np.nan, 1.0])) == 60 * S


def test_grid_groups_a_tick_last_reading_wins_missing_is_nan() -> None:
    ts = np.array([0, 10, 70, 65, 5, 130, 0]) * S
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 9.0])
    model = np.array([0, 0, 0, 0, 0, 0, 1])
    column = np.array([0, 0, 0, 1, 1, 1, 0])
    grid = build_grid(ts, values, model, column, np.array([60 * S, 60 * S]), 2)
    # model 0: ticks 0 (s0: 1 then 2 -> 2; s1: 5), 1 (s0: 3; s1: 4), 2 (s1: 6); model 1: tick 0
    np.testing.assert_array_equal(grid.values, [[2.0, 5.0], [3.0, 4.0], [np.nan, 6.0], [9.0, np.nan]])
    assert grid.starts.tolist() == [0, 3] and grid.row_model.tolist() == [0, 0, 0, 1]
    assert grid.reading_row.tolist() == [0, 0, 1, 1, 0, 2, 3]


def test_readings_get_their_device_times_scores() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 3)) + rng.standard_normal((400, 1))
    x[350, 2] += 30
    params = device.fit_one(x[:300], tick_us=60 * S)
    t = np.arange(400) * 60 * S
    ts = np.concatenate([t + j * 7 * S for j in range(3)])  # misaligned within the minute
    got = score_readings(params, ts, x.T.ravel(), np.zeros(ts.size, dtype=np.int64), np.repeat(np.arange(3), 400),
                         from_us=300 * 60 * S)
    want = device.score(params, np.zeros(100, dtype=np.int64), device.device_features(x)[300:])
    for j in range(3):
        np.testing.assert_array_equal(got.decision[j * 400 + 300:(j + 1) * 400], want.decision)
        np.testing.assert_array_equal(got.severity[j * 400 + 300:(j + 1) * 400], want.severity)
        assert np.isnan(got.decision[j * 400:j * 400 + 300]).all()  # history: not scored
    assert got.top_sensors[2 * 400 + 350, 0] == 2 and got.decision[350] < 0
