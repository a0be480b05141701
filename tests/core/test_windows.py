"""Tests of tumbling-window aggregation and duration parsing, against a plain numpy reference."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.core.simulate import simulate_fleet
from fleetscore.core.times import parse_duration
from fleetscore.core.windows import WINDOW_FEATURES, WINDOW_SCHEMA, tumbling_aggregate, window_feature_matrix
from fleetscore.errors import InputError

TS = pa.timestamp("us", tz="UTC")
T0_US = int(datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000


def _readings(ts_us, device, sensor, value, ts_type: pa.DataType = TS) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array(np.asarray(ts_us, dtype=np.int64)).cast(ts_type),
            "device": pa.array(list(device), pa.string()),
            "sensor": pa.array(list(sensor), pa.string()),
            "value": pa.array(np.asarray(value, dtype=np.float64)),
        }
    )


def _random_readings(rng: np.random.Generator, n: int, offset: float = 0.0, scale: float = 1.0) -> pa.Table:
    devices = rng.choice(["dev-00002", "dev-00010", "dev-00001", "b", "B", "a"], n)
    sensors = rng.choice(["temperature", "rpm", "pressure"], n)
    ts = T0_US + rng.integers(-3_600_000_000, 3_600_000_000, n)  # two hours around T0
    return _readings(ts, devices, sensors, offset + scale * rng.standard_normal(n))


def _reference(table: pa.Table, width_s: int) -> list[tuple]:
    """Slow, obviously correct aggregation: Python grouping + numpy statistics."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    width_us = width_s * 1_000_000
    for ts, dev, sen, val in zip(
        table["ts"].cast(pa.int64()).to_pylist(),
        table["device"].to_pylist(),
        table["sensor"].to_pylist(),
        table["value"].to_pylist(),
    ):
        groups[(dev, sen, (ts // width_us) * width_us)].append(val)
    out = []
    for key in sorted(groups):
        v = np.array(groups[key])
        out.append((*key, len(v), v.mean(), v.std(), v.min(), v.max()))
    return out


def _check_against_reference(agg: pa.Table, ref: list[tuple], rtol: float) -> None:
    assert agg.num_rows == len(ref)
    assert agg["device"].to_pylist() == [r[0] for r in ref]
    assert agg["sensor"].to_pylist() == [r[1] for r in ref]
    assert agg["window_start"].cast(pa.int64()).to_pylist() == [r[2] for r in ref]
    assert agg["count"].to_pylist() == [r[3] for r in ref]
    for j, name in enumerate(("mean", "std", "min", "max")):
        expected = np.array([r[4 + j] for r in ref])
        if name == "std":  # a constant window has std exactly 0 (numpy may leave an ulp of the level)
            expected[[r[6] == r[7] for r in ref]] = 0.0
        np.testing.assert_allclose(agg[name].to_numpy(), expected, rtol=rtol, atol=0, err_msg=name)


# ---- parse_duration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30), ("1m", 60), ("5m", 300), ("1h", 3600), ("2h30m", 9000), ("1d", 86400),
        ("90", 90), ("1d2h3m4s", 93784), (" 15m ", 900), ("1H", 3600), ("7d", 604800), ("1s", 1),
    ],
)
def test_parse_duration_good(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["0", "0s", "0h0m", "-5", "-1m", "abc", "", "  ", "1.5h", "8d", "7d1s", "604801", "1m2h", "5 m",
     "m", "5x", "1e3", "١٢", "9" * 5000, None, 30],
)
def test_parse_duration_bad(text: object) -> None:
    with pytest.raises(InputError, match="bad duration"):
        parse_duration(text)  # type: ignore[arg-type]


# ---- tumbling_aggregate --------------------------------------------------------------------


@pytest.mark.parametrize("width_s", [1, 7, 60, 300, 3600])
def test_matches_numpy_reference(width_s: int) -> None:
    rng = np.random.default_rng(width_s)
    table = _random_readings(rng, 3000)
    agg = tumbling_aggregate(table, width_s)
    assert agg.schema.equals(WINDOW_SCHEMA)
    _check_against_reference(agg, _reference(table, width_s), rtol=1e-12)
    if width_s <= 60:  # narrow windows: plenty with a single reading, whose std is exactly 0
        ones = agg.filter(pa.compute.equal(agg["count"], 1))
        assert ones.num_rows > 10
        assert set(ones["std"].to_pylist()) == {0.0}
        assert ones["min"].equals(ones["max"]) and ones["mean"].equals(ones["min"])


def test_large_offset_is_numerically_stable() -> None:
    rng = np.random.default_rng(0)
    table = _random_readings(rng, 5000, offset=1e6, scale=1.0)
    _check_against_reference(tumbling_aggregate(table, 600), _reference(table, 600), rtol=1e-9)
    extreme = _random_readings(rng, 5000, offset=1e9, scale=1e-3)
    _check_against_reference(tumbling_aggregate(extreme, 600), _reference(extreme, 600), rtol=1e-6)


def test_windows_are_aligned_to_the_epoch() -> None:
    s = 1_000_000
    ts = [T0_US + 299 * s, T0_US + 300 * s, T0_US + 301 * s, -1 * s, -300 * s, -301 * s, 0]
    agg = tumbling_aggregate(_readings(ts, ["d"] * 7, ["x"] * 7, range(7)), 300)
    starts = agg["window_start"].cast(pa.int64()).to_pylist()
    assert starts == [-600 * s, -300 * s, 0, T0_US, T0_US + 300 * s]
    assert agg["count"].to_pylist() == [1, 2, 1, 1, 2]
    # a width that does not divide a minute still aligns to multiples since 1970-01-01
    agg7 = tumbling_aggregate(_readings([T0_US + 123_456_789], ["d"], ["x"], [1.0]), 7)
    (start,) = agg7["window_start"].cast(pa.int64()).to_pylist()
    assert start % (7 * s) == 0 and 0 <= T0_US + 123_456_789 - start < 7 * s


def test_output_sorted_and_independent_of_input_order() -> None:
    rng = np.random.default_rng(3)
    table = _random_readings(rng, 4000)
    agg = tumbling_aggregate(table, 60)
    keys = list(zip(agg["device"].to_pylist(), agg["sensor"].to_pylist(),
                    agg["window_start"].cast(pa.int64()).to_pylist()))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for order in (rng.permutation(table.num_rows), np.arange(table.num_rows)[::-1]):
        again = tumbling_aggregate(table.take(pa.array(order)), 60)
        for name in ("device", "sensor", "window_start", "count", "min", "max"):
            assert again[name].equals(agg[name])
        for name in ("mean", "std"):
            np.testing.assert_allclose(again[name].to_numpy(), agg[name].to_numpy(), rtol=1e-12)


def test_empty_input_gives_empty_output_with_schema() -> None:
    empty = _readings([], [], [], [])
    agg = tumbling_aggregate(empty, 60)
    assert agg.num_rows == 0 and agg.schema.equals(WINDOW_SCHEMA)
    assert window_feature_matrix(agg).shape == (0, 5)


def test_input_variants_chunked_dictionary_units_and_extra_columns() -> None:
    rng = np.random.default_rng(5)
    table = _random_readings(rng, 2000)
    base = tumbling_aggregate(table, 120)
    chunked = pa.concat_tables([table.slice(0, 700), table.slice(700, 600), table.slice(1300)])
    assert chunked["device"].num_chunks == 3
    assert tumbling_aggregate(chunked, 120).equals(base)
    dictionary = table.set_column(1, "device", table["device"].dictionary_encode())
    assert tumbling_aggregate(pa.concat_tables([dictionary.slice(0, 999), dictionary.slice(999)]), 120).equals(base)
    large = table.set_column(2, "sensor", table["sensor"].cast(pa.large_string()))
    assert tumbling_aggregate(large, 120).equals(base)
    extra = table.append_column("label", pa.array(np.zeros(table.num_rows, dtype=np.int8)))
    assert tumbling_aggregate(extra, 120).equals(base)
    us = table["ts"].cast(pa.int64()).to_numpy()
    for ts_type, factor in ((pa.timestamp("ns", tz="UTC"), 1000), (pa.timestamp("us"), 1),
                            (pa.timestamp("ms", tz="Europe/Paris"), None)):
        if factor is None:  # ms resolution: use whole milliseconds so nothing is lost
            us_ms = us - us % 1000
            t2 = table.set_column(0, "ts", pa.array(us_ms // 1000).cast(ts_type))
            ref = tumbling_aggregate(table.set_column(0, "ts", pa.array(us_ms).cast(TS)), 120)
        else:
            t2 = table.set_column(0, "ts", pa.array(us * factor).cast(ts_type))
            ref = base
        assert tumbling_aggregate(t2, 120).equals(ref)


def test_simulated_fleet_round_trip() -> None:
    sim = simulate_fleet(7, 3, datetime(2026, 1, 1, 0, 2, tzinfo=timezone.utc), 1.0, anomaly_rate=0.05)
    agg = tumbling_aggregate(sim, 300)
    assert sum(agg["count"].to_pylist()) == sim.num_rows
    # 60 readings from 00:02 → windows 00:00 (3 readings), 00:05 ... 00:55 (5 each), 01:00 (2)
    assert agg.num_rows == 7 * 3 * 13
    assert agg["count"].to_pylist()[:13] == [3] + [5] * 11 + [2]
    _check_against_reference(agg, _reference(sim, 300), rtol=1e-12)


def test_polars_agrees_when_installed() -> None:
    pl = pytest.importorskip("polars")
    rng = np.random.default_rng(11)
    table = _random_readings(rng, 3000, offset=50.0)
    agg = tumbling_aggregate(table, 300)
    w = 300 * 1_000_000
    df = (
        pl.from_arrow(table)
        .with_columns((pl.col("ts").dt.epoch("us") // w * w).alias("window_start"))
        .group_by(["device", "sensor", "window_start"])
        .agg(pl.len().alias("count"), pl.col("value").mean().alias("mean"),
             pl.col("value").std(ddof=0).alias("std"), pl.col("value").min().alias("min"),
             pl.col("value").max().alias("max"))
        .sort(["device", "sensor", "window_start"])
    )
    assert agg["device"].to_pylist() == df["device"].to_list()
    assert agg["window_start"].cast(pa.int64()).to_pylist() == df["window_start"].to_list()
    for name in WINDOW_FEATURES:
        np.testing.assert_allclose(agg[name].to_numpy(), df[name].to_numpy(), rtol=1e-10)


@pytest.mark.parametrize("width_s", [0, -60, 1.5, True, "60", 2**62])
def test_bad_width(width_s: object) -> None:
    table = _readings([T0_US], ["d"], ["x"], [1.0])
    with pytest.raises(InputError, match="width_s"):
        tumbling_aggregate(table, width_s)  # type: ignore[arg-type]


def test_bad_readings() -> None:
    good = _readings([T0_US], ["d"], ["x"], [1.0])
    with pytest.raises(InputError, match="missing column"):
        tumbling_aggregate(good.drop_columns(["value"]), 60)
    with pytest.raises(InputError, match="pyarrow Table"):
        tumbling_aggregate({"ts": []}, 60)  # type: ignore[arg-type]
    with_null = good.set_column(3, "value", pa.array([None], pa.float64()))
    with pytest.raises(InputError, match="value.*null"):
        tumbling_aggregate(with_null, 60)
    text_ts = good.set_column(0, "ts", pa.array(["2026-01-01T00:00:00Z"]))
    with pytest.raises(InputError, match="ts must be a timestamp"):
        tumbling_aggregate(text_ts, 60)
    int_device = good.set_column(1, "device", pa.array([1]))
    with pytest.raises(InputError, match="device must be text"):
        tumbling_aggregate(int_device, 60)
    text_value = good.set_column(3, "value", pa.array(["1.0"]))
    with pytest.raises(InputError, match="value must be numeric"):
        tumbling_aggregate(text_value, 60)


# ---- window_feature_matrix -----------------------------------------------------------------


def test_window_feature_matrix() -> None:
    assert WINDOW_FEATURES == ("count", "mean", "std", "min", "max")
    table = _random_readings(np.random.default_rng(2), 500)
    agg = tumbling_aggregate(table, 600)
    x = window_feature_matrix(agg)
    assert x.shape == (agg.num_rows, 5) and x.dtype == np.float64
    for j, name in enumerate(WINDOW_FEATURES):
        np.testing.assert_array_equal(x[:, j], agg[name].to_numpy().astype(np.float64))
    with pytest.raises(InputError, match="std"):
        window_feature_matrix(agg.drop_columns(["std"]))
