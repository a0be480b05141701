"""The bucketed readings layout: dedup across parts and buckets, chunked landing, merges, key order.

Real local storage under tmp_path; a recording :class:`Storage` subclass notes which part files
were opened and which row groups read, so tests assert on what was read, never on time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scale_support import H0, RecordingStorage, keys_of, readings

from fleetscore.core.keys import BUCKETS, bucket_of, device_bucket
from fleetscore.core.times import HOUR_US
from fleetscore.storage import layout
from fleetscore.storage.bucketparts import BucketParts
from fleetscore.storage.fs import Storage
from fleetscore.storage.parts import MERGE_PARTS, Part, visible
from fleetscore.storage.readings import ReadingStore

KEY = ["device", "sensor", "ts"]


@pytest.fixture
def store(tmp_path: Path) -> ReadingStore:
    return ReadingStore(RecordingStorage(str(tmp_path / "data")))


def test_duplicates_are_stored_once_and_counted_across_parts_and_buckets(store: ReadingStore) -> None:
    fleet = readings(40)
    first = fleet.slice(0, fleet.num_rows // 2)
    assert store.land(first).accepted == first.num_rows
    # again the first half (all duplicates), the rest, and a repeat inside the batch whose value differs
    changed = first.slice(0, 5).set_column(3, "value", pa.array(np.full(5, -1.0)))
    batch = pa.concat_tables([t.cast(fleet.schema) for t in (first, fleet.slice(fleet.num_rows // 2), changed,
                                                            fleet.slice(fleet.num_rows - 3))])
    result = store.land(batch)
    assert result.accepted == fleet.num_rows - first.num_rows
    assert result.duplicates == batch.num_rows - result.accepted
    stored = store.read_window(H0, H0 + 2 * HOUR_US)
    assert stored.num_rows == fleet.num_rows == len(keys_of(stored))
    assert keys_of(stored) == keys_of(fleet)
    first_values = stored.join(first.slice(0, 5), keys=KEY, join_type="inner", right_suffix="_first")
    assert first_values.column("value").equals(first_values.column("value_first"))  # the stored reading won
    assert len({layout.bucket_of_key(k) for k in store.storage.list("readings")}) > 8


def test_chunked_landing_adds_parts_and_checks_only_overlapping_ones(store: ReadingStore) -> None:
    fleet = readings(12, hours=1)
    minutes = fleet.column("ts").cast(pa.int64()).to_numpy() // 60_000_000
    chunks = [fleet.filter(pa.array(minutes == m)) for m in np.unique(minutes)]
    for i, chunk in enumerate(chunks):
        store.storage.forget()
        assert store.land(chunk).accepted == chunk.num_rows
        # a chunk of later readings never opens the parts of earlier minutes to look for duplicates
        for key in store.storage.opened:
            part = Part.parse(key.rsplit("/", 1)[-1])
            assert part is not None and part.t_hi >= i * 60_000_000
    by_bucket: dict[int, list[Part]] = {}
    for key in store.storage.list(layout.hour_key(H0)):
        if (part := Part.parse(key.rsplit("/", 1)[-1])) is not None:  # beside each part: its key counts
            by_bucket.setdefault(layout.bucket_of_key(key), []).append(part)
    live = [visible(parts)[0] for parts in by_bucket.values()]
    assert all(len(parts) < 2 * MERGE_PARTS for parts in live)  # merged as they came: not one part per chunk
    assert all(sum(p.rows for p in parts) == 2 * 60 * len(set(bucket_devices)) for parts, bucket_devices in
               zip(live, ([d for d in fleet.column("device").unique().to_pylist() if device_bucket(d) == b]
                          for b in by_bucket)))
    stored = store.read_window(H0, H0 + HOUR_US)
    assert stored.num_rows == fleet.num_rows == len(keys_of(stored))
    assert store.land(fleet).duplicates == fleet.num_rows


def test_a_merge_interrupted_before_deleting_its_inputs_shows_every_reading_once(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "data"))
    store, parts = ReadingStore(storage), BucketParts(storage)
    fleet = readings(30, hours=1)
    minutes = fleet.column("ts").cast(pa.int64()).to_numpy() // 60_000_000
    for m in np.unique(minutes)[:3]:
        store.land(fleet.filter(pa.array(minutes == m)))
    bucket = int(bucket_of(fleet.column("device"))[0])
    inputs = visible(parts.listing(H0, [bucket])[bucket])[0]
    assert len(inputs) == 3
    parts._merge(H0, bucket, inputs)  # the merged part is written, the crash comes before the deletes
    listed = parts.listing(H0, [bucket])[bucket]
    assert len(listed) == 4 and len(visible(listed)[0]) == 1
    expected = fleet.filter(pa.array(np.isin(minutes, np.unique(minutes)[:3])))
    stored = store.read_window(H0, H0 + HOUR_US)
    assert stored.num_rows == expected.num_rows == len(keys_of(stored))
    store.land(fleet.filter(pa.array(minutes == np.unique(minutes)[3])))  # the next land cleans up
    assert len(parts.listing(H0, [bucket])[bucket]) == len(visible(parts.listing(H0, [bucket])[bucket])[0])


def test_stored_mask_finds_stored_keys_in_any_row_order(store: ReadingStore) -> None:
    fleet = readings(20)
    store.land(fleet.slice(0, 1000))
    order = np.random.default_rng(3).permutation(fleet.num_rows)
    probe = fleet.take(pa.array(order))
    assert np.array_equal(store.stored_mask(probe), order < 1000)


def test_key_counts_come_in_key_order_and_match_the_rows(store: ReadingStore) -> None:
    fleet = readings(25, sensors=3)
    store.land(fleet)
    counts = store.key_counts(H0, H0 + 2 * HOUR_US)
    buckets = bucket_of(counts.column("device"))
    keys = list(zip(buckets.tolist(), counts.column("device").to_pylist(), counts.column("sensor").to_pylist()))
    assert keys == sorted(keys) and len(keys) == 25 * 3
    assert counts.column("rows").to_pylist() == [2 * 60] * (25 * 3)  # two hours of minute readings


def brute_counts(store: ReadingStore, from_us: int, to_us: int) -> dict[tuple[str, str], int]:
    """Rows per key counted from the readings themselves."""
    table = store.read_window(from_us, to_us, columns=["device", "sensor"])
    out: dict[tuple[str, str], int] = {}
    for key in zip(table.column("device").to_pylist(), table.column("sensor").to_pylist()):
        out[key] = out.get(key, 0) + 1
    return out


def counted(table: pa.Table) -> dict[tuple[str, str], int]:
    return dict(zip(zip(table.column("device").to_pylist(), table.column("sensor").to_pylist()),
                    table.column("rows").to_pylist()))


def test_training_plans_from_the_key_counts_landed_beside_each_part(store: ReadingStore) -> None:
    fleet = readings(30, sensors=2, hours=3, seed=4)
    minutes = fleet.column("ts").cast(pa.int64()).to_numpy() // (7 * 60_000_000)
    for m in np.unique(minutes):  # landed in 7-minute chunks: new parts and merges, each with its counts
        store.land(fleet.filter(pa.array(minutes == m)))
    files = [k.rsplit("/", 1)[1] for k in store.storage.list("readings")]
    parts = {f for f in files if f.startswith("part-")}
    counts = {f.removeprefix("keys-").removesuffix(".arrow") for f in files if f.startswith("keys-")}
    assert counts == {p.removesuffix(".parquet") for p in parts}  # one each, no orphans
    store.storage.forget()
    whole = store.key_counts(H0, H0 + 3 * HOUR_US)
    assert not [k for k in store.storage.opened if "/part-" in k]  # whole hours: not one reading read
    assert counted(whole) == brute_counts(store, H0, H0 + 3 * HOUR_US)
    store.storage.forget()
    lo, hi = H0 + 20 * 60_000_000, H0 + 2 * HOUR_US + 10 * 60_000_000  # the window cuts the first and last hours
    cut = store.key_counts(lo, hi)
    read = {layout.hour_of_key(k.rsplit("/", 2)[0]) for k in store.storage.opened if "/part-" in k}
    assert read == {H0, H0 + 2 * HOUR_US}  # only parts the window cuts were read: none of the middle hour
    assert counted(cut) == brute_counts(store, lo, hi)


def test_parts_without_readable_key_counts_are_read_instead(store: ReadingStore) -> None:
    store.land(readings(20, sensors=3, seed=5))
    for i, key in enumerate(k for k in store.storage.list("readings") if k.rsplit("/", 1)[1].startswith("keys-")):
        if i % 2:
            store.storage.delete(key)  # as an older fleetscore left them
        else:
            store.storage.write_bytes(key, b"\xff\xff\xff\xff garbage")  # cut short by a crash, or tampered with
    store.storage.forget()
    counts = store.key_counts(H0, H0 + 2 * HOUR_US)
    assert counted(counts) == brute_counts(store, H0, H0 + 2 * HOUR_US)
    assert set(counts.column("rows").to_pylist()) == {2 * 60} and counts.num_rows == 20 * 3
    assert store.storage.opened  # the parts themselves were read


def test_read_hour_of_one_device_opens_only_that_device_bucket(store: ReadingStore) -> None:
    store.land(readings(30))
    store.storage.forget()
    table = store.read_window(H0, H0 + 2 * HOUR_US, devices=("dev-00007", "dev-00007"))
    assert set(table.column("device").to_pylist()) == {"dev-00007"} and table.num_rows == 2 * 2 * 60
    assert {layout.bucket_of_key(k) for k in store.storage.opened} == {device_bucket("dev-00007")}


def test_part_names_hold_numbers_only_and_round_trip() -> None:
    part = Part.new(3, 9, 0, 3_599_999_999, 12345)
    assert Part.parse(part.name) == part
    assert Part.parse("data.parquet") is None and Part.parse("part-1-2.parquet") is None
    assert layout.part_key(H0, 7, part.name).startswith("readings/date=2026-01-01/hour=00/bucket=007/part-")
    assert layout.bucket_of_key(layout.part_key(H0, 7, part.name)) == 7
    assert layout.hour_of_key(layout.hour_key(H0)) == H0
    assert 0 <= device_bucket("any device id ü") < BUCKETS
