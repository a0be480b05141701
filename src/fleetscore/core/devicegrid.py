"""Device-times: a device's readings put on one epoch-aligned grid, the rows the device model kind scores.

A device model (`fleetscore.core.device`) sees a device-time, a reading of each of its sensors, as
one point. Sensors rarely report at exactly the same microsecond, so readings are grouped by their
device's **tick**: the reading at ``ts`` belongs to device-time ``floor(ts / tick)`` (aligned to
the Unix epoch, like tumbling windows, so every run, backfill and window cuts the same device-times);
when a sensor has several readings in one tick the last one wins, and a sensor without a reading
in it is missing (NaN). Only ticks where some sensor of the device reported are device-times: a
device that is silent for a while has no rows for that time, so its history is counted in
device-times with readings.

The tick is learned at training (`device_tick_us`): the median of the sensors' sampling intervals
(`fleetscore.core.history.series_intervals`), snapped to the nearest (in ratio) of `TICKS_US`,
durations that divide an hour (or, above an hour, a day; below a second, a second), so an hourly
scoring window never cuts a device-time in two: its readings are scored together, and the same
way, in every run. Sensors much slower than the tick are missing from most device-times; sensors
much faster have all but their last reading of each tick left out of the device-time (each of
their readings still gets the device-time's score).

`score_readings` scores readings with device models: their device-times' features
(`fleetscore.core.device.device_features`, reading the device-times before them) and scores, and
every reading gets its device-time's decision, severity and top sensors. Pure numpy: arrays in,
arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetscore.core import device
from fleetscore.errors import InputError

_US = 1_000_000
#: Ticks a device's tick is snapped to: below a second 1-2-5 steps (they divide a second), then the
#: divisors of an hour, then the divisors of a day that are whole hours.
TICKS_US = np.array(
    [m * 10 ** e for e in range(6) for m in (1, 2, 5)]
    + [s * _US for s in range(1, 3601) if 3600 % s == 0]
    + [h * 3600 * _US for h in (2, 3, 4, 6, 8, 12, 24)],
    dtype=np.int64,
)


def snap_tick_us(seconds: float) -> int:
    """The tick of `TICKS_US` nearest (in ratio) to ``seconds``; a second when unknown (NaN or <= 0)."""
    if not np.isfinite(seconds) or seconds <= 0:
        return _US
    return int(TICKS_US[np.argmin(np.abs(np.log(TICKS_US / (seconds * _US))))])


def device_tick_us(intervals_s: np.ndarray) -> int:
    """A device's tick from its sensors' sampling intervals (seconds, NaN = unknown): their median, snapped."""
    intervals = np.asarray(intervals_s, dtype=np.float64)
    known = intervals[np.isfinite(intervals) & (intervals > 0)]
    return snap_tick_us(float(np.median(known)) if known.size else float("nan"))


@dataclass(frozen=True)
class Grid:
    """Device-times of several device models, and where each input reading went.

    ``values`` (T, P): one row per device-time, grouped by model (ascending), each model's rows in
    time order; column c is the model's sensor c (NaN: no reading in the tick; columns past a
    model's sensors stay NaN). ``starts``: the first row of each model's run (ascending, first 0);
    ``row_model``/``row_tick``: model and tick number of each row; ``reading_row[i]``: the row of
    input reading i (-1 for readings of no model).
    """

    values: np.ndarray
    starts: np.ndarray
    row_model: np.ndarray
    row_tick: np.ndarray
    reading_row: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])


def build_grid(ts_us: np.ndarray, values: np.ndarray, model: np.ndarray, column: np.ndarray,
               tick_us: np.ndarray, width: int) -> Grid:
    """The device-times of readings (``ts_us``, ``values``) of device models ``model`` (-1: none) and their
    sensor ``column`` (< ``width``), each model m on its own tick ``tick_us[m]`` (see the module docstring)."""
    ts = np.asarray(ts_us, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    model = np.asarray(model, dtype=np.int64)
    column = np.asarray(column, dtype=np.int64)
    ticks = np.asarray(tick_us, dtype=np.int64)
    n = ts.size
    if not (x.shape == model.shape == column.shape == (n,)):
        raise InputError("ts, values, model and column must have one entry per reading")
    mine = np.flatnonzero(model >= 0)
    if mine.size and (model[mine].max() >= ticks.size or np.any(ticks[model[mine]] <= 0)):
        raise InputError("every device model needs a positive tick")
    if mine.size and (column[mine].min() < 0 or column[mine].max() >= width):
        raise InputError(f"sensor columns must lie in [0, {width})")
    reading_row = np.full(n, -1, dtype=np.int64)
    if not mine.size:
        empty = np.zeros(0, dtype=np.int64)
        return Grid(np.zeros((0, width)), empty, empty, empty, reading_row)
    m, c, t = model[mine], column[mine], ts[mine]
    tick = np.floor_divide(t, ticks[m])
    order = np.lexsort((t, c, tick, m))  # by model, tick, sensor, time
    m, c, t, tick, rows = m[order], c[order], t[order], tick[order], mine[order]
    new_row = np.ones(rows.size, dtype=bool)
    new_row[1:] = (m[1:] != m[:-1]) | (tick[1:] != tick[:-1])
    row = np.cumsum(new_row) - 1
    n_rows = int(row[-1]) + 1
    last = np.ones(rows.size, dtype=bool)  # the last reading of each (device-time, sensor) wins
    last[:-1] = (row[1:] != row[:-1]) | (c[1:] != c[:-1])
    grid = np.full((n_rows, width), np.nan)
    grid[row[last], c[last]] = x[rows[last]]
    row_model, row_tick = m[new_row], tick[new_row]
    first = np.ones(n_rows, dtype=bool)
    first[1:] = row_model[1:] != row_model[:-1]
    reading_row[rows] = row
    return Grid(grid, np.flatnonzero(first), row_model, row_tick, reading_row)


@dataclass(frozen=True)
class ReadingScores:
    """Per input reading, its device-time's decision (< 0 anomaly), severity and top sensor columns (-1: none).

    Readings of no model, or before ``from_us``, get NaN and -1.
    """

    decision: np.ndarray  # (N,) float64
    severity: np.ndarray  # (N,) float64
    top_sensors: np.ndarray  # (N, TOP_SENSORS) int64: columns in the reading's device model


def score_readings(params: device.DeviceParams, ts_us: np.ndarray, values: np.ndarray, model: np.ndarray,
                   column: np.ndarray, from_us: int | None = None) -> ReadingScores:
    """Score readings of device models ``model`` (slots of ``params``; -1: none), sensor ``column`` each.

    Device-times are built from every reading given (those before ``from_us`` are history: they
    shape the features of later device-times and are not scored themselves); a device-time holding
    a reading at or after ``from_us`` is scored once, and its scores go to each of its readings.
    """
    ts = np.asarray(ts_us, dtype=np.int64)
    n = ts.size
    decision, severity = np.full(n, np.nan), np.full(n, np.nan)
    top = np.full((n, device.TOP_SENSORS), -1, dtype=np.int64)
    grid = build_grid(ts, values, model, column, np.asarray(params.tick_us), max(params.max_sensors, 1))
    wanted = grid.reading_row >= 0
    if from_us is not None:
        wanted &= ts >= from_us
    if not wanted.any():
        return ReadingScores(decision, severity, top)
    feats = device.device_features(grid.values, grid.starts)
    rows = np.unique(grid.reading_row[wanted])
    scores = device.score(params, grid.row_model[rows], feats[rows])
    at = np.searchsorted(rows, grid.reading_row[wanted])
    decision[wanted] = scores.decision[at]
    severity[wanted] = scores.severity[at]
    top[wanted] = scores.top_sensors[at]
    return ReadingScores(decision, severity, top)
