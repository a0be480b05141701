"""Tests of fleetscore.core.history: learned sampling intervals and how far back scoring reads."""

from __future__ import annotations

import numpy as np
import pytest

from fleetscore.core import device
from fleetscore.core.context import LOOKBACK
from fleetscore.core.history import (
    MAX_LOOKBACK_S,
    SLACK,
    HistoryNeeds,
    first_lookback_s,
    history_needs,
    readings_needed,
    series_intervals,
    short_units,
    widened,
)

S = 1_000_000


def test_intervals_are_robust_to_gaps_and_give_irregular_series_their_mean_rate() -> None:
    rng = np.random.default_rng(0)
    regular = np.arange(100) * 60 * S
    gappy = np.concatenate([regular, regular[-1] + 86_400 * S + regular])  # a day-long gap in the middle
    irregular = np.cumsum(rng.exponential(120.0, 5000) * S).astype(np.int64)
    one, empty = np.array([7 * S]), np.zeros(0, dtype=np.int64)
    ts = np.concatenate([regular, gappy, irregular, one, empty])
    bounds = np.cumsum([0, regular.size, gappy.size, irregular.size, 1, 0])
    got = series_intervals(ts, bounds)
    assert got[0] == 60.0 and got[1] == 60.0
    assert got[2] == pytest.approx(120.0, rel=0.05)
    assert np.isnan(got[3]) and np.isnan(got[4])


def test_repeated_timestamps_do_not_count_as_intervals() -> None:
    ts = np.repeat(np.arange(10) * 5 * S, 2)
    assert series_intervals(ts, np.array([0, ts.size]))[0] == 5.0


def test_first_read_covers_every_model_at_its_rate_unknown_ones_at_the_fixed_look_back() -> None:
    need = np.array([LOOKBACK, LOOKBACK, 0])
    assert first_lookback_s(need, np.array([60.0, 300.0, 3600.0]), 1800, MAX_LOOKBACK_S) == \
        pytest.approx(LOOKBACK * 300 * SLACK + 300)
    assert first_lookback_s(need, np.array([1.0, np.nan, 1.0]), 1800, MAX_LOOKBACK_S) == 1800
    assert first_lookback_s(np.array([0, 0]), np.array([60.0, 60.0]), 1800, MAX_LOOKBACK_S) == 0.0  # raw
    assert first_lookback_s(need, np.array([86_400.0, 1.0, 1.0]), 1800, MAX_LOOKBACK_S) == MAX_LOOKBACK_S


def test_what_features_need() -> None:
    assert readings_needed("context", "robust") == LOOKBACK == readings_needed("context", "ocsvm")
    assert readings_needed("raw", "robust") == 0 and readings_needed("window", "robust") == 0
    assert readings_needed("context", "device") == device.HISTORY == readings_needed("raw", "device")


def test_device_models_share_one_unit_counted_in_device_times() -> None:
    kinds = ["device", "device", "robust", "device", None]
    needs = history_needs(kinds, np.array([0, 0, 0, 1, -1]), np.array([60.0, 60.0, np.nan, 1.0, np.nan]),
                          "context", np.array([60 * S, S]))
    assert needs.unit.tolist() == [0, 0, 2, 3, 4]
    assert needs.need.tolist() == [device.HISTORY, 0, LOOKBACK, device.HISTORY, 0]
    assert needs.step_us.tolist() == [60 * S, 0, 0, S, 0]
    assert needs.known.tolist() == [True, True, False, True, False]  # unknown: the robust row, and no model


def test_short_units_counts_history_before_the_window_of_models_scored_in_it() -> None:
    needs = HistoryNeeds(unit=np.array([0, 0, 2]), need=np.array([3, 0, 2]), step_us=np.array([60 * S, 0, 0]),
                         known=np.array([True, True, True]))
    start = 1000 * 60 * S
    # unit 0, a device model of two sensors (runs 0 and 1): device-times -3, -2 (both sensors) and -1 min: 3
    s0 = start + np.array([-3, -2, 0]) * 60 * S
    s1 = start + np.array([-2, -1]) * 60 * S + 5 * S
    # unit 2: one reading before the window, needs 2; read in two parts (two runs)
    old, new = start + np.array([-5]) * 60 * S, start + np.array([1]) * 60 * S
    ts = np.concatenate([s0, s1, old, new])
    bounds = np.cumsum([0, 3, 2, 1, 1])
    assert short_units(needs, np.array([0, 0, 2, 2]), bounds, ts, start).tolist() == [2]
    # a unit without readings in the window needs nothing; -1 runs belong to no model
    assert short_units(needs, np.array([2, -1]), np.array([0, 1, 2]), np.array([start - 1, start + 1]), start).tolist() == []
    # two sensors' readings in one tick count once: the device has 2 device-times, needs 3
    ts = start + np.array([-60 * S, 0, -59 * S])
    assert short_units(needs, np.array([0, 0]), np.array([0, 2, 3]), ts, start).tolist() == [0]


def test_widening_doubles_with_a_floor_and_stops_at_the_maximum() -> None:
    assert widened(10.0, MAX_LOOKBACK_S) == 3610.0
    assert widened(10_000.0, MAX_LOOKBACK_S) == 20_000.0
    assert widened(500_000.0, MAX_LOOKBACK_S) == MAX_LOOKBACK_S


def test_the_maximum_is_the_features_own_width() -> None:
    from fleetscore.core.history import max_lookback_s

    assert max_lookback_s("context", MAX_LOOKBACK_S, False) == MAX_LOOKBACK_S
    assert max_lookback_s("context", 1800, True) == 1800  # context:30m caps device models' history too
    assert max_lookback_s("window", 300, False) == 300
    assert max_lookback_s("raw", 0, False) == 0 and max_lookback_s("raw", 0, True) == MAX_LOOKBACK_S
