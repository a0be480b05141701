"""The HTTP front door on a real `fleetscore serve`: formats, status codes, auth, limits, idempotency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ingest_support import (
    CLI,
    HOUR_US,
    Server,
    arrow_body,
    free_port,
    key_set,
    landed,
    readings,
    recent_us,
    wait_until,
)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}

pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("http") / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text("[ingest]\nmax_body_bytes = 300000\nmax_batch_rows = 5000\n"
                                         "[server]\nmax_decompressed_bytes = 4000000\n")
    srv = Server(home, "--compact-interval", "0", env={"FLEETSCORE_TOKEN": TOKEN})
    srv.home = home  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def post(server: Server, body: bytes, content_type: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/readings", content=body, timeout=30,
                      headers={"Content-Type": content_type, **AUTH, **headers})


def compact(home: Path) -> dict:
    import subprocess

    out = subprocess.run([*CLI, "compact", "--home", str(home), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_format_is_accepted_and_lands_after_compaction(server: Server) -> None:
    start = recent_us()
    batches = [readings(start + i * 600_000_000, 200, seed=i) for i in range(4)]
    json_body = json.dumps([{**r, "ts": r["ts"].isoformat()} for r in batches[0].to_pylist()]).encode()
    ndjson_body = b"\n".join(json.dumps({**r, "ts": r["ts"].timestamp()}).encode() for r in batches[1].to_pylist())
    csv_rows = [f"{r['ts'].isoformat()},{r['device']},{r['sensor']},{r['value']!r}" for r in batches[2].to_pylist()]
    csv_body = ("ts,device,sensor,value\n" + "\n".join(csv_rows) + "\n").encode()
    for body, kind in ((json_body, "application/json"), (ndjson_body, "application/x-ndjson"),
                       (csv_body, "text/csv; charset=utf-8"), (arrow_body(batches[3]), ARROW["Content-Type"])):
        r = post(server, body, kind)
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 200, "rejected": 0, "errors": []}
    result = compact(server.home)  # type: ignore[attr-defined]
    assert result["landed"] >= 800
    got = key_set(landed(server.home))  # type: ignore[attr-defined]
    for batch in batches:
        assert all(got[k] == 1 for k in key_set(batch))


def test_bad_rows_are_reported_and_good_rows_kept(server: Server) -> None:
    ts = "2026-06-01T00:00:00Z"
    rows = [
        {"ts": ts, "device": "../../etc", "sensor": "<script>", "value": 1.0},  # hostile but valid ids
        {"ts": ts, "device": "x" * 300, "sensor": "s", "value": 1.0},
        {"ts": ts, "device": "d", "sensor": "s", "value": "NaN"},
        {"ts": ts, "device": "d", "sensor": "s", "value": 2.0},
        {"ts": ts, "device": "d", "sensor": "s", "value": 3.0},  # duplicate of the previous one
        {"ts": "3000-01-01T00:00:00Z", "device": "d", "sensor": "s", "value": 1.0},
        {"device": "d", "sensor": "s", "value": 1.0},
    ]
    r = post(server, json.dumps(rows).encode(), "application/json")
    assert r.status_code == 202
    reply = r.json()
    assert reply["accepted"] == 2 and reply["rejected"] == 5
    assert [e["index"] for e in reply["errors"]] == [1, 2, 4, 5, 6]
    assert "longer than 256" in reply["errors"][0]["error"] and "duplicate" in reply["errors"][2]["error"]
    assert not list(server.home.rglob("etc"))  # type: ignore[attr-defined]


@pytest.mark.parametrize("body,content_type,status,needle", [
    (b"[{", "application/json", 400, "not valid JSON"),
    (b'{"ts": 1}', "application/json", 400, "JSON array"),
    (b"", "application/json", 400, "empty"),
    (b"a,b\n1,2\n", "text/csv", 400, "header"),
    (b"\xff\xfe\x00garbage", ARROW["Content-Type"], 400, "Arrow"),
    (b"[]", "text/plain", 415, "Content-Type"),
    (b"[]", "multipart/form-data; boundary=x", 415, "Content-Type"),
    (b"[" + b'{"ts": 1, "device": "d", "sensor": "s", "value": 1},' * 5000 + b"{}]", "application/json", 413,
     "limit"),
    (b"x" * 300_001, "application/json", 413, "limit"),
])
def test_unusable_bodies_get_4xx_with_a_reason(server: Server, body: bytes, content_type: str, status: int,
                                                needle: str) -> None:
    r = post(server, body, content_type)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_chunked_body_over_the_limit_is_413(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 10_000

    r = httpx.post(f"{server.url}/v1/readings", content=chunks(), timeout=30,
                   headers={"Content-Type": "application/json", **AUTH})
    assert r.status_code == 413


def test_compressed_bodies_are_bounded_once_inflated(server: Server) -> None:
    """An Arrow stream's own zstd buffers are capped by [server] max_decompressed_bytes; HTTP encodings are refused."""
    import gzip

    import pyarrow as pa

    bomb = readings(recent_us(), 1).set_column(1, "device", pa.array(["x" * 8_000_000]))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, bomb.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(bomb)
    r = post(server, sink.getvalue().to_pybytes(), ARROW["Content-Type"])
    assert r.status_code == 413 and "server.max_decompressed_bytes" in r.json()["detail"]
    json_body = json.dumps([{"ts": "2026-06-01T00:00:00Z", "device": "d", "sensor": "s", "value": 1}]).encode()
    r = post(server, gzip.compress(json_body), "application/json", **{"Content-Encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding 'gzip'" in r.json()["detail"]
    assert post(server, json_body, "application/json", **{"Content-Encoding": "identity"}).status_code == 202


def test_writes_need_the_token(server: Server) -> None:
    body = arrow_body(readings(recent_us(), 5))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{server.url}/v1/readings", content=body, headers={**ARROW, **headers}, timeout=30)
        assert r.status_code == 401 and "token" in r.json()["detail"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_idempotency_key_counts_a_resent_batch_once(server: Server) -> None:
    body = arrow_body(readings(recent_us() + 3 * 3_600_000_000 // 4, 30, seed=9))
    first = post(server, body, ARROW["Content-Type"], **{"Idempotency-Key": "batch-0001"})
    again = post(server, body, ARROW["Content-Type"], **{"Idempotency-Key": "batch-0001"})
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json() and again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    bad = post(server, body, ARROW["Content-Type"], **{"Idempotency-Key": "k" * 300})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["detail"]


def test_idempotency_key_reused_for_a_different_body_is_422(server: Server) -> None:
    start = recent_us() + HOUR_US // 2
    body, other = (arrow_body(readings(start, 10, seed=s)) for s in (1, 2))
    key = {"Idempotency-Key": "batch-reused"}
    assert post(server, body, ARROW["Content-Type"], **key).status_code == 202
    clash = post(server, other, ARROW["Content-Type"], **key)
    assert clash.status_code == 422, clash.text
    assert "batch-reused" in clash.json()["detail"] and "different body" in clash.json()["detail"]
    as_json = json.dumps([{**r, "ts": r["ts"].isoformat()} for r in readings(start, 10, seed=1).to_pylist()])
    assert post(server, as_json.encode(), "application/json", **key).status_code == 422  # same rows, another body
    again = post(server, body, ARROW["Content-Type"] + "; charset=binary", **key)
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"


def test_a_reused_key_is_refused_after_restart_and_compaction(tmp_path: Path) -> None:
    from fleetscore.api import Fleet
    from fleetscore.config import IngestSettings
    from fleetscore.ingest.compact import Compactor
    from fleetscore.ingest.parse import ParsedBody
    from fleetscore.ingest.service import IdempotencyConflict, IngestService, body_digest

    home, settings = tmp_path / "home", IngestSettings()
    batch = readings(recent_us(), 20)

    def send(digest: str) -> tuple[dict, bool]:
        service = IngestService(home, settings, "http")
        try:
            return asyncio.run(service.submit_async(ParsedBody(batch), "k-1", digest))
        finally:
            service.close()

    first, second = body_digest(b"one", "json"), body_digest(b"two", "json")
    assert send(first)[1] is False
    with pytest.raises(IdempotencyConflict, match="different body"):
        send(second)  # the key is rebuilt from the log not yet compacted
    fleet = Fleet.open(home)
    try:
        Compactor(home, fleet.storage, settings).run()
    finally:
        fleet.close()
    with pytest.raises(IdempotencyConflict, match="different body"):
        send(second)  # ... and from the compaction's key file
    assert send(first)[1] is True


def test_health_answers_while_a_body_parses(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import uvicorn

    from fleetscore.api import Fleet
    from fleetscore.web import ingest as ingest_http
    from fleetscore.web.app import create_app

    parsing, answered, during = threading.Event(), threading.Event(), []
    real_parse = ingest_http.parse_body

    def heavy_parse(*args: object, **kwargs: object) -> object:
        parsing.set()
        during.append(answered.wait(20))  # released once /healthz answered; after 20 s if it never can
        return real_parse(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_http, "parse_body", heavy_parse)
    home.mkdir()
    (home / "fleetscore.toml").write_text("[server]\ninline_parse_bytes = 0\n")  # every body is heavy here
    fleet = Fleet.open(home)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(fleet), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, what="uvicorn to start")
    url, replies = f"http://127.0.0.1:{port}", []
    body = arrow_body(readings(recent_us(), 50))
    poster = threading.Thread(target=lambda: replies.append(httpx.post(
        f"{url}/v1/readings", content=body, headers=ARROW, timeout=60)))
    try:
        poster.start()
        assert parsing.wait(30)
        health = httpx.get(f"{url}/healthz", timeout=60)
        answered.set()
        poster.join(60)
    finally:
        srv.should_exit = True
        thread.join(30)
        fleet.close()
    assert health.status_code == 200
    assert during == [True]  # /healthz answered while the body was still being parsed
    assert replies[0].status_code == 202


def test_openapi_documents_the_ingest_route(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    op = spec["paths"]["/v1/readings"]["post"]
    assert set(op["requestBody"]["content"]) >= {"application/json", "text/csv", ARROW["Content-Type"]}
    assert {"202", "400", "401", "413", "415"} <= set(op["responses"])


def test_serve_refuses_a_public_address_without_a_token(cli, home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("FLEETSCORE_TOKEN", raising=False)
    r = cli("serve", "--host", "0.0.0.0", "--port", "1", "--json")
    assert r.exit_code == 2 and "FLEETSCORE_TOKEN" in r.json["error"]
