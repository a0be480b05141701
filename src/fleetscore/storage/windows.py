"""Closed stream windows on storage: one Parquet part per (width, hour, compaction step).

A window closes exactly once (see :mod:`fleetscore.core.stream`), so parts never overlap; a
compaction step that is re-applied after a crash rewrites its own parts with the same content.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.times import HOUR_US
from fleetscore.core.windows import WINDOW_SCHEMA
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

DAY_US = 24 * HOUR_US
_ORDER = [("device", "ascending"), ("sensor", "ascending"), ("window_start", "ascending")]


class WindowStore:
    """Write the windows a compaction step closed; read the windows of a time range."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write(self, width_s: int, closed: pa.Table, part: int) -> int:
        """Write ``closed`` (:data:`WINDOW_SCHEMA`) split by hour of window start; returns files written."""
        if closed.num_rows == 0:
            return 0
        closed = closed.cast(WINDOW_SCHEMA)
        start = closed.column("window_start").cast(pa.int64()).to_numpy()
        hours = start - start % HOUR_US
        unique = np.unique(hours)
        for hour in unique:
            rows = closed.filter(pa.array(hours == hour)).sort_by(_ORDER)
            self.storage.write_parquet(layout.window_part_key(width_s, int(hour), part), rows)
        return len(unique)

    def read(self, width_s: int, from_us: int, to_us: int) -> pa.Table:
        """Windows of width ``width_s`` starting in [from, to), sorted by device, sensor, window_start."""
        parts = []
        base = layout.windows_dir(width_s)
        for day in self.storage.list_dirs(base):
            day_us = _day_us(day)
            if day_us is None or day_us + DAY_US <= from_us or day_us >= to_us:
                continue
            for key in self.storage.list(f"{base}/{day}"):
                hour = day_us + int(key.split("/hour=")[1][:2]) * HOUR_US
                if from_us - HOUR_US < hour < to_us:
                    parts.append(self.storage.read_parquet(key).cast(WINDOW_SCHEMA))
        if not parts:
            return WINDOW_SCHEMA.empty_table()
        table = pa.concat_tables(parts)
        start = table.column("window_start")
        lo = pa.scalar(from_us, pa.int64()).cast(start.type)
        hi = pa.scalar(to_us, pa.int64()).cast(start.type)
        return table.filter(pc.and_(pc.greater_equal(start, lo), pc.less(start, hi))).sort_by(_ORDER)


def _day_us(folder: str) -> int | None:
    """``date=YYYY-MM-DD`` → µs of that midnight (UTC); None for anything else."""
    try:
        day = datetime.strptime(folder.removeprefix("date="), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(day.timestamp()) * 1_000_000
