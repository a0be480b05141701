"""Readings covered by marked incident spans: what operator feedback feeds into training and evaluation.

An operator's mark on an incident names a device, its first and last flag and the sensors involved.
`sensor_spans` turns such spans into one (device, sensor, from, to) row per sensor; `covered` says
which rows of a (ts, device, sensor) table lie inside one of them (bounds inclusive). Columnar: one
hash join of the table with the (few) span rows and one filter, never a loop over readings. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: An incident's span as the incident store gives it: (device, start_us, last_us, sensors).
Span = tuple[str, int, int, tuple[str, ...]]
#: One sensor's span: (device, sensor, from_us, to_us), both ends included.
SensorSpan = tuple[str, str, int, int]


def sensor_spans(spans: Iterable[Span]) -> list[SensorSpan]:
    """One span per (incident, sensor involved)."""
    return [(device, sensor, int(start), int(last)) for device, start, last, sensors in spans for sensor in sensors]


def overlapping(spans: Iterable[SensorSpan], from_us: int, to_us: int) -> list[SensorSpan]:
    """The spans that reach into [from, to)."""
    return [s for s in spans if s[3] >= from_us and s[2] < to_us]


def covered(table: pa.Table, spans: Sequence[SensorSpan]) -> np.ndarray:
    """Per row of ``table`` (ts, device, sensor): whether some span of its (device, sensor) holds its ts."""
    mask = np.zeros(table.num_rows, dtype=bool)
    if not spans or table.num_rows == 0:
        return mask
    devices, sensors, lo, hi = zip(*spans)
    right = pa.table({"device": pa.array(devices, pa.string()), "sensor": pa.array(sensors, pa.string()),
                      "_lo": pa.array(lo, pa.int64()), "_hi": pa.array(hi, pa.int64())})
    left = pa.table({"device": pc.cast(table.column("device"), pa.string()),
                     "sensor": pc.cast(table.column("sensor"), pa.string()),
                     "_ts": pc.cast(pc.cast(table.column("ts"), pa.timestamp("us", tz="UTC")), pa.int64()),
                     "_row": pa.array(np.arange(table.num_rows, dtype=np.int64))})
    joined = left.join(right, keys=["device", "sensor"], join_type="inner")
    inside = pc.and_(pc.greater_equal(joined.column("_ts"), joined.column("_lo")),
                     pc.less_equal(joined.column("_ts"), joined.column("_hi")))
    mask[joined.filter(inside).column("_row").to_numpy()] = True
    return mask
