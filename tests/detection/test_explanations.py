"""Explanations end to end: every flagged prediction says why (``reason``) and, where the kind has one, the
expected value and band in the reading's units (``expected``, ``lower``, ``upper``); the sensor page draws it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.api import Fleet

T0 = np.datetime64("2026-03-01T00:00:00", "us")
MIN = 60_000_000
TRAIN_H, SCORE_H = 6, 1
N = (TRAIN_H + SCORE_H) * 60
SPIKE = TRAIN_H * 60 + 20  # 20 minutes into the scored hour
EXISTING = ["ts", "device", "sensor", "value", "score", "is_anomaly", "model_version", "run_id", "model_kind",
            "fallback", "severity", "top_sensors"]
EXPLAINED = ["expected", "lower", "upper", "reason"]


def iso(minutes: float) -> str:
    return str(T0 + np.timedelta64(int(minutes * MIN), "us")) + "Z"


def readings(series: dict[tuple[str, str], np.ndarray]) -> pa.Table:
    """{(device, sensor): one value a minute from T0} as a readings table."""
    ts = np.tile(np.arange(N) * MIN, len(series)) + T0.astype(np.int64)
    return pa.table({
        "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array([d for (d, _) in series for _ in range(N)], pa.string()),
        "sensor": pa.array([s for (_, s) in series for _ in range(N)], pa.string()),
        "value": pa.array(np.concatenate(list(series.values())), pa.float64()),
    })


def scored(tmp_path: Path, series: dict[tuple[str, str], np.ndarray], **train: str) -> tuple[Fleet, pa.Table]:
    fleet = Fleet.open(tmp_path / "home", workers=1)
    fleet.import_table(readings(series))
    assert fleet.train(iso(0), iso(TRAIN_H * 60), **train).failed == 0  # type: ignore[arg-type]
    run = fleet.score(iso(TRAIN_H * 60), iso(N))
    assert run.status.value == "succeeded"
    return fleet, fleet.predictions(run_id=run.run_id)


def rows(preds: pa.Table, device: str, sensor: str) -> list[dict]:
    return [r for r in preds.to_pylist() if r["device"] == device and r["sensor"] == sensor]


def check_unflagged(preds: pa.Table) -> None:
    assert preds.column_names == EXISTING + EXPLAINED
    for r in preds.to_pylist():
        if not r["is_anomaly"]:
            assert r["reason"] is None and r["expected"] is None and r["lower"] is None and r["upper"] is None, r
        else:
            assert r["reason"], r


@pytest.fixture
def level_fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    calm = 40.0 + rng.normal(0, 1.0, N)
    calm[SPIKE] = 90.0  # far above anything in training
    fleet, preds = scored(tmp_path, {("tank", "temp"): calm, ("tank", "other"): 5 + rng.normal(0, 1.0, N)},
                          kind="robust", features="raw")
    yield fleet, preds
    fleet.close()


def test_a_robust_level_flag_gives_the_training_centre_and_the_band_it_left(level_fleet) -> None:  # type: ignore[no-untyped-def]
    _, preds = level_fleet
    check_unflagged(preds)
    spike = [r for r in rows(preds, "tank", "temp") if r["value"] == 90.0][0]
    assert spike["is_anomaly"] and spike["reason"] == "level"
    assert spike["expected"] == pytest.approx(40.0, abs=0.5)
    assert spike["lower"] < spike["expected"] < spike["upper"] < spike["value"]
    assert preds.schema.field("expected").type == pa.float64() and preds.schema.field("reason").type == pa.string()


def test_the_sensor_page_draws_the_band_of_flagged_readings(level_fleet, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from fleetscore.web.app import create_app

    fleet, _ = level_fleet
    monkeypatch.delenv("FLEETSCORE_TOKEN", raising=False)
    with TestClient(create_app(fleet)) as client:
        page = client.get(f"/devices/tank/sensors/temp?hours=2&end={iso(N)}")
        assert page.status_code == 200
        chart = page.text.split('aria-label="readings of temp"', 1)[1].split("</svg>", 1)[0]
        assert '<g class="band"' in chart and "<rect" in chart.split('<g class="band"', 1)[1]
        assert 'data-field="reason">level<' in page.text
        calm = client.get(f"/devices/tank/sensors/other?hours=2&end={iso(N)}")
        assert calm.status_code == 200 and '<g class="band"' not in calm.text  # nothing flagged: no band


def test_a_jump_within_the_level_range_is_explained_by_the_context(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    wave = 100.0 + 30.0 * np.sin(np.arange(N) / 150.0) + rng.normal(0, 0.5, N)  # wide level range, quiet noise
    wave[SPIKE] += 8.0
    fleet, preds = scored(tmp_path, {("mixer", "speed"): wave}, kind="robust", features="context")
    try:
        check_unflagged(preds)
        jump = [r for r in rows(preds, "mixer", "speed") if r["ts"].timestamp() * 1e6 == T0.astype(np.int64) + SPIKE * MIN]
        assert jump and jump[0]["is_anomaly"] and jump[0]["reason"] in ("residual", "residual (daily profile)")
        before = jump[0]["value"] - 8.0  # the reading without its jump would have scored normal: inside the band
        assert jump[0]["lower"] < before < jump[0]["upper"] < jump[0]["value"]
        assert jump[0]["lower"] <= jump[0]["expected"] <= jump[0]["upper"]
        model = fleet.model("mixer", "speed")
        assert model["kind"] == "robust"
    finally:
        fleet.close()


def test_an_ocsvm_flag_has_a_reason_and_no_band(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    calm = 40.0 + rng.normal(0, 1.0, N)
    calm[SPIKE] = 90.0
    fleet, preds = scored(tmp_path, {("tank", "temp"): calm}, kind="ocsvm", features="raw")
    try:
        check_unflagged(preds)
        spike = [r for r in rows(preds, "tank", "temp") if r["value"] == 90.0][0]
        assert spike["is_anomaly"] and spike["reason"] == "level"
        assert spike["expected"] is None and spike["lower"] is None and spike["upper"] is None
    finally:
        fleet.close()


def test_a_device_model_flag_names_its_top_sensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    load = np.zeros(N)
    for i in range(1, N):  # a shared, autocorrelated load the three sensors follow
        load[i] = 0.95 * load[i - 1] + 0.3 * rng.standard_normal()
    x = 3.0 * load[:, None] + rng.standard_normal((N, 3)) + 10 * np.arange(3)
    x[SPIKE:SPIKE + 5, 1] += 24.0  # flow leaves the others
    names = ("pressure", "flow", "temp")
    fleet, preds = scored(tmp_path, {("pump", n): x[:, j] for j, n in enumerate(names)}, kind="device")
    try:
        check_unflagged(preds)
        fault = [r for r in preds.to_pylist() if r["is_anomaly"] and r["model_kind"] == "device"
                 and SPIKE <= (r["ts"].timestamp() * 1e6 - T0.astype(np.int64)) // MIN < SPIKE + 5]
        assert fault and all(r["reason"].startswith("device model: flow") for r in fault)
        assert all(r["reason"] == "device model: " + ", ".join(r["top_sensors"]) for r in fault)
        assert all(r["expected"] is None and r["upper"] is None for r in fault)
    finally:
        fleet.close()


def test_the_band_is_valid_svg_behind_the_line() -> None:
    from xml.etree import ElementTree

    from fleetscore.web import charts

    ts = (np.arange(8) * MIN + T0.astype(np.int64)).astype(np.int64)
    values = np.array([1.0, 2.0, 9.0, 9.5, 2.0, 1.0, 8.0, 1.0])
    nan = np.nan
    lower = np.array([nan, nan, 0.5, 0.6, nan, nan, 0.4, nan])  # a run of two flagged readings, then a lone one
    upper = np.array([nan, nan, 3.0, 3.1, nan, nan, 2.9, nan])
    svg = str(charts.timeline(ts, values, values > 5, label='<b>"x"</b>', band=(lower, upper)))
    root = ElementTree.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    band = root.find(f"{ns}g[@class='band']")
    assert band is not None and len(band.findall(f"{ns}polygon")) == 1 and len(band.findall(f"{ns}rect")) == 1
    assert svg.index('class="band"') < svg.index("<polyline")  # drawn first: behind the readings
    assert root.get("aria-label") == '<b>"x"</b>'  # escaped into the attribute, read back intact
    none = str(charts.timeline(ts, values, values > 5, label="x", band=(np.full(8, nan), np.full(8, nan))))
    assert 'class="band"' not in none
