"""Read committed predictions: by run, or by time range across the windows it overlaps."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.times import iso
from fleetscore.errors import NotFoundError
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage
from fleetscore.storage.readings import dedup_sorted


class PredictionStore:
    """Committed predictions, as one Arrow table per query."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _pointer(self, from_us: int, to_us: int) -> dict | None:
        try:
            return json.loads(self.storage.read_bytes(layout.commit_key(from_us, to_us)))
        except FileNotFoundError:
            return None

    def _read_files(self, files: list[str], columns: list[str] | None = None, filters: Any = None) -> list[pa.Table]:
        return [self.storage.read_parquet(f, columns=columns, filters=filters) for f in files]

    def for_run(self, run_id: str, from_us: int, to_us: int) -> pa.Table:
        pointer = self._pointer(from_us, to_us)
        if pointer is None or pointer["run_id"] != run_id:
            current = f"; the window's predictions are now run {pointer['run_id']}" if pointer else ""
            raise NotFoundError(f"run {run_id} has no committed predictions for {iso(from_us)}..{iso(to_us)}{current}")
        return _concat(self._read_files(pointer["files"]))

    def for_range(self, from_us: int, to_us: int, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
        """Predictions with from ≤ ts < to from every committed window; later commits win on overlap.

        ``columns`` (ts, device and sensor are always read) and Parquet ``filters`` narrow what is read.
        """
        if columns is not None:
            columns = list(dict.fromkeys(["ts", "device", "sensor", *columns]))
        found: list[tuple[str, pa.Table]] = []
        for name in self.storage.list_dirs("predictions"):
            bounds = layout.window_bounds(name)
            if bounds is None or bounds[1] <= from_us or bounds[0] >= to_us:
                continue
            pointer = self._pointer(*bounds)
            if pointer is None:
                continue
            for part in self._read_files(pointer["files"], columns, filters):
                found.append((pointer["committed_at"], part))
        found.sort(key=lambda p: p[0], reverse=True)
        table = _concat([t for _, t in found])
        if table.num_rows == 0:
            return table
        ts = table.column("ts")
        lo = pa.scalar(from_us, pa.int64()).cast(ts.type)
        hi = pa.scalar(to_us, pa.int64()).cast(ts.type)
        table = table.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
        return dedup_sorted(table)


def _concat(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({"ts": pa.array([], pa.timestamp("us", tz="UTC")), "device": pa.array([], pa.string()),
                         "sensor": pa.array([], pa.string()), "value": pa.array([], pa.float64()),
                         "score": pa.array([], pa.float64()), "is_anomaly": pa.array([], pa.bool_()),
                         "model_version": pa.array([], pa.string()), "run_id": pa.array([], pa.string())})
    return pa.concat_tables(parts, promote_options="default")
