"""Landed readings: hourly Parquet partitions, deduplicated by (device, sensor, ts), written atomically.

Each hour is one file sorted by (device, sensor, ts) with small row groups, so a task that scores
one shard (a device range) reads only the row groups of its devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.schema import READING_SCHEMA
from fleetscore.core.times import HOUR_US
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

SORT_KEYS = [("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]


@dataclass(frozen=True)
class LandResult:
    accepted: int
    duplicates: int
    hours: int


def dedup_sorted(table: pa.Table) -> pa.Table:
    """Sort by (device, sensor, ts) keeping the first row of each key (earlier rows win)."""
    if table.num_rows == 0:
        return table
    order = pa.array(np.arange(table.num_rows, dtype=np.int64))
    idx = pc.sort_indices(table.append_column("_ord", order), sort_keys=SORT_KEYS + [("_ord", "ascending")])
    table = table.take(idx)
    if table.num_rows < 2:
        return table
    same = np.ones(table.num_rows - 1, dtype=bool)
    for name in ("device", "sensor", "ts"):
        col = table.column(name)
        same &= pc.equal(col.slice(1), col.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    keep = np.concatenate([[True], ~same])
    return table if keep.all() else table.filter(pa.array(keep))


class ReadingStore:
    """Land validated readings and read them back by time window and device range."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def land(self, readings: pa.Table) -> LandResult:
        """Merge canonical readings into their hour files; a key already stored is a duplicate."""
        readings = readings.select(READING_SCHEMA.names).cast(READING_SCHEMA)
        if readings.num_rows == 0:
            return LandResult(0, 0, 0)
        us = readings.column("ts").cast(pa.int64()).to_numpy()
        hours = us - us % HOUR_US
        duplicates = 0
        unique_hours = np.unique(hours)
        with self.storage.lock("readings"):
            for hour in unique_hours:
                batch = readings.filter(pa.array(hours == hour))
                key = layout.hour_key(int(hour))
                existing = self._read_hour(key)
                merged = dedup_sorted(pa.concat_tables([existing, batch]) if existing is not None else batch)
                before = existing.num_rows if existing is not None else 0
                added = merged.num_rows - before
                duplicates += batch.num_rows - added
                if added:
                    self.storage.write_parquet(key, merged)
        return LandResult(readings.num_rows - duplicates, duplicates, len(unique_hours))

    def _read_hour(self, key: str) -> pa.Table | None:
        try:
            return self.storage.read_parquet(key).cast(READING_SCHEMA)
        except FileNotFoundError:
            return None

    def hour_keys(self, from_us: int, to_us: int) -> list[str]:
        """Keys of the existing hour files that overlap [from, to)."""
        first = from_us - from_us % HOUR_US
        keys = [layout.hour_key(h) for h in range(first, to_us, HOUR_US)]
        if len(keys) > 24 * 366 * 5:
            from fleetscore.errors import InputError

            raise InputError("window longer than 5 years")
        existing = set(self.storage.list("readings"))
        return [k for k in keys if k in existing]

    def read_window(
        self,
        from_us: int,
        to_us: int,
        devices: tuple[str | None, str | None] = (None, None),
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Readings with from ≤ ts < to, optionally only devices in [lo, hi] (inclusive; None = open)."""
        parts = [self.read_hour(k, from_us, to_us, devices, columns) for k in self.hour_keys(from_us, to_us)]
        if not parts:
            schema = READING_SCHEMA if columns is None else pa.schema([READING_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(parts)

    def read_hour(
        self,
        key: str,
        from_us: int,
        to_us: int,
        devices: tuple[str | None, str | None] = (None, None),
        columns: list[str] | None = None,
    ) -> pa.Table:
        lo = pa.scalar(from_us, pa.int64()).cast(READING_SCHEMA.field("ts").type)
        hi = pa.scalar(to_us, pa.int64()).cast(READING_SCHEMA.field("ts").type)
        filters = [("ts", ">=", lo), ("ts", "<", hi)]
        if devices[0] is not None:
            filters.append(("device", ">=", devices[0]))
        if devices[1] is not None:
            filters.append(("device", "<=", devices[1]))
        try:
            table = self.storage.read_parquet(key, columns=columns, filters=filters)
        except FileNotFoundError:
            schema = READING_SCHEMA if columns is None else pa.schema([READING_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return table
