"""Landed readings: hourly partitions of device-hash buckets, deduplicated by (device, sensor, ts).

    readings/date=YYYY-MM-DD/hour=HH/bucket=NNN/part-….parquet   (and keys-part-….arrow: its rows per key)

Each bucket-hour holds a few immutable parts, each sorted by (device, sensor, ts) with small row
groups. Landing a batch writes one new part per bucket-hour it touches, deduplicated against only
the keys already stored in that bucket-hour's overlapping parts and device range, and merges
small parts (:mod:`fleetscore.storage.parts`): memory and work follow the batch, not the hour, so
readings can arrive in any number of chunks. Shards are cut in the same (bucket, device, sensor)
key order (:mod:`fleetscore.core.keys`), so a scoring or training task reads only the buckets and
row groups of its own keys (:meth:`ReadingStore.read_range`), never the whole window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.keys import BUCKETS, Key, bucket_of, device_bucket, key_bucket
from fleetscore.core.plan import key_range_mask
from fleetscore.core.schema import READING_SCHEMA
from fleetscore.core.times import HOUR_US
from fleetscore.storage import layout
from fleetscore.storage.bucketparts import KEY_COLUMNS, SORT_KEYS, BucketParts, Scan, hours_between, ids_as_text
from fleetscore.storage.fs import Storage


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
    """Land validated readings and read them back by time window, device range or shard key range."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._parts = BucketParts(storage)

    def land(self, readings: pa.Table) -> LandResult:
        """Store canonical readings; a key already stored, or repeated in the batch, is a duplicate.

        Each (hour, bucket) of the batch becomes one new part after deduplication against the keys
        stored there, so landing in chunks costs each chunk's size, not the hour's.
        """
        readings = readings.select(READING_SCHEMA.names).cast(READING_SCHEMA)
        if readings.num_rows == 0:
            return LandResult(0, 0, 0)
        unique = dedup_sorted(readings)
        added = 0
        with self.storage.lock("readings"):
            for hour, bucket, rows in _bucket_hours(unique):
                added += self._parts.add(hour, bucket, rows)
        hours = np.unique(_floor_hours(readings.column("ts")))
        return LandResult(added, readings.num_rows - added, len(hours))

    def stored_mask(self, readings: pa.Table) -> np.ndarray:
        """True for the rows whose (device, sensor, ts) is already stored (rows in any order)."""
        readings = readings.select(KEY_COLUMNS).cast(pa.schema([READING_SCHEMA.field(c) for c in KEY_COLUMNS]))
        hit = np.zeros(readings.num_rows, dtype=bool)
        rows = readings.append_column("_row", pa.array(np.arange(readings.num_rows, dtype=np.int64)))
        for hour, bucket, group in _bucket_hours(rows):
            found = self._parts.stored(hour, bucket, group)
            hit[group.column("_row").to_numpy()[found]] = True
        return hit

    def hour_keys(self, from_us: int, to_us: int) -> list[str]:
        """Keys of the existing hour folders that overlap [from, to)."""
        hours = hours_between(from_us, to_us)
        if len(hours) > 24 * 366 * 5:
            from fleetscore.errors import InputError

            raise InputError("window longer than 5 years")
        days = {f"readings/{name}" for name in self.storage.list_dirs("readings")}
        present: set[str] = set()
        for day in sorted(days & {layout.day_dir(h) for h in hours}):
            present.update(f"{day}/{name}" for name in self.storage.list_dirs(day))
        return [k for k in map(layout.hour_key, hours) if k in present]

    def read_window(
        self,
        from_us: int,
        to_us: int,
        devices: tuple[str | None, str | None] = (None, None),
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Readings with from ≤ ts < to, optionally only devices in [lo, hi] (inclusive; None = open).

        Hour by hour; within an hour bucket by bucket, each sorted by (device, sensor, ts).
        """
        parts = [self.read_hour(k, from_us, to_us, devices, columns) for k in self.hour_keys(from_us, to_us)]
        return pa.concat_tables(parts) if parts else _empty(columns)

    def read_hour(
        self,
        key: str,
        from_us: int,
        to_us: int,
        devices: tuple[str | None, str | None] = (None, None),
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Readings of the hour folder ``key`` (from :meth:`hour_keys`) in [from, to) and the device range."""
        hour = layout.hour_of_key(key)
        if hour is None:
            from fleetscore.errors import InputError

            raise InputError(f"{key!r} is not the key of a readings hour")
        lo, hi = devices
        only = None if lo is None or lo != hi else [device_bucket(lo)]  # one device lives in one bucket
        scan = Scan(from_us, to_us, lo, hi)
        cols = columns or READING_SCHEMA.names
        pieces = [
            _sorted(self._parts.read(hour, bucket, scan, cols, parts))
            for bucket, parts in self._parts.listing(hour, only).items()
        ]
        pieces = [p for p in pieces if p is not None]
        return pa.concat_tables(pieces) if pieces else _empty(columns)

    def read_range(self, from_us: int, to_us: int, lo: Key | None, hi: Key | None,
                   columns: list[str] | None = None) -> pa.Table:
        """Readings with from ≤ ts < to of the keys in [lo, hi) in key order, sorted by key and time.

        Key order is (bucket, device, sensor) (:mod:`fleetscore.core.keys`), the order shards are
        cut in: a shard's range covers one bucket or a few neighbouring ones, and only their row
        groups holding the shard's devices are read.
        """
        cols = columns or READING_SCHEMA.names
        needed = list(dict.fromkeys([*cols, "device", "sensor"]))
        first, last = key_bucket(lo, 0), key_bucket(hi, BUCKETS - 1)
        buckets = range(first, last + 1)
        listings = {h: self._parts.listing(h, buckets) for h in hours_between(from_us, to_us)}
        out = []
        for bucket in buckets:
            low = lo if lo is not None and bucket == first else None
            high = hi if hi is not None and bucket == last else None
            scan = Scan(from_us, to_us, low[0] if low else None, high[0] if high else None)
            pieces = [piece for hour, found in listings.items() if bucket in found
                      for piece in self._parts.read(hour, bucket, scan, needed, found[bucket])]
            table = _sorted(pieces)
            if table is None:
                continue
            if low is not None or high is not None:
                table = table.filter(pa.array(key_range_mask(table.column("device"), table.column("sensor"), low, high)))
            out.append(table.select(cols))
        return pa.concat_tables(out) if out else _empty(columns)

    def key_counts(self, from_us: int, to_us: int) -> pa.Table:
        """Rows per (device, sensor) in the window, in key order; one bucket-hour in memory at a time.

        From the key counts written beside each part when it landed (`BucketParts.key_counts`): a part's
        readings are read only where the window cuts it (or for parts landed before those counts existed).
        """
        hours = [layout.hour_of_key(k) for k in self.hour_keys(from_us, to_us)]
        listings = {h: self._parts.listing(h) for h in hours if h is not None}
        scan = Scan(from_us, to_us)
        out = []
        for bucket in range(BUCKETS):
            counts = [piece for hour, found in listings.items() if bucket in found
                      for piece in self._parts.key_counts(hour, bucket, scan, found[bucket])]
            if counts:
                summed = pa.concat_tables(counts).group_by(["device", "sensor"]).aggregate([("rows", "sum")])
                summed = summed.select(["device", "sensor", "rows_sum"]).rename_columns(["device", "sensor", "rows"])
                out.append(summed.sort_by(SORT_KEYS[:2]))
        if not out:
            return pa.table({"device": pa.array([], pa.string()), "sensor": pa.array([], pa.string()),
                             "rows": pa.array([], pa.int64())})
        return pa.concat_tables(out)


def _floor_hours(ts: pa.ChunkedArray) -> np.ndarray:
    us = ts.cast(pa.int64()).to_numpy()
    return us - us % HOUR_US


def _bucket_hours(rows: pa.Table) -> Iterator[tuple[int, int, pa.Table]]:
    """(hour, bucket, rows) groups, each keeping the rows' order (a stable partition)."""
    hours = _floor_hours(rows.column("ts"))
    group = (hours // HOUR_US) * BUCKETS + bucket_of(rows.column("device"))
    order = np.argsort(group, kind="stable")
    group = group[order]
    rows = rows.take(pa.array(order))
    cuts = np.flatnonzero(np.diff(group)) + 1
    for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(group)]])):
        yield int(group[a] // BUCKETS * HOUR_US), int(group[a] % BUCKETS), rows.slice(a, b - a)


def _sorted(pieces: list[pa.Table]) -> pa.Table | None:
    """One table of pieces that are each sorted by key and time: concatenated in order when their key
    ranges do not overlap (parts landed device range by device range), else sorted again."""
    if len(pieces) <= 1:
        return ids_as_text(pieces[0]) if pieces else None
    keys = [k for k, _ in SORT_KEYS if k in pieces[0].column_names]
    first = [tuple(p.column(k)[0].as_py() for k in keys) for p in pieces]
    last = [tuple(p.column(k)[-1].as_py() for k in keys) for p in pieces]
    order = sorted(range(len(pieces)), key=first.__getitem__)
    if all(last[a] < first[b] for a, b in zip(order[:-1], order[1:])):
        return ids_as_text(pa.concat_tables([pieces[i] for i in order]))
    return ids_as_text(pa.concat_tables(pieces)).sort_by([(k, "ascending") for k in keys])


def _empty(columns: list[str] | None) -> pa.Table:
    schema = READING_SCHEMA if columns is None else pa.schema([READING_SCHEMA.field(c) for c in columns])
    return schema.empty_table()
