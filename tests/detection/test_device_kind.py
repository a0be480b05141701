"""The per-device kind end to end: train, score, predictions, models show / health, --only-unhealthy, auto."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetscore.api import Fleet
from fleetscore.storage.models import ModelStore

T0 = np.datetime64("2026-02-01T00:00:00", "us")
MIN = 60_000_000
TRAIN_H, SCORE_H = 6, 2


def iso(minutes: float) -> str:
    return str(T0 + np.timedelta64(int(minutes * MIN), "us")) + "Z"


def pump(rng: np.random.Generator, n: int, sensors: int = 3) -> np.ndarray:
    """Readings (n, sensors) of sensors that move together: a shared load plus each one's noise."""
    load = np.zeros(n)
    shocks = rng.standard_normal(n)
    for i in range(1, n):  # a stationary AR(1) load, autocorrelated over ~20 readings
        load[i] = 0.95 * load[i - 1] + 0.3 * shocks[i]
    return (3.0 * load[:, None] + rng.standard_normal((n, sensors))) * (1.0 + np.arange(sensors)) + 10 * np.arange(sensors)


def readings(series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """{(device, sensor): (µs offsets from T0, values)} as a readings table."""
    ts = np.concatenate([t for t, _ in series.values()]) + T0.astype(np.int64)
    return pa.table({
        "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array(np.concatenate([[d] * len(t) for (d, _), (t, _) in series.items()]), pa.string()),
        "sensor": pa.array(np.concatenate([[s] * len(t) for (_, s), (t, _) in series.items()]), pa.string()),
        "value": pa.array(np.concatenate([v for _, v in series.values()]), pa.float64()),
    })


def minutes(n: int, offset_s: float = 0.0) -> np.ndarray:
    return (np.arange(n) * MIN + int(offset_s * 1e6)).astype(np.int64)


N = (TRAIN_H + SCORE_H) * 60
FAULT = TRAIN_H * 60 + 30  # 30 minutes into the scored window, for 10 minutes


@pytest.fixture(scope="module")
def series() -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    x = pump(rng, N)
    x[FAULT:FAULT + 10, 1] += 12.0 * 2  # sensor s1 leaves the others: 12 noise sigmas
    for j in range(3):
        out[("pump", f"s{j}")] = (minutes(N), x[:, j])
    # degenerate devices
    y = pump(rng, N)
    const = np.full(N, 5.0)
    const[FAULT:FAULT + 5] = 5.5  # constant in training; any change is far out
    out[("odd", "const")] = (minutes(N), const)
    keep = rng.random(N) > 0.3  # a sensor missing from 30% of the device-times
    out[("odd", "patchy")] = (minutes(N)[keep], y[keep, 0])
    gap = (np.arange(N) < 120) | (np.arange(N) >= 240)  # a 2-hour gap of the whole device in training ...
    gap &= (np.arange(N) < TRAIN_H * 60 + 70) | (np.arange(N) >= TRAIN_H * 60 + 90)  # ... and 20 minutes in scoring
    out[("odd", "gappy")] = (minutes(N)[gap], y[gap, 1])
    out[("solo", "only")] = (minutes(N), rng.standard_normal(N))  # one sensor on a device
    z = pump(rng, N)
    for j, offset in enumerate((0.0, 17.0, 41.0)):  # misaligned clocks within the minute, jittered
        t = minutes(N, offset) + (rng.uniform(-2, 2, N) * 1e6).astype(np.int64)
        out[("skew", f"m{j}")] = (t, z[:, j])
    # a device with a sensor too short for a model, and one whose sensors are all short
    out[("young", "old")] = (minutes(N), rng.standard_normal(N))
    out[("young", "new")] = (minutes(N)[TRAIN_H * 60 - 40:], rng.standard_normal(N - TRAIN_H * 60 + 40))
    out[("baby", "a")] = (minutes(N)[TRAIN_H * 60 - 30:], rng.standard_normal(N - TRAIN_H * 60 + 30))
    return out


@pytest.fixture
def fleet(tmp_path: Path, series) -> Fleet:  # type: ignore[no-untyped-def]
    f = Fleet.open(tmp_path / "home", workers=1)
    f.import_table(readings(series))
    yield f
    f.close()


def by_key(manifest: pa.Table) -> dict[tuple[str, str], dict]:
    return {(r["device"], r["sensor"]): r for r in manifest.to_pylist()}


def test_device_models_train_score_and_name_sensors(fleet: Fleet, series, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trained = fleet.train(iso(0), iso(TRAIN_H * 60), kind="device")
    assert trained.failed == 0
    models = by_key(fleet.models())
    pump_rows = [models[("pump", f"s{j}")] for j in range(3)]
    assert {r["kind"] for r in pump_rows} == {"device"} and len({r["slot"] for r in pump_rows}) == 1
    assert [r["sensor_index"] for r in pump_rows] == [0, 1, 2] and {r["interval_s"] for r in pump_rows} == {60.0}
    for key in [("odd", "const"), ("odd", "patchy"), ("odd", "gappy"), ("solo", "only"), ("skew", "m0"), ("young", "old")]:
        assert models[key]["kind"] == "device" and not models[key]["fallback"], key
    assert models[("young", "new")]["fallback"] and models[("young", "new")]["kind"] == "robust"
    assert "40 row(s) of history" in models[("young", "new")]["reason"]
    assert models[("baby", "a")]["fallback"]
    assert models[("solo", "only")]["sensor_index"] == 0

    run = fleet.score(iso(TRAIN_H * 60), iso(N))
    assert run.status.value == "succeeded" and run.unmatched_rows == 0 and run.failed_models == 0
    preds = fleet.predictions(run_id=run.run_id)
    assert preds.column_names[-7:] == ["fallback", "severity", "top_sensors", "expected", "lower", "upper", "reason"]
    scored = sum(int(np.sum(t >= TRAIN_H * 60 * MIN)) for t, _ in series.values())
    assert preds.num_rows == scored  # one row per (device, sensor, ts), nothing dropped or doubled
    frame = preds.to_pandas()
    frame["tick"] = frame["ts"].astype("int64") // 60_000_000
    device = frame[frame["model_kind"] == "device"]
    per_time = device.groupby(["device", "tick"])
    assert (per_time["score"].nunique() == 1).all() and (per_time["is_anomaly"].nunique() == 1).all()
    assert (per_time["severity"].nunique() == 1).all()
    assert np.isfinite(device["score"]).all() and device["severity"].between(0, 100).all()
    assert ((device["severity"] > 50) == device["is_anomaly"]).all()  # 50 is the calibrated threshold
    assert device["top_sensors"].isna().eq(~device["is_anomaly"]).all()  # named only where flagged
    assert frame[frame["model_kind"] != "device"]["top_sensors"].isna().all()

    fault = device[(device["device"] == "pump") & device["tick"].between(
        (T0.astype(np.int64) // MIN) + FAULT, (T0.astype(np.int64) // MIN) + FAULT + 9)]
    assert fault["is_anomaly"].mean() >= 0.8
    assert all(list(t)[0] == "s1" and len(t) <= 3 for t in fault[fault["is_anomaly"]]["top_sensors"])
    after = device["tick"].between((T0.astype(np.int64) // MIN) + FAULT, (T0.astype(np.int64) // MIN) + FAULT + 10 + 15)
    calm = device[(device["device"] == "pump") & ~after]  # the recent level holds the fault for 15 readings after it
    assert calm["is_anomaly"].mean() < 0.02
    const = device[(device["device"] == "odd") & device["is_anomaly"]]
    assert "const" in {list(t)[0] for t in const["top_sensors"]}

    out = tmp_path / "preds.csv"  # CSV has no lists: top sensors joined by |
    assert cli("predictions", "--run", run.run_id, "--out", out, "--home", fleet.config.home).exit_code == 0
    text = out.read_text()
    assert text.splitlines()[0].endswith('"severity","top_sensors","expected","lower","upper","reason"')
    assert '"s1|' in text

    # misaligned clocks: the three sensors of a minute form one device-time, scored together
    skew = device[device["device"] == "skew"]
    assert skew.groupby("tick")["sensor"].nunique().median() == 3


def test_models_show_and_health_list_a_device_model_once(fleet: Fleet, cli, home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trained = cli("train", "--from", iso(0), "--to", iso(TRAIN_H * 60), "--kind", "device", "--workers", "1",
                  "--home", fleet.config.home, "--json")
    assert trained.exit_code == 0, trained.stderr
    assert fleet.version().kind == "device"
    info = fleet.model("pump", "s2")
    assert info["model_kind"] == "device" and info["sensors"] == ["s0", "s1", "s2"] and info["tick_s"] == 60.0
    shown = cli("models", "show", "pump", "s1", "--home", fleet.config.home, "--json")
    assert shown.exit_code == 0, shown.stderr
    assert shown.json["sensors"] == ["s0", "s1", "s2"]

    # the pump breaks: its s1 moves to a new level for good, and the device model flags nearly everything
    broken = {("pump", f"s{j}"): (minutes(N)[TRAIN_H * 60:] + 2 * SCORE_H * 60 * MIN,
                                  np.random.default_rng(j).standard_normal(SCORE_H * 60) * (1 + j) + 10 * j
                                  + (40.0 if j == 1 else 0.0)) for j in range(3)}
    fleet.import_table(readings(broken))
    lo, hi = TRAIN_H * 60 + 2 * SCORE_H * 60, TRAIN_H * 60 + 3 * SCORE_H * 60
    run = fleet.score(iso(lo), iso(hi))
    report = fleet.health(run.run_id)
    pumps = [u for u in report["unhealthy"] if u["device"] == "pump"]
    assert len(pumps) == 1 and pumps[0]["sensors"] == ["s0", "s1", "s2"] and pumps[0]["kind"] == "device"
    human = cli("models", "health", "--run", run.run_id, "--home", fleet.config.home)
    assert human.exit_code == 0 and all(s in human.stdout for s in ("pump", "s0,", "s1,", "s2"))  # one row, all sensors

    retrained = fleet.train(iso(lo), iso(hi), only_unhealthy=True)
    assert sorted(k["sensor"] for k in retrained.retrained if k["device"] == "pump") == ["s0", "s1", "s2"]
    models = by_key(fleet.models(retrained.version))
    assert all(models[("pump", f"s{j}")]["reason"].startswith("retrained: unhealthy") for j in range(3))
    assert len({models[("pump", f"s{j}")]["slot"] for j in range(3)}) == 1
    assert models[("solo", "only")]["reason"] is None  # other models copied unchanged
    again = fleet.score(iso(lo), iso(hi), version=retrained.version)
    pump_rows = fleet.predictions(run_id=again.run_id)
    pump_rows = pump_rows.filter(pc.equal(pump_rows.column("device"), "pump"))
    assert pc.mean(pump_rows.column("is_anomaly").cast(pa.float64())).as_py() < 0.25


def test_auto_picks_the_device_kind_only_where_sensors_move_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = TRAIN_H * 60
    x = pump(rng, n, 4)
    series = {("pump", f"s{j}"): (minutes(n), x[:, j]) for j in range(4)}
    day = np.sin(2 * np.pi * np.arange(n) / 1440)  # a shared slow cycle is no co-movement of changes
    series |= {("indep", f"s{j}"): (minutes(n), 5 * day + rng.standard_normal(n)) for j in range(4)}
    series |= {("single", "value"): (minutes(n), rng.standard_normal(n))}
    fleet = Fleet.open(tmp_path / "home", workers=1)
    try:
        fleet.import_table(readings(series))
        trained = fleet.train(iso(0), iso(n))
        kinds = {k: r["kind"] for k, r in by_key(fleet.models(trained.version)).items()}
        record = fleet.version(trained.version)
    finally:
        fleet.close()
    assert record.kind == "robust" and record.params["auto_device"] is True
    assert {kinds[("pump", f"s{j}")] for j in range(4)} == {"device"}
    assert {kinds[("indep", f"s{j}")] for j in range(4)} == {"robust"}
    assert kinds[("single", "value")] == "robust"


def test_versions_without_intervals_read_their_fixed_look_back(fleet: Fleet) -> None:
    """A version of format 5 (no interval_s in its manifest) still scores, with its features' fixed look-back."""
    version = fleet.train(iso(0), iso(TRAIN_H * 60), kind="robust", features="context:30m").version
    store = ModelStore(fleet.storage)
    info, manifest = store.read_manifest(version)
    old = manifest.drop_columns(["interval_s", "sensor_index"])
    store.write_manifest(replace(info, format_version=5), old, store.read_shards(version))
    assert store.read_info(version).format_version == 5
    assert pc.all(pc.is_null(store.read_manifest(version)[1].column("interval_s"))).as_py()
    run = fleet.score(iso(TRAIN_H * 60), iso(TRAIN_H * 60 + 60), version=version)
    assert run.status.value == "succeeded" and run.rows > 0
