"""The pure statistics behind the fleet views (fleetscore.core.anomalies), checked against plain Python."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetscore.core import anomalies
from fleetscore.core.times import HOUR_US
from fleetscore.errors import InputError

row = st.tuples(st.sampled_from(["a", "b", "c/..", "<d>"]), st.sampled_from(["t", "v"]),
                st.integers(0, 6 * HOUR_US - 1), st.booleans())


def predictions(rows: list[tuple[str, str, int, bool]]) -> pa.Table:
    return pa.table({
        "ts": pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array([r[0] for r in rows], pa.string()),
        "sensor": pa.array([r[1] for r in rows], pa.string()),
        "is_anomaly": pa.array([r[3] for r in rows], pa.bool_()),
    })


@settings(max_examples=60, deadline=None)
@given(st.lists(row, max_size=60))
def test_hourly_counts_and_rollups_match_python(rows) -> None:  # type: ignore[no-untyped-def]
    cube = anomalies.hourly_counts(predictions(rows))
    assert cube.schema == anomalies.COUNT_SCHEMA
    got = {(d, s, h.timestamp() * 1e6 // HOUR_US): (n, a) for d, s, h, n, a in zip(*cube.to_pydict().values())}
    total, anomalous = Counter(), Counter()
    for d, s, ts, flag in rows:
        total[(d, s, ts // HOUR_US)] += 1
        anomalous[(d, s, ts // HOUR_US)] += flag
    assert got == {k: (total[k], anomalous[k]) for k in total}
    by_device = anomalies.rollup(cube, ["device"]).to_pylist()
    for item in by_device:
        n = sum(v for k, v in total.items() if k[0] == item["device"])
        a = sum(v for k, v in anomalous.items() if k[0] == item["device"])
        assert (item["rows"], item["anomalies"]) == (n, a) and item["rate"] == pytest.approx(a / n)
    grid = anomalies.hour_grid(cube, "device", sorted({r[0] for r in rows}), 0, 6 * HOUR_US)
    assert grid.rows.sum() == len(rows) and grid.anomalies.sum() == sum(r[3] for r in rows)
    whole = anomalies.hour_grid(cube, None, None, 0, 6 * HOUR_US)
    assert whole.labels == ["all"] and (whole.rows[0] == grid.rows.sum(axis=0)).all()


def test_grid_keeps_label_order_and_ignores_other_labels_and_hours() -> None:
    cube = anomalies.hourly_counts(predictions([("a", "t", 0, True), ("b", "t", HOUR_US, False), ("c", "t", 0, True),
                                                ("a", "t", 9 * HOUR_US, True)]))
    grid = anomalies.hour_grid(cube, "device", ["b", "a"], 0, 2 * HOUR_US)
    assert grid.labels == ["b", "a"] and list(grid.hours_us) == [0, HOUR_US]
    assert grid.rows.tolist() == [[0, 1], [1, 0]] and grid.anomalies.tolist() == [[0, 0], [1, 0]]
    assert np.isnan(grid.rates[0, 0]) and grid.rates[1, 0] == 1.0


def test_ranked_orders_with_ties_by_id_and_rejects_unknown_columns() -> None:
    cube = anomalies.hourly_counts(predictions([("b", "t", 0, True), ("a", "t", 0, True), ("c", "t", 0, False)]))
    rolled = anomalies.rollup(cube, ["device"])
    assert anomalies.ranked(rolled, "rate").column("device").to_pylist() == ["a", "b", "c"]
    assert anomalies.ranked(rolled, "rate", descending=False, limit=1).column("device").to_pylist() == ["c"]
    with pytest.raises(InputError):
        anomalies.ranked(rolled, "sensor")


def test_empty_predictions() -> None:
    cube = anomalies.hourly_counts(predictions([]))
    assert cube.num_rows == 0
    grid = anomalies.hour_grid(cube, "device", ["x"], 0, 3 * HOUR_US)
    assert grid.rows.shape == (1, 3) and np.isnan(grid.rates).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(8, 400), st.integers(0, 2**31))
def test_downsample_keeps_extremes_ends_and_every_anomaly(n: int, max_points: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.integers(1, 100, n)).astype(np.int64)
    values = rng.normal(size=n)
    values[rng.random(n) < 0.01] = np.nan
    marked = rng.random(n) < 0.02
    keep = anomalies.downsample(ts, marked, values, max_points)
    assert (np.diff(keep) > 0).all()
    if n <= max_points:
        assert len(keep) == n
        return
    kept = set(keep.tolist())
    assert set(np.flatnonzero(marked).tolist()) <= kept and {0, n - 1} <= kept
    finite = np.where(np.isfinite(values), values, 0.0)
    assert int(np.argmax(finite)) in kept and int(np.argmin(finite)) in kept
    assert len(keep) <= 4 * max(1, max_points // 4) + marked.sum()
