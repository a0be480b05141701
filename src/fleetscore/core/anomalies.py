"""Anomaly statistics over predictions: hourly counts per (device, sensor), roll-ups, heatmap grids.

What the dashboard and its JSON API show about the fleet is computed here, columnar (Arrow group-by
and numpy scatter, never a Python loop over rows), from a predictions table. The unit of storage is
the *hourly count cube* — one row per (device, sensor, hour) with ``rows`` and ``anomalies`` — which
every view (device × hour heatmap, most anomalous devices or sensors, anomalies per hour) rolls up.

Also here: :func:`downsample`, which thins a time series for plotting while keeping its extremes and
every anomaly, so a week of second-level readings still draws as a few thousand points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.schema import TS_TYPE
from fleetscore.core.times import HOUR_US
from fleetscore.errors import InputError

COUNT_SCHEMA = pa.schema(
    [
        pa.field("device", pa.string()),
        pa.field("sensor", pa.string()),
        pa.field("hour", TS_TYPE),
        pa.field("rows", pa.int64()),
        pa.field("anomalies", pa.int64()),
    ]
)
#: Columns a roll-up can be sorted by.
SORT_COLUMNS = ("rate", "anomalies", "rows", "device", "sensor")


def hourly_counts(predictions: pa.Table) -> pa.Table:
    """Predictions (ts, device, sensor, is_anomaly) → one row per (device, sensor, hour) in COUNT_SCHEMA."""
    if predictions.num_rows == 0:
        return COUNT_SCHEMA.empty_table()
    # integer division is several times cheaper than floor_temporal; readings are never before 1970
    us = predictions.column("ts").cast(pa.int64())
    hour = pc.multiply(pc.divide(us, HOUR_US), HOUR_US)
    table = pa.table(
        {
            "device": predictions.column("device"),
            "sensor": predictions.column("sensor"),
            "hour": hour,
            "is_anomaly": pc.cast(pc.fill_null(predictions.column("is_anomaly"), False), pa.int64()),
        }
    )
    grouped = table.group_by(["device", "sensor", "hour"]).aggregate(
        [("is_anomaly", "count"), ("is_anomaly", "sum")]
    )
    out = pa.table(
        {
            "device": grouped.column("device"),
            "sensor": grouped.column("sensor"),
            "hour": grouped.column("hour").cast(TS_TYPE),
            "rows": grouped.column("is_anomaly_count"),
            "anomalies": grouped.column("is_anomaly_sum"),
        }
    ).cast(COUNT_SCHEMA)
    return out.sort_by([("device", "ascending"), ("sensor", "ascending"), ("hour", "ascending")])


def rollup(counts: pa.Table, keys: list[str]) -> pa.Table:
    """Sum ``rows`` and ``anomalies`` of the count cube by ``keys``; adds ``rate`` = anomalies / rows."""
    grouped = counts.group_by(keys).aggregate([("rows", "sum"), ("anomalies", "sum")])
    rows = grouped.column("rows_sum")
    anomalies = grouped.column("anomalies_sum")
    columns = {key: grouped.column(key) for key in keys}
    columns.update(rows=rows, anomalies=anomalies, rate=_rate(anomalies, rows))
    return pa.table(columns)


def _rate(anomalies: pa.ChunkedArray | pa.Array, rows: pa.ChunkedArray | pa.Array) -> pa.Array:
    a = np.asarray(anomalies, dtype=np.float64)
    r = np.asarray(rows, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pa.array(np.where(r > 0, a / np.maximum(r, 1.0), 0.0), pa.float64())


def ranked(rolled: pa.Table, sort: str = "rate", descending: bool = True, limit: int | None = None) -> pa.Table:
    """Rows of a roll-up ordered by ``sort`` (ties broken by the id columns, ascending), at most ``limit``."""
    if sort not in rolled.column_names:
        raise InputError(f"cannot sort by {sort!r}; columns are {', '.join(rolled.column_names)}")
    ids = [c for c in ("device", "sensor", "hour") if c in rolled.column_names and c != sort]
    order = [(sort, "descending" if descending else "ascending")] + [(c, "ascending") for c in ids]
    out = rolled.sort_by(order)
    return out if limit is None else out.slice(0, limit)


@dataclass(frozen=True)
class Grid:
    """A labels × hours grid: ``rows`` and ``anomalies`` per cell (0 where there are no predictions)."""

    labels: list[str]
    hours_us: np.ndarray
    rows: np.ndarray
    anomalies: np.ndarray

    @property
    def rates(self) -> np.ndarray:
        """Anomaly rate per cell; NaN where the cell has no predictions."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.rows > 0, self.anomalies / np.maximum(self.rows, 1), np.nan)


def hour_grid(counts: pa.Table, key: str | None, labels: list[str] | None, from_us: int, to_us: int) -> Grid:
    """Counts of the cube per ``labels`` (values of column ``key``, in that order) × every hour in [from, to).

    With ``key=None`` the grid has one row, ``all``: the whole cube per hour.
    """
    labels = ["all"] if key is None else list(labels or [])
    first = from_us - from_us % HOUR_US
    hours_us = np.arange(first, to_us, HOUR_US, dtype=np.int64)
    shape = (len(labels), len(hours_us))
    if not (counts.num_rows and labels and len(hours_us)):
        empty = np.zeros(shape, dtype=np.int64)
        return Grid(labels, hours_us, empty, empty.copy())
    if key is None:
        row_idx = np.zeros(counts.num_rows, dtype=np.int64)
    else:
        found = pc.index_in(counts.column(key), value_set=pa.array(labels, pa.string()))
        row_idx = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    hour_idx = (counts.column("hour").cast(pa.int64()).to_numpy() - first) // HOUR_US
    keep = (row_idx >= 0) & (hour_idx >= 0) & (hour_idx < len(hours_us))
    flat = row_idx[keep] * len(hours_us) + hour_idx[keep]
    size = shape[0] * shape[1]

    def cells(column: str) -> np.ndarray:
        weights = counts.column(column).to_numpy()[keep]
        return np.bincount(flat, weights=weights, minlength=size).astype(np.int64).reshape(shape)

    return Grid(labels, hours_us, cells("rows"), cells("anomalies"))


def downsample(ts_us: np.ndarray, marked: np.ndarray, values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices (sorted) of at most about ``max_points`` points that keep the series' shape.

    The time axis is cut into ``max_points // 4`` buckets; each keeps its first, last, lowest and
    highest point. Every ``marked`` point (an anomaly) is kept as well, so none disappears from a plot.
    ``ts_us`` must be sorted ascending.
    """
    n = len(ts_us)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    buckets = max(1, max_points // 4)
    span = max(int(ts_us[-1] - ts_us[0]), 1)
    bucket = np.minimum((ts_us - ts_us[0]) * buckets // span, buckets - 1)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], n] - 1
    clean = np.where(np.isfinite(values), values, 0.0)
    lows = starts + _argreduce(clean, starts, np.minimum)
    highs = starts + _argreduce(clean, starts, np.maximum)
    keep = np.concatenate([starts, ends, lows, highs, np.flatnonzero(marked)])
    return np.unique(keep)


def _argreduce(values: np.ndarray, starts: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """Offset (from its bucket's start) of the first min/max of each bucket of ``values``."""
    extreme = ufunc.reduceat(values, starts)
    bucket_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(values)]))
    hit = values == extreme[bucket_of]
    hit_idx = np.flatnonzero(hit)
    first_hit = hit_idx[np.r_[True, bucket_of[hit_idx][1:] != bucket_of[hit_idx][:-1]]]
    offsets: np.ndarray = first_hit - starts
    return offsets
