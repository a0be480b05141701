"""The ingest part of the app in-process: ``app.state.ingest`` as the dashboard and /metrics read it."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from ingest_support import arrow_body, landed, readings, recent_us

from fleetscore.api import Fleet
from fleetscore.web.app import create_app

ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}


def test_runtime_counts_compacts_and_reports(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fleet = Fleet.open(home)
    app = create_app(fleet, compact_interval_s=0)
    runtime = app.state.ingest
    assert runtime.stats()["running"] is False
    with TestClient(app) as client:
        assert client.post("/v1/readings", content=arrow_body(readings(recent_us(), 40)), headers=ARROW).status_code == 202
        bad = client.post("/v1/readings", content=b'[{"ts": "x", "device": "d", "sensor": "s", "value": 1}]',
                          headers={"Content-Type": "application/json"})
        assert bad.json()["rejected"] == 1
        stats = runtime.stats()
        assert stats["running"] is True and stats["accepted_total"] == 40 and stats["rejected_total"] == 1
        assert stats["batches_total"] == 2 and stats["log_lag_bytes"] > 0 and stats["fsyncs_total"] >= 1
        result = runtime.compact_now()
        assert result is not None and result.landed == 40
        after = runtime.stats()
        assert after["compactions_total"] == 1 and after["last_compaction_at_us"] and after["last_compaction_error"] is None
        assert after["open_windows"] >= 1 and after["watermark"]
        metrics = client.get("/metrics").text
        assert "fleetscore_ingest_accepted_total 40.0" in metrics
    assert runtime.stats()["running"] is False
    fleet.close()
    assert landed(home).num_rows == 40


def test_ingest_can_be_left_off(tmp_path: Path) -> None:
    fleet = Fleet.open(tmp_path / "home")
    with TestClient(create_app(fleet, ingest=False)) as client:
        r = client.post("/v1/readings", content=b"[]", headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and "not running" in r.json()["detail"]
    assert not (tmp_path / "home" / "ingest").exists()
    fleet.close()
