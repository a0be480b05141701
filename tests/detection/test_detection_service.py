"""Defaults end to end: cold-start fallbacks in the output, `evaluate`, model health and retraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetscore.api import Fleet
from fleetscore.core.kinds import get_kind
from fleetscore.storage.files import write_table
from fleetscore.storage.models import ModelStore

T0, T5, T6, T7 = "2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"


def key(t: pa.Table, device: str, sensor: str) -> pa.Array:
    return pc.and_(pc.equal(t.column("device"), device), pc.equal(t.column("sensor"), sensor))


@pytest.fixture
def fleet(home, small_fleet):  # type: ignore[no-untyped-def]
    """small_fleet with dev-00001/temperature's history cut to its last 40 minutes before T6."""
    f = Fleet.open(home, workers=1)
    readings = small_fleet.select(["ts", "device", "sensor", "value"])
    early = pc.less(readings.column("ts"), pa.scalar(pa.scalar(T6).cast(pa.timestamp("us", tz="UTC")).value - 40 * 60 * 10**6,
                                                       pa.int64()).cast(pa.timestamp("us", tz="UTC")))
    f.import_table(readings.filter(pc.invert(pc.and_(early, key(readings, "dev-00001", "temperature")))))
    yield f
    f.close()


def test_defaults_give_cold_start_keys_a_fallback(fleet) -> None:  # type: ignore[no-untyped-def]
    trained = fleet.train(T0, T6)
    assert trained.models == 18 and trained.failed == 0
    manifest = fleet.models()
    short = manifest.filter(key(manifest, "dev-00001", "temperature")).to_pylist()[0]
    assert short["fallback"] is True and short["kind"] == "robust" and "history" in short["reason"]
    run = fleet.score(T6, T7)
    preds = fleet.predictions(run_id=run.run_id)
    assert preds.column_names[:8] == ["ts", "device", "sensor", "value", "score", "is_anomaly", "model_version", "run_id"]
    assert preds.column_names[8:11] == ["model_kind", "fallback", "severity"]
    severity = preds.column("severity").to_numpy()
    assert np.all((severity >= 0) & (severity <= 100))
    assert np.array_equal(severity > 50, preds.column("is_anomaly").to_numpy(zero_copy_only=False))
    assert run.unmatched_rows == 0 and preds.num_rows == 18 * 60
    mine = preds.filter(key(preds, "dev-00001", "temperature"))
    others = preds.filter(pc.invert(key(preds, "dev-00001", "temperature")))
    assert set(mine.column("fallback").to_pylist()) == {True}
    assert set(others.column("fallback").to_pylist()) == {False}
    assert set(preds.column("model_kind").to_pylist()) == {"robust"}


def test_pinned_hyper_parameters_keep_classic_ocsvm(fleet) -> None:  # type: ignore[no-untyped-def]
    version = fleet.train(T0, T6, nu=0.1, gamma=0.5).version
    record = fleet.version(version)
    assert (record.kind, record.features, record.params["alarm_rate"]) == ("ocsvm", "raw", None)
    manifest = fleet.models(version)
    assert set(manifest.column("kind").to_pylist()) == {"ocsvm"}  # 40 rows of history are enough for classic


def test_evaluate_cli_reports_points_events_and_kinds(cli, fleet, small_fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet.train(T0, T6)
    run = fleet.score(T6, T7)
    labels = tmp_path / "labels.csv"
    write_table(small_fleet, labels)
    r = cli("evaluate", "--run", run.run_id, "--labels", labels, "--json")
    assert r.exit_code == 0, r.stderr
    ev = r.json
    preds = fleet.predictions(run_id=run.run_id)
    ts = small_fleet.column("ts")
    in_run = pc.and_(pc.greater_equal(ts, preds.column("ts")[0]), pc.less_equal(ts, pc.max(preds.column("ts"))))
    truth = small_fleet.filter(pc.and_(in_run, pc.equal(small_fleet.column("label"), 1)))
    assert ev["run_id"] == run.run_id and ev["matched"] == preds.num_rows
    assert ev["true_pos"] + ev["false_neg"] == truth.num_rows
    assert ev["true_pos"] + ev["false_pos"] == run.anomalies
    assert set(ev["by_kind"]) == set(truth.column("anomaly_kind").to_pylist())
    assert sum(k["points"] for k in ev["by_kind"].values()) == truth.num_rows
    assert 0 <= ev["event_recall"] <= 1 and ev["events"] >= len(ev["by_kind"])
    human = cli("evaluate", "--run", run.run_id, "--labels", labels)
    assert human.exit_code == 0 and "event recall" in human.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,device\n2026-01-01T06:00:00Z,dev-00001\n")
    r = cli("evaluate", "--run", run.run_id, "--labels", bad, "--json")
    assert r.exit_code == 2 and "missing column" in r.json["error"]


def test_health_marks_a_broken_model_and_only_it_is_retrained(cli, fleet) -> None:  # type: ignore[no-untyped-def]
    v1 = fleet.train(T0, T5).version
    store = ModelStore(fleet.storage)
    manifest = fleet.models(v1)
    broken = manifest.filter(key(manifest, "dev-00002", "vibration")).to_pylist()[0]
    bundle = store.read_bundle(v1, broken["shard"])
    intercept = bundle["robust"].intercept.copy()
    intercept[broken["slot"]] = -5.0  # every row of this model now scores below 0
    bundle["robust"] = get_kind("robust").with_intercept(bundle["robust"], intercept)
    store.write_bundle(v1, broken["shard"], bundle)

    run = fleet.score(T6, T7)
    listed = run.extra["health"]["unhealthy"]
    assert [(u["device"], u["sensor"]) for u in listed] == [("dev-00002", "vibration")]
    assert listed[0]["rate"] == 1.0 and "nearly everything" in listed[0]["reason"]

    r = cli("models", "health", "--json")
    assert r.exit_code == 0, r.stderr
    assert [(u["device"], u["sensor"], u["run_id"]) for u in r.json["unhealthy"]] == [("dev-00002", "vibration", run.run_id)]

    r = cli("train", "--from", T0, "--to", T6, "--only-unhealthy", "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    out = r.json
    assert out["base_version"] == v1 and out["retrained"] == [{"device": "dev-00002", "sensor": "vibration"}]
    v2 = out["version"]
    old, new = fleet.models(v1), fleet.models(v2)
    assert new.num_rows == old.num_rows
    x = np.array([[0.5, 0.0, 0.0, -3.0]])
    for row in old.to_pylist():
        k = (row["device"], row["sensor"])
        fresh = new.filter(key(new, *k)).to_pylist()[0]
        a = store.read_bundle(v1, row["shard"])["robust"].take([row["slot"]])
        b = store.read_bundle(v2, fresh["shard"])["robust"].take([fresh["slot"]])
        same = all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("center", "weight", "intercept"))
        assert same == (k != ("dev-00002", "vibration")), k
        assert np.isfinite(get_kind("robust").decision_function(b, np.zeros(1, np.int64), x)).all()
    healed = fleet.score(T6, T7, version=v2)
    assert healed.extra["health"]["unhealthy"] == []


def test_only_unhealthy_without_a_run_says_what_to_do(cli, fleet) -> None:  # type: ignore[no-untyped-def]
    fleet.train(T0, T6)
    r = cli("train", "--from", T0, "--to", T6, "--only-unhealthy", "--json")
    assert r.exit_code == 2 and "score first" in r.json["error"]


def test_minute_data_scores_the_same_in_one_span_and_in_windows(fleet) -> None:  # type: ignore[no-untyped-def]
    """The persistence rule compares a reading with the ones before it: those before a window are scored with it."""
    trained = fleet.train(T0, T6)
    span = fleet.predictions(run_id=fleet.score(T6, T7, version=trained.version).run_id)
    parts = [fleet.predictions(run_id=fleet.score(f"2026-01-01T06:{a:02d}:00Z",
                                                  "2026-01-01T07:00:00Z" if b == 60 else f"2026-01-01T06:{b:02d}:00Z",
                                                  version=trained.version).run_id)
             for a, b in ((0, 7), (7, 31), (31, 60))]
    order = [("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]
    split = pa.concat_tables(parts).sort_by(order)
    span = span.sort_by(order)
    assert split.num_rows == span.num_rows == 18 * 60
    for column in ("score", "severity", "is_anomaly"):
        assert split.column(column).equals(span.column(column)), column
