"""The ingest part of the app in-process: ``app.state.ingest`` as the dashboard and /metrics read it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
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


@pytest.mark.parametrize(("inline_parse_bytes", "in_pool"), [(1 << 20, False), (1000, True)])
def test_only_bodies_over_inline_parse_bytes_go_to_the_parse_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline_parse_bytes: int, in_pool: bool) -> None:
    from fleetscore.web import ingest as ingest_http

    home = tmp_path / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text(f"[server]\ninline_parse_bytes = {inline_parse_bytes}\n")
    threads, real_parse = [], ingest_http.parse_body

    def parse_here(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return real_parse(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_http, "parse_body", parse_here)
    fleet = Fleet.open(home)
    body = arrow_body(readings(recent_us(), 40))  # a few kB: over 1000 bytes, under 1 MiB
    with TestClient(create_app(fleet, compact_interval_s=0)) as client:
        r = client.post("/v1/readings", content=body, headers={**ARROW, "Idempotency-Key": "k"})
        assert r.status_code == 202 and r.json()["accepted"] == 40
    fleet.close()
    assert [name.startswith("fleetscore-parse") for name in threads] == [in_pool]


def test_a_small_compressed_arrow_stream_that_inflates_past_the_limit_goes_to_the_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its body is small, but parsing it inflates its buffers: that work must not block the event loop."""
    from fleetscore.web import ingest as ingest_http

    home = tmp_path / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text("[server]\ninline_parse_bytes = 200000\n")
    threads, real_parse = [], ingest_http.parse_body

    def parse_here(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return real_parse(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_http, "parse_body", parse_here)
    table = readings(recent_us(), 20_000).set_column(3, "value", pa.array(np.full(20_000, 21.5)))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    assert len(body) < 200_000 < table.nbytes  # small on the wire, large once inflated
    fleet = Fleet.open(home)
    with TestClient(create_app(fleet, compact_interval_s=0)) as client:
        r = client.post("/v1/readings", content=body, headers=ARROW)
        assert r.status_code == 202 and r.json()["accepted"] == 20_000
    fleet.close()
    assert [name.startswith("fleetscore-parse") for name in threads] == [True]


@pytest.mark.parametrize("body", [b"\x00\x00\x00\x80", b"\xff\xff\xff\xff\x10\x00\x00\x00junk", b"\xff\xff\xff\xff"])
def test_a_broken_arrow_stream_is_a_400_that_says_so(tmp_path: Path, body: bytes) -> None:
    """Bodies small enough to be judged on the loop: Arrow's reader raises OSError for some ("negative
    continuation token"), which must be a clear 400, not a 500."""
    fleet = Fleet.open(tmp_path / "home")
    with TestClient(create_app(fleet, compact_interval_s=0), raise_server_exceptions=False) as client:
        r = client.post("/v1/readings", content=body, headers=ARROW)
        assert r.status_code == 400, r.text
        assert "not a valid Arrow IPC stream" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200
    fleet.close()
