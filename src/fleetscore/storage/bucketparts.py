"""The part files of readings bucket-hours on storage: list the visible ones, read them pruned, add, merge.

A read skips parts whose time range (in their name) misses the query and, inside a part, row
groups whose statistics miss the query's time or device range: a task reads only the row groups
of its devices. Adding rows deduplicates them against the keys already stored in the bucket-hour,
read the same pruned way (only overlapping parts, only the rows groups of the batch's devices),
writes them as a new part and merges small parts (policy in :mod:`fleetscore.storage.parts`).
Works on any fsspec store: parts are written with one atomic PUT/rename and never modified.

Beside each part, written just before it, is a small file of its rows per (device, sensor)
(``keys-part-….arrow``): training plans its shards from those counts (:meth:`BucketParts.key_counts`)
instead of reading every reading's ids, a rows-per-key smaller read. Parts written before those
files existed are read instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetscore.core.schema import READING_SCHEMA
from fleetscore.core.times import HOUR_US
from fleetscore.errors import FleetscoreError, StorageError
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage
from fleetscore.storage.parts import Part, next_seq, to_merge, visible

KEY_COLUMNS = ["device", "sensor", "ts"]
SORT_KEYS = [("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]
#: Row groups of part files: small enough that a task's device range skips most of a bucket-hour.
PART_ROW_GROUP = 32_768
#: Above this many buckets of one hour, one listing of the whole hour beats one listing per bucket.
_LIST_HOUR_OVER = 16
#: A merge may delete a part between a reader's listing and its read: the reader lists again.
_READ_ATTEMPTS = 3
_IDS = ["device", "sensor"]
_KEYS_IPC = pa.ipc.IpcWriteOptions(compression="lz4")


@dataclass(frozen=True)
class Scan:
    """What a read wants: readings with from ≤ ts < to and, when given, lo ≤ device ≤ hi."""

    from_us: int
    to_us: int
    lo_device: str | None = None
    hi_device: str | None = None


class BucketParts:
    """Part files of the readings of ``storage``, one folder per (hour, device bucket)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # --- listing -------------------------------------------------------------------------------
    def listing(self, hour_us: int, buckets: Iterable[int] | None = None) -> dict[int, list[Part]]:
        """All parts (visible or not) of the hour's bucket folders, by bucket (only ``buckets`` if given)."""
        wanted = None if buckets is None else sorted(set(buckets))
        if wanted is not None and len(wanted) <= _LIST_HOUR_OVER:
            return {b: self._parse(self.storage.list(layout.bucket_dir(hour_us, b))) for b in wanted}
        found: dict[int, list[str]] = {}
        for key in self.storage.list(layout.hour_key(hour_us)):
            if key.endswith("/data.parquet"):
                raise StorageError(f"{self.storage.display(key)} holds readings in the layout of fleetscore 0.1 "
                                   "(one file per hour); import them again into a new home")
            bucket = layout.bucket_of_key(key)
            if bucket is not None and (wanted is None or bucket in wanted):
                found.setdefault(bucket, []).append(key)
        return {b: self._parse(keys) for b, keys in sorted(found.items())}

    @staticmethod
    def _parse(keys: list[str]) -> list[Part]:
        return [p for p in (Part.parse(k.rsplit("/", 1)[-1]) for k in keys) if p is not None]

    # --- reading -------------------------------------------------------------------------------
    def read(self, hour_us: int, bucket: int, scan: Scan, columns: list[str],
             parts: list[Part] | None = None) -> list[pa.Table]:
        """The scan's rows of each visible part of a bucket-hour (each piece sorted by key; ids
        dictionary-encoded, see :func:`ids_as_text`); lists the bucket's parts when ``parts`` is None
        or a part vanished (merged) since it was listed."""
        return self._each_live(hour_us, bucket, parts, lambda p: self._read_part(hour_us, bucket, p, scan, columns))

    def key_counts(self, hour_us: int, bucket: int, scan: Scan, parts: list[Part] | None = None) -> list[pa.Table]:
        """Rows per (device, sensor) in the scan's time range, a ``device, sensor, rows`` table (ids as text) per
        visible part of a bucket-hour. A part wholly inside the range answers from the counts written beside it;
        a part the range cuts, or one written before those counts existed, is read (its ids, and ``ts`` if cut)."""
        return self._each_live(hour_us, bucket, parts, lambda p: self._part_counts(hour_us, bucket, p, scan))

    def _each_live(self, hour_us: int, bucket: int, parts: list[Part] | None,
                   read: Callable[[Part], pa.Table | None]) -> list[pa.Table]:
        """``read`` of each visible part (the non-empty results), listed again when a part vanished (merged)."""
        for _ in range(_READ_ATTEMPTS):
            if parts is None:
                parts = self.listing(hour_us, [bucket]).get(bucket, [])
            try:
                pieces = [read(p) for p in visible(parts)[0]]
            except FileNotFoundError:
                parts = None
                continue
            return [t for t in pieces if t is not None and t.num_rows]
        raise StorageError(f"readings of {layout.bucket_dir(hour_us, bucket)} kept changing while being read")

    def _part_counts(self, hour_us: int, bucket: int, part: Part, scan: Scan) -> pa.Table | None:
        first, last = scan.from_us - hour_us, scan.to_us - 1 - hour_us
        if not part.overlaps(first, last):
            return None
        if first <= part.t_lo and part.t_hi <= last:  # every reading of the part is in the range
            try:
                return pa.ipc.open_stream(self.storage.read_bytes(layout.part_keys_key(hour_us, bucket, part.name))).read_all()
            except (FleetscoreError, pa.ArrowException, OSError):
                pass  # none (a part written before key counts were kept, or merged away: its read says so), or unsynced
        table = self._read_part(hour_us, bucket, part, scan, _IDS)
        return None if table is None else key_counts_of(ids_as_text(table))

    def _read_part(self, hour_us: int, bucket: int, part: Part, scan: Scan, columns: list[str]) -> pa.Table | None:
        first, last = scan.from_us - hour_us, scan.to_us - 1 - hour_us
        if not part.overlaps(first, last):
            return None
        clip_ts = part.t_lo < first or part.t_hi > last
        clip_dev = scan.lo_device is not None or scan.hi_device is not None
        needed = list(dict.fromkeys([*columns, *(["ts"] if clip_ts else []), *(["device"] if clip_dev else [])]))
        key = layout.part_key(hour_us, bucket, part.name)
        with self.storage.open_parquet(key, read_dictionary=[c for c in _IDS if c in needed]) as pf:
            groups = _row_groups(pf, scan)
            if not groups:
                return None
            table = pf.read_row_groups(groups, columns=needed, use_threads=False)
        mask = None
        if clip_ts:
            ts = table.column("ts")
            mask = pc.and_(pc.greater_equal(ts, _ts_scalar(scan.from_us, ts.type)), pc.less(ts, _ts_scalar(scan.to_us, ts.type)))
        if scan.lo_device is not None:
            above = pc.greater_equal(table.column("device"), scan.lo_device)
            mask = above if mask is None else pc.and_(mask, above)
        if scan.hi_device is not None:
            below = pc.less_equal(table.column("device"), scan.hi_device)
            mask = below if mask is None else pc.and_(mask, below)
        if mask is not None:
            table = table.filter(mask)
        return table.select(columns)

    def read_all(self, hour_us: int, bucket: int, part: Part) -> pa.Table:
        """Every reading of one part, in the canonical schema."""
        return self.storage.read_parquet(layout.part_key(hour_us, bucket, part.name)).cast(READING_SCHEMA)

    # --- adding --------------------------------------------------------------------------------
    def stored(self, hour_us: int, bucket: int, rows: pa.Table, parts: list[Part] | None = None) -> np.ndarray:
        """True for the rows (of this bucket-hour) whose (device, sensor, ts) is already stored."""
        hit = np.zeros(rows.num_rows, dtype=bool)
        if rows.num_rows == 0:
            return hit
        ts_range = pc.min_max(rows.column("ts").cast(pa.int64())).as_py()
        dev_range = pc.min_max(rows.column("device")).as_py()
        scan = Scan(ts_range["min"], ts_range["max"] + 1, dev_range["min"], dev_range["max"])
        pieces = self.read(hour_us, bucket, scan, KEY_COLUMNS, parts)
        if not pieces:
            return hit
        probe = rows.select(KEY_COLUMNS).append_column("_row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        found = probe.join(ids_as_text(pa.concat_tables(pieces)), keys=KEY_COLUMNS, join_type="left semi")
        hit[found.column("_row").to_numpy()] = True
        return hit

    def add(self, hour_us: int, bucket: int, rows: pa.Table) -> int:
        """Store the rows not stored yet as a new part, then merge small parts; returns how many were new.

        ``rows`` are readings of this bucket-hour sorted by (device, sensor, ts) without repeated keys.
        The caller serialises writers (a store has one lander at a time).
        """
        parts = self.listing(hour_us, [bucket]).get(bucket, [])
        rows = rows.filter(pa.array(~self.stored(hour_us, bucket, rows, parts)))
        live, stale = visible(parts)
        if rows.num_rows:
            offsets, seq = pc.min_max(rows.column("ts").cast(pa.int64())).as_py(), next_seq(parts)
            part = Part.new(seq, seq, offsets["min"] - hour_us, offsets["max"] - hour_us, rows.num_rows)
            self._write(hour_us, bucket, part, rows)
            live = sorted([*live, part])
        while group := to_merge(live):
            merged = self._merge(hour_us, bucket, group)
            stale += group
            live = sorted([*(p for p in live if p not in group), merged])
        for part in stale:
            self._delete(hour_us, bucket, part)
        return rows.num_rows

    def _merge(self, hour_us: int, bucket: int, group: list[Part]) -> Part:
        """Write one part holding the readings of ``group`` (contiguous in seq); the inputs are left."""
        table = pa.concat_tables([self.read_all(hour_us, bucket, p) for p in group]).sort_by(SORT_KEYS)
        merged = Part.new(group[0].seq_lo, group[-1].seq_hi, min(p.t_lo for p in group), max(p.t_hi for p in group),
                          table.num_rows)
        self._write(hour_us, bucket, merged, table)
        return merged

    def _write(self, hour_us: int, bucket: int, part: Part, rows: pa.Table) -> None:
        """The part's key counts, then the part: a visible part has its counts (unless written before them). The
        counts are not fsynced: one a crash cut short fails to read, and the part is read instead."""
        counts, sink = key_counts_of(rows), pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, counts.schema, options=_KEYS_IPC) as writer:
            writer.write_table(counts)
        self.storage.write_bytes(layout.part_keys_key(hour_us, bucket, part.name), sink.getvalue().to_pybytes(),
                                 durable=False)
        self.storage.write_parquet(layout.part_key(hour_us, bucket, part.name), rows, row_group_size=PART_ROW_GROUP)

    def _delete(self, hour_us: int, bucket: int, part: Part) -> None:
        """A superseded part, then its key counts (a left-over counts file, with no part, is never read)."""
        self.storage.delete(layout.part_key(hour_us, bucket, part.name))
        self.storage.delete(layout.part_keys_key(hour_us, bucket, part.name))


def key_counts_of(rows: pa.Table) -> pa.Table:
    """Rows per (device, sensor) of readings sorted by key, in key order: ``device, sensor, rows``."""
    n = rows.num_rows
    device, sensor = rows.column("device"), rows.column("sensor")
    if n == 0:
        return pa.table({"device": device.slice(0, 0), "sensor": sensor.slice(0, 0), "rows": pa.array([], pa.int64())})
    change = pc.or_(pc.not_equal(device.slice(1), device.slice(0, n - 1)),
                    pc.not_equal(sensor.slice(1), sensor.slice(0, n - 1)))
    starts = np.concatenate([[0], np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1]).astype(np.int64)
    firsts = pa.array(starts)
    return pa.table({"device": device.take(firsts), "sensor": sensor.take(firsts),
                     "rows": pa.array(np.diff(np.append(starts, n)), pa.int64())})


def _row_groups(pf: pq.ParquetFile, scan: Scan) -> list[int]:
    """Row groups whose statistics may hold rows of the scan (all of them when statistics are missing)."""
    md = pf.metadata
    ts_col = pf.schema_arrow.get_field_index("ts")
    dev_col = pf.schema_arrow.get_field_index("device")
    keep = []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        ts = rg.column(ts_col).statistics
        if ts is not None and ts.has_min_max and (ts.max_raw < scan.from_us or ts.min_raw >= scan.to_us):
            continue
        dev = rg.column(dev_col).statistics
        if dev is not None and dev.has_min_max and (
            (scan.lo_device is not None and dev.max < scan.lo_device)
            or (scan.hi_device is not None and dev.min > scan.hi_device)
        ):
            continue
        keep.append(i)
    return keep


def ids_as_text(table: pa.Table) -> pa.Table:
    """Ids are read dictionary-encoded (several times faster than as text, and comparable), then cast
    to text once per table of pieces: sorting, joining and the canonical schema need text."""
    for name in _IDS:
        i = table.schema.get_field_index(name)
        if i >= 0 and pa.types.is_dictionary(table.schema.field(i).type):
            table = table.set_column(i, name, table.column(i).cast(pa.string()))
    return table


def _ts_scalar(us: int, ts_type: pa.DataType) -> pa.Scalar:
    return pa.scalar(us, pa.int64()).cast(ts_type)


def hours_between(from_us: int, to_us: int) -> list[int]:
    """Start (µs) of every hour overlapping [from, to)."""
    return list(range(from_us - from_us % HOUR_US, to_us, HOUR_US))
