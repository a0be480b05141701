"""The JSON API in-process: each route returns what the Python API says, in the OpenAPI schema; errors are JSON."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
from web_support import HOSTILE_IDS

from fleetscore.core.times import iso
from fleetscore.web.ids import id_segment


def test_runs_match_the_catalog(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/runs").json()
    assert body == {"runs": [r.as_dict() for r in web_fleet.runs()]}
    assert len(client.get("/api/runs?limit=1").json()["runs"]) == 1


def test_run_detail_has_tasks_failures_and_logs(client, web_fleet, scored_home) -> None:  # type: ignore[no-untyped-def]
    run, tasks, failures = web_fleet.run(scored_home.partial_id)
    body = client.get(f"/api/runs/{run.run_id}").json()
    assert body["run"] == run.as_dict()
    assert body["tasks"] == [t.as_dict() for t in tasks]
    assert body["failures"] == [f.__dict__ for f in failures]
    assert body["logs"]["total_lines"] >= len(body["logs"]["lines"]) > 0
    retried = {t.task for t in tasks if t.status != "succeeded" or t.attempts > 1}
    assert retried and {a["task"] for a in body["logs"]["attempts"]} == retried


def test_overview_counts_add_up(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/overview").json()
    runs = web_fleet.runs()
    assert sum(h["anomalies"] for h in body["anomalies_per_hour"]) == body["anomalies"] == sum(r.anomalies for r in runs)
    assert sum(h["rows"] for h in body["anomalies_per_hour"]) == body["rows"] == sum(r.rows for r in runs)
    assert len(body["anomalies_per_hour"]) == body["window"]["hours"] == 48
    assert body["status_counts"] == {"succeeded": 2, "partial": 1}
    assert body["released"] == "v1"
    assert body["window"]["end"] == iso(max(r.window_to for r in runs))


def test_overview_reads_ingest_counters_defensively(make_client) -> None:  # type: ignore[no-untyped-def]
    class Counters:
        def stats(self) -> dict:
            return {"accepted": 10, "rejected": 2, "lag_s": 0.5}

    class Broken:
        def stats(self) -> dict:
            raise RuntimeError("boom")

    client = make_client()
    client.app.state.ingest = Counters()
    assert client.get("/api/overview").json()["ingest"] == {"accepted": 10, "rejected": 2, "lag_s": 0.5,
                                                            "accepted_per_s": None}
    client.app.state.ingest = Broken()
    assert "unavailable" in client.get("/api/overview").json()["ingest"]["error"]
    assert client.get("/", headers={"accept": "text/html"}).status_code == 200
    del client.app.state.ingest
    assert client.get("/api/overview").json()["ingest"] is None


def test_fleet_totals_and_sorting(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    runs = web_fleet.runs()
    body = client.get("/api/fleet?by=sensor&limit=1000").json()
    assert body["total"] == len(body["top"]) == web_fleet.models().num_rows
    assert sum(r["rows"] for r in body["top"]) == sum(r.rows for r in runs)
    assert sum(r["anomalies"] for r in body["top"]) == sum(r.anomalies for r in runs)
    rates = [r["rate"] for r in body["top"]]
    assert rates == sorted(rates, reverse=True)
    by_rows = client.get("/api/fleet?by=device&sort=rows&order=asc").json()["top"]
    assert [r["rows"] for r in by_rows] == sorted(r["rows"] for r in by_rows)
    assert all(r["sensor"] is None for r in by_rows)
    heat = body["heatmap"]
    cells = sum(c for row in heat["counts"] for c in row)
    assert cells == sum(r["rows"] for r in body["top"] if r["device"] in heat["rows"])
    for rates_row, counts_row in zip(heat["rates"], heat["counts"]):
        assert [r is None for r in rates_row] == [c == 0 for c in counts_row]


def test_fleet_device_filter_lists_its_sensors(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/fleet", params={"device": "dev-00003"}).json()
    assert body["by"] == "sensor" and body["device"] == "dev-00003"
    assert {r["sensor"] for r in body["top"]} == set(body["heatmap"]["rows"]) == {"temperature", "vibration"}


@pytest.mark.parametrize("device, sensor", [("dev-00004", "vibration"), *HOSTILE_IDS])
def test_sensor_series_matches_predictions(client, web_fleet, device: str, sensor: str) -> None:  # type: ignore[no-untyped-def]
    runs = web_fleet.runs()
    lo, hi = iso(min(r.window_from for r in runs)), iso(max(r.window_to for r in runs))
    body = client.get(f"/api/devices/{id_segment(device)}/sensors/{id_segment(sensor)}").json()
    preds = web_fleet.predictions(start=lo, end=hi)
    mine = preds.filter(pc.and_(pc.equal(preds.column("device"), device), pc.equal(preds.column("sensor"), sensor)))
    assert body["device"] == device and body["sensor"] == sensor
    assert body["scored"] == mine.num_rows and body["anomalies"] == sum(mine.column("is_anomaly").to_pylist())
    assert body["readings"] == web_fleet.series(device, sensor, body["window"]["start"], body["window"]["end"]).num_rows
    assert body["model"]["device"] == device and body["model"]["version"] == "v1"
    assert body["series"]["ts"] == sorted(body["series"]["ts"])


def test_sensor_series_is_thinned_but_keeps_anomalies(client) -> None:  # type: ignore[no-untyped-def]
    full = client.get("/api/devices/dev-00001/sensors/temperature").json()
    thin = client.get("/api/devices/dev-00001/sensors/temperature?max_points=40").json()
    assert thin["series"]["downsampled"] and not full["series"]["downsampled"]
    assert len(thin["series"]["ts"]) < len(full["series"]["ts"])
    flagged = lambda s: {t for t, a in zip(s["ts"], s["is_anomaly"]) if a}  # noqa: E731
    assert flagged(thin["series"]) == flagged(full["series"]) and flagged(full["series"])
    assert max(v for v in thin["series"]["value"]) == max(v for v in full["series"]["value"])


def test_models_lists_versions(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/models").json()
    assert body["released"] == "v1"
    assert [v["version"] for v in body["versions"]] == [v.version for v in reversed(web_fleet.versions())]
    assert body["release_failures"] == []


@pytest.mark.parametrize("path", [
    "/api/runs/0123456789abcdef", "/api/runs/..%2F..%2Fetc%2Fpasswd", "/api/runs/%00", f"/api/runs/{'f' * 10_000}",
    "/api/devices/%00/sensors/x", "/api/devices/dev-00001/sensors/nope", f"/api/devices/{'x' * 10_000}/sensors/y",
    "/api/devices/..%2F..%2Fcatalog.db/sensors/x", "/api/nothing",
])
def test_unknown_or_hostile_ids_are_404_json(client, path: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get(path, headers={"accept": "text/html"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"detail"} and "Traceback" not in r.text


@pytest.mark.parametrize("query", ["hours=0", "hours=1000", "by=model", "limit=0", "end=not-a-time"])
def test_bad_parameters_are_4xx_json(client, query: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/fleet?{query}")
    assert r.status_code in (400, 422) and "detail" in r.json()


def test_openapi_lists_the_api_and_metrics(client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/runs", "/api/runs/{run_id}", "/api/overview", "/api/fleet",
                 "/api/devices/{device}/sensors/{sensor}", "/api/models", "/metrics"):
        assert path in paths, path
    assert "/" not in paths and "/login" not in paths  # pages are not part of the API
