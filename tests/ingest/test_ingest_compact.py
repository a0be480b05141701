"""Compaction in-process: exactly once, duplicates and late readings quarantined, windows, crash points."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ingest_support import key_set, landed, readings, recent_us

from fleetscore.api import Fleet
from fleetscore.config.ingest import IngestSettings
from fleetscore.core.windows import tumbling_aggregate
from fleetscore.ingest.checkpoint import IngestPaths, load_checkpoint
from fleetscore.ingest.compact import Compactor
from fleetscore.ingest.log import list_segments
from fleetscore.ingest.parse import ParsedBody
from fleetscore.ingest.service import IngestService


def write_batches(home: Path, batches: list[pa.Table], settings: IngestSettings, source: str = "http") -> None:
    service = IngestService(home, settings, source)
    try:
        for table in batches:
            service.append(service.admit(ParsedBody(table))).result()
    finally:
        service.close()


def quarantine(home: Path) -> pa.Table:
    fleet = Fleet.open(home)
    try:
        return fleet.quarantine(100_000)
    finally:
        fleet.close()


def compact(home: Path, settings: IngestSettings, hook=None):  # type: ignore[no-untyped-def]
    fleet = Fleet.open(home)
    compactor = Compactor(home, fleet.storage, settings)
    compactor.crash_hook = hook
    try:
        return compactor.run()
    finally:
        fleet.close()


def windows(home: Path, settings: IngestSettings) -> pa.Table:
    from fleetscore.storage.fs import open_storage
    from fleetscore.storage.windows import WindowStore

    return WindowStore(open_storage(str(home / "data"))).read(settings.window_s, 0, 2**62)


@pytest.fixture
def stream() -> list[pa.Table]:
    """Three batches; the third re-sends part of the first (a client retry) and adds new readings."""
    start = recent_us()
    first = readings(start, 600, seed=1)
    second = readings(start + 60_000_000, 600, seed=2)
    third = pa.concat_tables([first.slice(100, 50), readings(start + 120_000_000, 300, seed=3)])
    return [first, second, third]


def test_exactly_once_with_duplicates_windows_and_segments(tmp_path: Path, stream: list[pa.Table]) -> None:
    home = tmp_path / "home"
    settings = IngestSettings(window_s=60, lateness_s=30)
    write_batches(home, stream[:2], settings)
    first = compact(home, settings)
    assert first.landed == 1200 and first.duplicates == 0
    write_batches(home, stream[2:], settings, source="mqtt")
    second = compact(home, settings)
    assert second.duplicates == 50 and second.landed == 300

    stored = landed(home)
    counts = key_set(stored)
    assert max(counts.values()) == 1
    assert set(counts) == set(key_set(pa.concat_tables(stream)))
    dups = quarantine(home).to_pylist()
    assert len(dups) == 50 and {r["source"] for r in dups} == {"mqtt"}
    assert all(r["reason"].startswith("duplicate") for r in dups)

    # every landed reading is in exactly one window: closed ones on storage, the rest still open
    closed = windows(home, settings)
    assert sum(closed.column("count").to_pylist()) + _open_count(home) == stored.num_rows
    expected = tumbling_aggregate(stored, 60)
    starts = set(closed.column("window_start").to_pylist())
    keep = pa.array([s in starts for s in expected.column("window_start").to_pylist()])
    expected = expected.filter(keep)
    assert closed.column("count").equals(expected.column("count"))
    np.testing.assert_allclose(closed.column("mean").to_numpy(), expected.column("mean").to_numpy(), rtol=1e-12)

    # compacted segments are gone, the checkpoint points past them; a rerun has nothing to do
    paths = IngestPaths.of_home(home)
    assert all(s >= load_checkpoint(paths).position(src)[0] for src in ("http", "mqtt")
               for s in list_segments(paths.log_dir(src)))
    assert compact(home, settings).steps == 0


def _open_count(home: Path) -> int:
    from fleetscore.core.stream import StreamState
    from fleetscore.ingest.records import read_ipc_file

    paths = IngestPaths.of_home(home)
    state = StreamState.from_arrow(read_ipc_file(paths.state_dir / load_checkpoint(paths).state))
    return int(state.count.sum())


def test_late_readings_are_quarantined_not_landed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = IngestSettings(window_s=60, lateness_s=60)
    start = recent_us()
    write_batches(home, [readings(start + 600_000_000, 10), readings(start, 10, seed=5)], settings)
    compact(home, settings)  # one step: readings of one step never make each other late
    write_batches(home, [readings(start + 60_000_000, 10, seed=6)], settings)
    result = compact(home, settings)
    assert result.late == 10 and result.landed == 0
    late = quarantine(home).to_pylist()
    assert len(late) == 10 and {r["source"] for r in late} == {"late"}
    assert late[0]["reason"].startswith("late: ts is before its device's watermark")
    assert landed(home).num_rows == 20


@pytest.mark.parametrize("point", ["decided", "landed"])
def test_a_crash_inside_a_step_loses_and_duplicates_nothing(tmp_path: Path, stream: list[pa.Table], point: str) -> None:
    settings = IngestSettings(window_s=60, lateness_s=30, compact_chunk_rows=400)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    for home in (clean, crashed):
        write_batches(home, stream, settings)
    compact(clean, settings)

    calls = {"n": 0}

    def crash(where: str) -> None:
        if where == point:
            calls["n"] += 1
            if calls["n"] in (1, 3):  # crash in the first step, and again in a later one
                raise RuntimeError(f"simulated crash at {where}")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="simulated crash"):
            compact(crashed, settings, crash)
    compact(crashed, settings, crash)

    assert key_set(landed(crashed)) == key_set(landed(clean))
    assert quarantine(crashed).num_rows == quarantine(clean).num_rows == 50
    assert windows(crashed, settings).equals(windows(clean, settings))
    assert _open_count(crashed) == _open_count(clean)
    assert not IngestPaths.of_home(crashed).staged.exists()


def test_idempotency_keys_survive_compaction_and_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = IngestSettings()
    batch = readings(recent_us(), 20)

    async def send(service: IngestService, key: str):  # type: ignore[no-untyped-def]
        return await service.submit_async(ParsedBody(batch), key)

    service = IngestService(home, settings, "http")
    assert asyncio.run(send(service, "k-1")) == ({"accepted": 20, "rejected": 0, "errors": []}, False)
    assert asyncio.run(send(service, "k-1"))[1] is True
    service.close()
    restarted = IngestService(home, settings, "http")  # key found in the log not yet compacted
    assert asyncio.run(send(restarted, "k-1"))[1] is True
    restarted.close()
    compact(home, settings)
    after = IngestService(home, settings, "http")  # key found in the compaction's key file
    reply, replayed = asyncio.run(send(after, "k-1"))
    assert replayed and reply["accepted"] == 20
    assert after.stats()["batches_total"] == 0
    after.close()
    assert landed(home).num_rows == 20
