"""Concurrent landers on S3 (moto server) and Azure Blob (Azurite): two importers on one object store never
collide (every reading lands exactly once), held by a lock made of conditional writes that passes over
the generation of a holder that died."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetscore.core.simulate import simulate_fleet
from fleetscore.errors import StorageError
from fleetscore.storage.files import write_table
from fleetscore.storage.fs import open_storage
from fleetscore.storage.locks import ObjectStoreLock
from fleetscore.storage.readings import ReadingStore

pytestmark = pytest.mark.backend

KEY = ["device", "sensor", "ts"]
HOUR0_US = 1_767_225_600_000_000  # 2026-01-01T00:00Z


def chunks(tmp_path: Path) -> tuple[pa.Table, list[list[Path]]]:
    """Two importers' files: 6 chunks each of ten minutes of one hour, the two sharing devices 0-3 (the same
    readings in both: duplicates that must land once), so both keep adding parts to the same bucket-hours."""
    fleet = simulate_fleet(8, 2, datetime(2026, 1, 1, tzinfo=UTC), 1, 60.0, 0.0, 3).select(["ts", "device", "sensor", "value"])
    ts = fleet.column("ts").cast(pa.int64()).to_numpy()
    tenth = (ts - ts.min()) // 600_000_000
    devices = sorted(set(fleet.column("device").to_pylist()))
    files: list[list[Path]] = [[], []]
    for i in range(6):
        for who in (0, 1):
            own = pa.array([d for j, d in enumerate(devices) if j < 4 or j % 2 == who])
            keep = pc.and_(pa.array(tenth == i), pc.is_in(fleet.column("device"), own))
            path = tmp_path / f"importer{who}-{i}.csv"
            write_table(fleet.filter(keep), path)
            files[who].append(path)
    return fleet, files


def test_two_importers_on_one_object_store_land_every_reading_once(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = store.bucket() + "/fleet"
    fleet, files = chunks(tmp_path)
    script = ("import sys\nfrom fleetscore.api import Fleet\n"
              "fleet = Fleet.open(sys.argv[1])\n"
              "for path in sys.argv[2:]:\n    fleet.import_file(path)\n")
    procs = []
    for who in (0, 1):
        env = os.environ | {"FLEETSCORE_STORAGE_URL": url}
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"home{who}"), *map(str, files[who])],
                                      env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    landed = ReadingStore(open_storage(url)).read_window(HOUR0_US, HOUR0_US + 3_600_000_000)
    landed = landed.select(["ts", "device", "sensor", "value"])
    assert landed.num_rows == fleet.num_rows  # nothing twice, nothing lost
    assert landed.sort_by([(k, "ascending") for k in KEY]).cast(fleet.schema).equals(
        fleet.sort_by([(k, "ascending") for k in KEY]).cast(fleet.schema))


def test_a_held_lock_keeps_a_second_taker_waiting_and_says_who_holds_it(store) -> None:  # type: ignore[no-untyped-def]
    storage = open_storage(store.bucket())
    folder = storage.path("_locks/readings")
    with ObjectStoreLock(storage.fs, folder):
        with pytest.raises(StorageError, match=r"still held after 0.5 s \(by .+, generation 1\)"):
            ObjectStoreLock(storage.fs, folder, wait_s=0.5).acquire()
    with ObjectStoreLock(storage.fs, folder, wait_s=0.5):  # released: taken at once
        assert [p.rsplit("/", 1)[-1] for p in storage.fs.ls(folder, refresh=True)] == ["gen-0000000001.json"]


def test_the_generation_of_a_dead_holder_is_passed_once_stale(store) -> None:  # type: ignore[no-untyped-def]
    storage = open_storage(store.bucket())
    folder = storage.path("_locks/readings")
    dead = ObjectStoreLock(storage.fs, folder)
    dead.acquire()
    dead._stop.set()  # the holder died: no more heartbeats, nothing released
    time.sleep(2.5)  # object stores keep last-modified times to the second
    taker = ObjectStoreLock(storage.fs, folder, ttl_s=1.0, wait_s=30.0)
    with taker:
        names = [p.rsplit("/", 1)[-1] for p in storage.fs.ls(folder, refresh=True)]
        assert names == ["gen-0000000002.json"]  # the dead generation is gone, the new one held
    assert not storage.fs.exists(f"{folder}/gen-0000000002.json")  # released
