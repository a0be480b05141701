"""Incremental event-time tumbling windows per (device, sensor), with a watermark and allowed lateness.

The stream engine is a pure function of (state, batch): :func:`advance` takes the state of the open
windows and a batch of readings and returns the new state, the windows the batch closed and the
rows of the batch that came too late. Nothing is re-scanned: a batch costs its own aggregation
(:func:`~fleetscore.core.windows.tumbling_aggregate`, the same code batch features use) plus a
merge into the open windows, whose number is bounded by keys × windows in flight.

Rules, per batch, in this order:

1. ``watermark = max event time seen − allowed lateness`` (None before the first reading). A reading
   with ``ts < watermark`` is *late*: it is returned in ``late`` and does not count.
2. The other readings are aggregated per (device, sensor, epoch-aligned window) and merged into the
   open windows with Chan's pairwise formulas (count, mean, M2, min, max), so a window's result is
   the same as :func:`tumbling_aggregate` over all its readings, up to floating-point rounding.
3. The watermark moves to ``max event time − lateness``; every open window whose end is at or
   before it closes and is emitted (:data:`~fleetscore.core.windows.WINDOW_SCHEMA`). A closed
   window never changes again: all readings that could fall in it are now late.

Lateness is judged against the watermark at the start of a batch, so the readings of one batch
never make each other late. Readings must be validated (no nulls) and deduplicated by the caller.

Pure: no I/O, no clock, no global state; the input state is never modified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.windows import WINDOW_SCHEMA, tumbling_aggregate
from fleetscore.errors import InputError

#: Key ids are packed above the window index in one int64: 2**35 windows of 1 s reach year 3058.
_WIN_BITS = 35
_WIN_MASK = (1 << _WIN_BITS) - 1
_SEP = "\x1f"  # unit separator: validated ids never contain control characters

#: Persisted form of the open windows (:meth:`StreamState.to_arrow`): the window schema with M2 for std.
STATE_SCHEMA = pa.schema([pa.field("m2", pa.float64(), nullable=False) if f.name == "std" else f for f in WINDOW_SCHEMA])


def _empty_f8() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


@dataclass(frozen=True)
class StreamState:
    """Open windows of one width, the keys seen, and the maximum event time seen (µs).

    ``code`` (sorted, unique) packs ``key id << 35 | window index``; the statistic arrays are
    aligned with it. ``devices``/``sensors`` map key id → ids; ``joined`` is their lookup form.
    """

    width_s: int
    lateness_s: int
    max_ts_us: int | None = None
    devices: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    sensors: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    joined: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    code: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    count: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    mean: np.ndarray = field(default_factory=_empty_f8)
    m2: np.ndarray = field(default_factory=_empty_f8)
    vmin: np.ndarray = field(default_factory=_empty_f8)
    vmax: np.ndarray = field(default_factory=_empty_f8)

    @property
    def watermark_us(self) -> int | None:
        """Max event time seen minus the allowed lateness; readings before it are late."""
        return None if self.max_ts_us is None else self.max_ts_us - self.lateness_s * 1_000_000

    @property
    def open_windows(self) -> int:
        return len(self.code)

    def to_arrow(self) -> pa.Table:
        """The open windows as a table (:data:`STATE_SCHEMA`) with width, lateness and max ts in its metadata."""
        ids = self.code >> _WIN_BITS
        starts = (self.code & _WIN_MASK) * (self.width_s * 1_000_000)
        meta = {"width_s": self.width_s, "lateness_s": self.lateness_s, "max_ts_us": self.max_ts_us}
        return pa.Table.from_arrays(
            [
                self.devices.take(pa.array(ids)),
                self.sensors.take(pa.array(ids)),
                pa.array(starts, pa.int64()).cast(STATE_SCHEMA.field("window_start").type),
                pa.array(self.count, pa.int64()),
                pa.array(self.mean, pa.float64()),
                pa.array(self.m2, pa.float64()),
                pa.array(self.vmin, pa.float64()),
                pa.array(self.vmax, pa.float64()),
            ],
            schema=STATE_SCHEMA.with_metadata({b"fleetscore.stream": json.dumps(meta).encode()}),
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> StreamState:
        """Rebuild a state saved by :meth:`to_arrow` (key ids are renumbered; results are the same)."""
        try:
            meta = json.loads((table.schema.metadata or {})[b"fleetscore.stream"])
            width_s, lateness_s, max_ts = int(meta["width_s"]), int(meta["lateness_s"]), meta["max_ts_us"]
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"stream state lacks its metadata ({exc})") from exc
        state = new_state(width_s, lateness_s)
        state = replace(state, max_ts_us=None if max_ts is None else int(max_ts))
        if table.num_rows == 0:
            return state
        table = table.cast(STATE_SCHEMA.with_metadata(table.schema.metadata))
        state, ids = _key_ids(state, table.column("device").combine_chunks(), table.column("sensor").combine_chunks())
        win = table.column("window_start").combine_chunks().cast(pa.int64()).to_numpy() // (width_s * 1_000_000)
        code = (ids << _WIN_BITS) | win
        order = np.argsort(code, kind="stable")
        def col(name: str) -> np.ndarray:
            values: np.ndarray = table.column(name).to_numpy()[order]
            return values

        return replace(state, code=code[order], count=col("count"), mean=col("mean"), m2=col("m2"),
                       vmin=col("min"), vmax=col("max"))


@dataclass(frozen=True)
class StreamResult:
    """What one batch did: the new state, the windows it closed, and the late rows of the batch."""

    state: StreamState
    closed: pa.Table
    late: np.ndarray  # indices of late rows in the input batch

    @property
    def late_count(self) -> int:
        return len(self.late)


def new_state(width_s: int, lateness_s: int) -> StreamState:
    """An empty state for windows of ``width_s`` seconds and ``lateness_s`` seconds of allowed lateness."""
    for name, value, low in (("width_s", width_s, 1), ("lateness_s", lateness_s, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be a whole number of seconds ≥ {low}, got {value!r}")
    return StreamState(width_s=int(width_s), lateness_s=int(lateness_s))


def advance(state: StreamState, readings: pa.Table) -> StreamResult:
    """Feed one batch of validated readings (ts, device, sensor, value); see the module rules."""
    n = readings.num_rows
    if n == 0:
        return StreamResult(state, WINDOW_SCHEMA.empty_table(), np.empty(0, dtype=np.int64))
    ts_us = _ts_us(readings)
    if int(ts_us.min()) < 0:
        raise InputError("stream windows need timestamps at or after 1970-01-01")
    watermark = state.watermark_us
    late = np.flatnonzero(ts_us < watermark) if watermark is not None else np.empty(0, dtype=np.int64)
    if len(late):
        on_time = np.ones(n, dtype=bool)
        on_time[late] = False
        readings, ts_us = readings.filter(pa.array(on_time)), ts_us[on_time]
    if readings.num_rows == 0:
        return StreamResult(state, WINDOW_SCHEMA.empty_table(), late)

    agg = tumbling_aggregate(readings.select(["ts", "device", "sensor", "value"]), state.width_s)
    state, ids = _key_ids(state, agg.column("device").combine_chunks(), agg.column("sensor").combine_chunks())
    width_us = state.width_s * 1_000_000
    code = (ids << _WIN_BITS) | (agg.column("window_start").cast(pa.int64()).to_numpy() // width_us)
    count = agg.column("count").to_numpy()
    std = agg.column("std").to_numpy()
    state = _merge(state, code, count, agg.column("mean").to_numpy(), std * std * count,
                   agg.column("min").to_numpy(), agg.column("max").to_numpy())

    max_ts = int(ts_us.max()) if state.max_ts_us is None else max(state.max_ts_us, int(ts_us.max()))
    state = replace(state, max_ts_us=max_ts)
    state, closed = _close(state, state.watermark_us)
    return StreamResult(state, closed, late)


def flush(state: StreamState) -> tuple[StreamState, pa.Table]:
    """Close every open window now (e.g. at the end of a finite stream); returns them."""
    if state.open_windows == 0:
        return state, WINDOW_SCHEMA.empty_table()
    return _close(state, None)


# ---- helpers ---------------------------------------------------------------------------------


def _ts_us(readings: pa.Table) -> np.ndarray:
    col = readings.column("ts")
    if not pa.types.is_timestamp(col.type):
        raise InputError(f"readings: column ts must be a timestamp, got {col.type}")
    if col.type.unit != "us":
        col = pc.cast(col, pa.timestamp("us", tz=col.type.tz), safe=False)
    us: np.ndarray = col.cast(pa.int64()).to_numpy()
    return us


def _key_ids(state: StreamState, devices: pa.Array, sensors: pa.Array) -> tuple[StreamState, np.ndarray]:
    """Key id of each (device, sensor); keys not seen before get new ids (returned in the new state)."""
    joined = pc.binary_join_element_wise(devices.cast(pa.string()), sensors.cast(pa.string()), _SEP)
    found = pc.index_in(joined, value_set=state.joined)
    if found.null_count:
        missing = pc.is_null(found)
        fresh = pc.unique(joined.filter(missing))
        parts = pc.split_pattern(fresh, _SEP, max_splits=1)
        state = replace(
            state,
            joined=pa.concat_arrays([state.joined, fresh]),
            devices=pa.concat_arrays([state.devices, pc.list_element(parts, 0)]),
            sensors=pa.concat_arrays([state.sensors, pc.list_element(parts, 1)]),
        )
        found = pc.index_in(joined, value_set=state.joined)
    return state, found.to_numpy().astype(np.int64)


def _merge(state: StreamState, code: np.ndarray, count: np.ndarray, mean: np.ndarray, m2: np.ndarray,
           vmin: np.ndarray, vmax: np.ndarray) -> StreamState:
    """Merge batch partials (unique codes) into the open windows with Chan's pairwise update."""
    pos = np.searchsorted(state.code, code)
    hit = pos < len(state.code)
    hit[hit] = state.code[pos[hit]] == code[hit]
    s_count, s_mean, s_m2 = state.count.copy(), state.mean.copy(), state.m2.copy()
    s_min, s_max = state.vmin.copy(), state.vmax.copy()
    if hit.any():
        p = pos[hit]
        na, nb = s_count[p], count[hit]
        total = na + nb
        delta = mean[hit] - s_mean[p]
        s_mean[p] = s_mean[p] + delta * (nb / total)
        s_m2[p] = s_m2[p] + m2[hit] + delta * delta * (na * nb / total)
        s_count[p] = total
        s_min[p] = np.minimum(s_min[p], vmin[hit])
        s_max[p] = np.maximum(s_max[p], vmax[hit])
    new = ~hit
    if not new.any():
        return replace(state, count=s_count, mean=s_mean, m2=s_m2, vmin=s_min, vmax=s_max)
    all_code = np.concatenate([state.code, code[new]])
    order = np.argsort(all_code, kind="stable")
    def cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b[new]])[order]

    return replace(state, code=all_code[order], count=cat(s_count, count), mean=cat(s_mean, mean),
                   m2=cat(s_m2, m2), vmin=cat(s_min, vmin), vmax=cat(s_max, vmax))


def _close(state: StreamState, watermark: int | None) -> tuple[StreamState, pa.Table]:
    """Split off the windows that end at or before ``watermark`` (all when None)."""
    width_us = state.width_s * 1_000_000
    start = (state.code & _WIN_MASK) * width_us
    done = np.ones(len(start), dtype=bool) if watermark is None else start + width_us <= watermark
    if not done.any():
        return state, WINDOW_SCHEMA.empty_table()
    ids = pa.array(state.code[done] >> _WIN_BITS)
    count, m2 = state.count[done], state.m2[done]
    closed = pa.Table.from_arrays(
        [
            state.devices.take(ids),
            state.sensors.take(ids),
            pa.array(start[done], pa.int64()).cast(WINDOW_SCHEMA.field("window_start").type),
            pa.array(count, pa.int64()),
            pa.array(state.mean[done], pa.float64()),
            pa.array(np.sqrt(np.maximum(m2, 0.0) / count), pa.float64()),
            pa.array(state.vmin[done], pa.float64()),
            pa.array(state.vmax[done], pa.float64()),
        ],
        schema=WINDOW_SCHEMA,
    ).sort_by([("device", "ascending"), ("sensor", "ascending"), ("window_start", "ascending")])
    keep = ~done
    state = replace(state, code=state.code[keep], count=state.count[keep], mean=state.mean[keep],
                    m2=state.m2[keep], vmin=state.vmin[keep], vmax=state.vmax[keep])
    return state, closed
