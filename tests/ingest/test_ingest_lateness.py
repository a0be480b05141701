"""Per-device lateness: a device's backlog after an outage lands; late-for-its-device readings are
quarantined with that device's watermark, counted on /metrics, and can be replayed for backfill."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from ingest_support import Server, arrow_body, key_set, landed, recent_us, wait_until
from test_ingest_compact import compact, quarantine, write_batches

from fleetscore.config.ingest import IngestSettings
from fleetscore.core.times import iso
from fleetscore.ingest.checkpoint import IngestPaths, load_checkpoint
from fleetscore.ingest.records import read_ipc_file

MIN_US = 60_000_000


def device_readings(device: str, start_us: int, minutes: float, step_s: int = 6, sensor: str = "temp") -> pa.Table:
    """One reading of ``device`` every ``step_s`` seconds for ``minutes`` from ``start_us``."""
    n = int(minutes * 60 / step_s)
    ts = start_us + np.arange(n, dtype=np.int64) * step_s * 1_000_000
    return pa.table({"ts": pa.array(ts).cast(pa.timestamp("us", tz="UTC")), "device": [device] * n,
                     "sensor": [sensor] * n, "value": np.linspace(20.0, 21.0, n)})


def late_total(server: Server) -> float | None:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("fleetscore_ingest_late_total "):
            return float(line.split()[1])
    return None


@pytest.mark.backend
def test_a_device_backlog_after_an_outage_lands_through_the_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = Server(home, "--compact-interval", "1s")
    try:
        t0 = recent_us()
        post = lambda table: httpx.post(f"{server.url}/v1/readings", content=arrow_body(table), timeout=30,  # noqa: E731
                                        headers={"Content-Type": "application/vnd.apache.arrow.stream"})
        # A streams live for 10 minutes; B reports until t0, then goes offline
        for table in (device_readings("B", t0 - MIN_US, 1), device_readings("A", t0, 10)):
            assert post(table).status_code == 202
        wait_until(lambda: landed(home).num_rows == 110, what="the first readings to land")
        # B comes back and uploads its 6-minute backlog while A streams on
        backlog = device_readings("B", t0, 6)
        for table in (device_readings("A", t0 + 10 * MIN_US, 1), backlog):
            assert post(table).json()["accepted"] == table.num_rows
        wait_until(lambda: load_checkpoint(IngestPaths.of_home(home)).totals.get("records", 0) == 4,
                   what="the backlog to be compacted")
        got = key_set(landed(home))
        assert all(got[k] == 1 for k in key_set(backlog)), "B's backlog must land, judged by B's own clock"
        assert quarantine(home).num_rows == 0

        # now a reading late for B itself: before B's max event time − 5 min
        straggler = device_readings("B", t0 + 30_000_000, 0.1, sensor="rpm")
        assert post(straggler).status_code == 202
        wait_until(lambda: late_total(server) == 1.0, what="fleetscore_ingest_late_total to count it")
        rows = quarantine(home).to_pylist()
        b_watermark = iso(t0 + 6 * MIN_US - 6_000_000 - 5 * MIN_US)
        assert [(r["source"], r["device"]) for r in rows] == [("late", "B")]
        assert rows[0]["reason"].startswith(f"late: ts is before its device's watermark {b_watermark[:-1]}")
        assert not set(key_set(straggler)) & set(key_set(landed(home)))
    finally:
        server.stop()


def clock_devices(home: Path) -> list[str]:
    paths = IngestPaths.of_home(home)
    return sorted(read_ipc_file(paths.state_dir / load_checkpoint(paths).devices).column("device").to_pylist())


def test_the_device_clock_forgets_the_least_recently_seen_first(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = IngestSettings(window_s=60, lateness_s=60, max_tracked_devices=2)
    t0 = recent_us()
    for device in ("old", "mid", "new"):  # one compaction step each: "old" is seen least recently
        write_batches(home, [device_readings(device, t0 + 10 * MIN_US, 1)], settings)
        compact(home, settings)
    assert clock_devices(home) == ["mid", "new"]
    # ten minutes back: "old" was forgotten, so it counts as new and lands; "mid" is late for itself
    write_batches(home, [device_readings("old", t0, 1, sensor="s2"), device_readings("mid", t0, 1, sensor="s2")],
                  settings)
    result = compact(home, settings)
    assert result.late == 10 and result.landed == 10
    assert {r["device"] for r in quarantine(home).to_pylist()} == {"mid"}
    assert clock_devices(home) == ["mid", "old"]


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_replay_lands_late_readings_lists_scored_windows_and_is_idempotent(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from fleetscore.api import Fleet
    from fleetscore.core.simulate import simulate_fleet

    home = tmp_path / "home"
    fleet = Fleet.open(home, workers=1)
    fleet.import_table(simulate_fleet(3, 2, T0, 5, 60.0, 0.02, 4).select(["ts", "device", "sensor", "value"]))
    fleet.train(T0, T0 + timedelta(hours=4), workers=1)
    assert fleet.score(T0 + timedelta(hours=4), T0 + timedelta(hours=5), workers=1).status.value == "succeeded"
    fleet.close()

    settings = IngestSettings(window_s=60, lateness_s=300)
    h = 3_600_000_000
    base = int(T0.timestamp()) * 1_000_000
    write_batches(home, [device_readings(d, base + 6 * h, 1, sensor="late") for d in ("X", "Y")], settings)
    compact(home, settings)
    late = [device_readings(d, base + 4 * h + 30 * MIN_US, 1, sensor="late") for d in ("X", "Y")]
    write_batches(home, late, settings)
    assert compact(home, settings).late == 20

    first = cli("quarantine", "replay", "--reason", "late", "--device", "X", "--home", str(home), "--json")
    assert first.exit_code == 0, first.stderr
    out = json.loads(first.stdout)
    assert (out["replayed"], out["landed"], out["duplicates"]) == (10, 10, 0)
    assert [(w["window_from"], w["window_to"]) for w in out["windows"]] == [("2026-01-01T04:00:00Z", "2026-01-01T05:00:00Z")]
    assert "fleetscore backfill --from 2026-01-01T04:00:00Z --to 2026-01-01T05:00:00Z" in out["windows"][0]["backfill"]
    assert {r["device"] for r in quarantine(home).to_pylist()} == {"Y"}  # only X was replayed

    again = json.loads(cli("quarantine", "replay", "--device", "X", "--home", str(home), "--json").stdout)
    assert (again["replayed"], again["landed"], again["windows"]) == (0, 0, [])
    stored = key_set(fleet.readings(T0, T0 + timedelta(hours=7)))
    assert all(stored[k] == 1 for k in key_set(late[0])) and not any(k in stored for k in key_set(late[1]))

    bad = cli("quarantine", "replay", "--reason", "duplicate", "--home", str(home), "--json")
    assert bad.exit_code != 0 and "only late readings can be replayed" in bad.stdout + bad.stderr
