"""Helpers for the scale tests: a storage that records what is read, simulated readings, key sets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from fleetscore.core.schema import READING_SCHEMA
from fleetscore.core.simulate import simulate_fleet
from fleetscore.storage.fs import Storage

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H0 = int(T0.timestamp()) * 1_000_000


class RecordingStorage(Storage):
    """Local storage that records every Parquet part opened and the row groups read from it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.opened: list[str] = []
        self.row_groups: list[tuple[str, list[int]]] = []

    @contextmanager
    def open_parquet(self, key: str, read_dictionary: list[str] | None = None) -> Iterator[Any]:
        with super().open_parquet(key, read_dictionary) as pf:
            self.opened.append(key)
            yield _Recorded(pf, key, self.row_groups)

    def forget(self) -> None:
        self.opened.clear()
        self.row_groups.clear()


class _Recorded:
    def __init__(self, pf: Any, key: str, log: list[tuple[str, list[int]]]) -> None:
        self._pf, self._key, self._log = pf, key, log

    def read_row_groups(self, groups: list[int], **kwargs: Any) -> pa.Table:
        self._log.append((self._key, list(groups)))
        return self._pf.read_row_groups(groups, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pf, name)


def readings(devices: int, sensors: int = 2, hours: float = 2, seed: int = 1) -> pa.Table:
    return simulate_fleet(devices, sensors, T0, hours, 60.0, 0.0, seed).select(READING_SCHEMA.names)


def keys_of(table: pa.Table) -> set[tuple[str, str, int]]:
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    return set(zip(table.column("device").to_pylist(), table.column("sensor").to_pylist(), ts))
