"""Closed stream windows on storage: one Parquet part per (width, hour, compaction step).

A window closes exactly once (see :mod:`fleetscore.core.stream`), so parts never overlap; a
compaction step that is re-applied after a crash rewrites its own parts with the same content.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.times import HOUR_US
from fleetscore.core.windows import WINDOW_SCHEMA
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

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
        for hour in range(from_us - from_us % HOUR_US, to_us, HOUR_US):
            for key in self.storage.list(layout.windows_hour_dir(width_s, hour)):
                parts.append(self.storage.read_parquet(key).cast(WINDOW_SCHEMA))
        if not parts:
            return WINDOW_SCHEMA.empty_table()
        table = pa.concat_tables(parts)
        start = table.column("window_start")
        lo = pa.scalar(from_us, pa.int64()).cast(start.type)
        hi = pa.scalar(to_us, pa.int64()).cast(start.type)
        return table.filter(pc.and_(pc.greater_equal(start, lo), pc.less(start, hi))).sort_by(_ORDER)
