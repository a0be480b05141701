"""Shards and co-partitioning: tasks read only their buckets and keys; skew gets a shard of its own."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scale_support import H0, T0, RecordingStorage, keys_of

from fleetscore.api import Fleet
from fleetscore.core.keys import BUCKETS, bucket_of, key_bucket
from fleetscore.core.plan import fit_cost, plan_shards, target_shards
from fleetscore.core.schema import READING_SCHEMA
from fleetscore.core.simulate import simulate_fleet
from fleetscore.core.times import HOUR_US
from fleetscore.services.score import plan_tasks
from fleetscore.services.train import shard_bounds
from fleetscore.storage import layout
from fleetscore.storage.models import ModelStore
from fleetscore.storage.readings import ReadingStore

OCSVM = {"kind": "ocsvm", "features": "raw", "nu": 0.05, "gamma": "scale"}


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """300 devices × 2 sensors, two hours; a version trained on the first in shards of at most 50 models."""
    home = tmp_path_factory.mktemp("scale") / "home"
    fleet = Fleet.open(home, workers=1, shard_models=50)
    fleet.import_table(simulate_fleet(300, 2, T0, 2, 60.0, 0.01, 5).select(READING_SCHEMA.names))
    fleet.train(iso(H0), iso(H0 + HOUR_US), **OCSVM)
    yield fleet
    fleet.close()


def test_each_task_reads_only_its_buckets_and_together_every_reading_once(trained: Fleet) -> None:
    version = trained.version().version
    tasks = plan_tasks(trained.storage, trained.config.storage.url, "0123456789abcdef", version, "raw",
                       H0 + HOUR_US, H0 + 2 * HOUR_US)
    assert len(tasks) == -(-600 // 50)  # 300 devices × 2 sensors in shards of at most 50 models
    storage = RecordingStorage(trained.config.storage.url)
    store = ReadingStore(storage)
    window = store.read_window(H0 + HOUR_US, H0 + 2 * HOUR_US)
    all_groups = sum(pq.ParquetFile(storage.path(k)).num_row_groups for k in storage.list(layout.hour_key(H0 + HOUR_US))
                     if k.endswith(".parquet"))  # the parts (beside each: its key counts)
    seen: list[tuple[str, str, int]] = []
    read_groups = 0
    for task in tasks:
        storage.forget()
        rows = store.read_range(task.from_us, task.to_us, task.lo, task.hi)
        first, last = key_bucket(task.lo, 0), key_bucket(task.hi, BUCKETS - 1)
        opened = {layout.bucket_of_key(k) for k in storage.opened}
        assert opened <= set(range(first, last + 1))  # only its own buckets
        assert len(opened) < BUCKETS // 4  # ... which are a few of them: no task reads the whole window
        read_groups += sum(len(groups) for _, groups in storage.row_groups)
        buckets = bucket_of(rows.column("device"))
        keys = list(zip(buckets.tolist(), rows.column("device").to_pylist(), rows.column("sensor").to_pylist()))
        assert keys == sorted(keys)  # in key order, each key's rows together
        if task.lo is not None:
            assert keys[0] >= (key_bucket(task.lo, 0), *task.lo)
        if task.hi is not None:
            assert keys[-1] < (key_bucket(task.hi, 0), *task.hi)
        seen += list(zip(rows.column("device").to_pylist(), rows.column("sensor").to_pylist(),
                         rows.column("ts").cast(pa.int64()).to_pylist()))
    assert len(seen) == len(set(seen)) == window.num_rows
    assert set(seen) == keys_of(window)
    assert read_groups <= all_groups + len(tasks)  # a row group is read again only where two shards meet


def test_shards_are_key_ranges_and_the_manifest_has_one_row_group_per_shard(trained: Fleet) -> None:
    version = trained.version().version
    shards = trained.storage.read_parquet(layout.shards_key(version))
    bounds = [(key_bucket((d, s), 0), d, s) for d, s in zip(shards.column("lo_device").to_pylist()[1:],
                                                            shards.column("lo_sensor").to_pylist()[1:])]
    assert bounds == sorted(bounds) and len(bounds) == shards.num_rows - 1
    manifest = pq.ParquetFile(trained.storage.path(layout.manifest_key(version)))
    assert manifest.num_row_groups == shards.num_rows
    for i in range(manifest.num_row_groups):
        assert len(set(manifest.read_row_group(i, columns=["shard"]).column("shard").to_pylist())) == 1


def test_a_task_reads_its_own_shard_manifest_file_never_the_whole_manifest(trained: Fleet) -> None:
    version = trained.version().version
    storage = RecordingStorage(trained.config.storage.url)
    store = ModelStore(storage)
    whole = pq.read_table(trained.storage.path(layout.manifest_key(version)))
    shards = trained.storage.read_parquet(layout.shards_key(version)).column("shard").to_pylist()
    for shard in shards:
        rows = store.read_shard_manifest(version, shard)
        assert rows.to_pylist() == whole.filter(pc.equal(whole.column("shard"), shard)).to_pylist()
    assert layout.manifest_key(version) not in storage.opened  # a task's cost does not grow with the shards
    # versions written before the per-shard files: the same rows from the whole manifest's row groups
    trained.storage.delete(f"{layout.model_dir(version)}/manifest", recursive=True)
    try:
        rows = store.read_shard_manifest(version, shards[1])
        assert rows.to_pylist() == whole.filter(pc.equal(whole.column("shard"), shards[1])).to_pylist()
        assert layout.manifest_key(version) in storage.opened
    finally:
        info, manifest = ModelStore(trained.storage).read_manifest(version)
        ModelStore(trained.storage).write_manifest(info, manifest, trained.storage.read_parquet(layout.shards_key(version)))


def test_a_sensor_with_100x_the_readings_gets_a_shard_of_its_own_and_is_scored_first(tmp_path: Path) -> None:
    normal = simulate_fleet(40, 2, T0, 2, 60.0, 0.0, 2).select(READING_SCHEMA.names)
    heavy = simulate_fleet(1, 1, T0, 2, 0.6, 0.0, 2).select(READING_SCHEMA.names)
    heavy = heavy.set_column(1, "device", pa.array(["dev-00041"] * heavy.num_rows)).cast(normal.schema)
    fleet = Fleet.open(tmp_path / "home", workers=2)
    fleet.import_table(pa.concat_tables([normal, heavy]))
    trained = fleet.train(iso(H0), iso(H0 + HOUR_US), **OCSVM)
    manifest = fleet.models(trained.version)
    mine = manifest.filter(pc.and_(pc.equal(manifest.column("device"), "dev-00041"),
                                   pc.equal(manifest.column("sensor"), "temperature")))
    assert mine.column("n_train").to_pylist() == [round(3600 / 0.6)]  # 100× the minute readings
    shard = mine.column("shard")[0].as_py()
    assert pc.sum(pc.equal(manifest.column("shard"), shard)).as_py() == 1  # alone in its shard
    tasks = plan_tasks(fleet.storage, fleet.config.storage.url, "0123456789abcdef", trained.version, "raw",
                       H0 + HOUR_US, H0 + 2 * HOUR_US)
    assert tasks[0].shard == shard  # the costliest shard is dispatched first
    run = fleet.score(iso(H0 + HOUR_US), iso(H0 + 2 * HOUR_US), workers=2)
    assert run.status.value == "succeeded" and run.rows == normal.num_rows // 2 + heavy.num_rows // 2
    fleet.close()


def test_planning_isolates_a_heavy_model_and_gives_each_worker_several_shards() -> None:
    rows = np.full(1000, 60)
    rows[400] = 6000
    starts = plan_shards(fit_cost(rows, 0.05), max_models=2000, target_shards=target_shards(2))
    ends = np.append(starts[1:], len(rows))
    heavy = [(a, b) for a, b in zip(starts, ends) if a <= 400 < b]
    assert heavy == [(400, 401)]
    assert len(starts) >= target_shards(2) == 8 and target_shards(1) == 1
    cost = np.add.reduceat(fit_cost(rows, 0.05), starts)
    light = np.delete(cost, list(starts).index(400))
    assert light.max() <= 2 * np.median(light)  # the other shards stay balanced


def test_shard_bounds_name_each_shards_first_key(trained: Fleet) -> None:
    keys = ReadingStore(trained.storage).key_counts(H0, H0 + HOUR_US)
    starts = np.array([0, 10, 250])
    bounds = shard_bounds(keys, starts)
    first = [(keys.column("device")[i].as_py(), keys.column("sensor")[i].as_py()) for i in starts]
    assert bounds == [(None, first[1]), (first[1], first[2]), (first[2], None)]
