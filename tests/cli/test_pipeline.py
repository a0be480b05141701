"""The CLI contract end to end: simulate → import → train → score → predictions → runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

T0, T6, T7, T8 = "2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z", "2026-01-01T08:00:00Z"


@pytest.fixture
def trained(cli, home, fleet_csv):  # type: ignore[no-untyped-def]
    r = cli("import", fleet_csv, "--json")
    assert r.exit_code == 0, r.stderr
    r = cli("train", "--from", T0, "--to", T6, "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    return r.json


def test_simulate_writes_columns_in_contract_order(cli, home, tmp_path: Path) -> None:
    out = tmp_path / "sim.csv"
    r = cli("simulate", "--devices", "3", "--sensors", "2", "--start", T0, "--hours", "2", "--seed", "5", "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json["rows"] == 3 * 2 * 120
    with open(out) as fh:
        header = next(csv.reader(fh))
    assert header == ["ts", "device", "sensor", "value", "label", "anomaly_kind"]
    pq_out = tmp_path / "sim.parquet"
    assert cli("simulate", "--devices", "3", "--sensors", "2", "--hours", "2", "--seed", "5", "--out", pq_out).exit_code == 0
    assert pq.read_table(pq_out).column_names == header


def test_import_counts_and_dedups(cli, home, fleet_csv, small_fleet) -> None:  # type: ignore[no-untyped-def]
    first = cli("import", fleet_csv, "--json").json
    assert first == {"accepted": small_fleet.num_rows, "rejected": 0, "duplicates": 0, "quarantine": {}}
    again = cli("import", fleet_csv, "--json").json
    assert again["accepted"] == 0 and again["duplicates"] == small_fleet.num_rows


def test_train_score_predictions_roundtrip(cli, home, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert trained["models"] == 18 and trained["failed"] == 0 and trained["version"] == "v1"
    assert set(trained) >= {"version", "models", "failed", "elapsed_s"}
    r = cli("score", "--from", T6, "--to", T7, "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    run = r.json
    assert set(run) >= {"run_id", "status", "models", "rows", "anomalies", "elapsed_s"}
    assert run["status"] == "succeeded" and run["rows"] == 18 * 60 and run["models"] == 18
    out = tmp_path / "pred.parquet"
    r = cli("predictions", "--run", run["run_id"], "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    table = pq.read_table(out)
    assert table.column_names == ["ts", "device", "sensor", "value", "score", "is_anomaly", "model_version", "run_id",
                                  "model_kind", "fallback", "severity", "top_sensors", "expected", "lower", "upper",
                                  "reason"]
    assert table.num_rows == run["rows"]
    assert sum(table.column("is_anomaly").to_pylist()) == run["anomalies"]
    assert set(table.column("run_id").to_pylist()) == {run["run_id"]}


def test_rescoring_a_window_replaces_not_duplicates(cli, home, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = cli("score", "--from", T6, "--to", T7, "--workers", "1", "--json").json
    second = cli("score", "--from", T6, "--to", T7, "--workers", "2", "--json").json
    assert first["run_id"] != second["run_id"]
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert cli("predictions", "--from", T6, "--to", T7, "--out", a).exit_code == 0
    table = pq.read_table(a)
    assert table.num_rows == first["rows"] == second["rows"]
    assert set(table.column("run_id").to_pylist()) == {second["run_id"]}
    # the first run's files are gone; asking for them says so
    r = cli("predictions", "--run", first["run_id"], "--out", b, "--json")
    assert r.exit_code == 2 and "now run" in r.json["error"]
    # same predictions apart from the run id
    cli("score", "--from", T6, "--to", T7, "--workers", "1")
    cli("predictions", "--from", T6, "--to", T7, "--out", b)
    t2 = pq.read_table(b)
    assert t2.drop_columns(["run_id"]).equals(table.drop_columns(["run_id"]))


def test_reference_format_is_the_classic_layout(cli, home, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = cli("score", "--from", T6, "--to", T8, "--workers", "1", "--json").json
    out = tmp_path / "ref.csv"
    assert cli("predictions", "--run", run["run_id"], "--format", "reference", "--out", out).exit_code == 0
    with open(out) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["TS", "Device", "Tag", "Val", "Prediction"]
    assert {r[4] for r in rows[1:]} <= {"0", "1"}
    assert sum(int(r[4]) for r in rows[1:]) == run["anomalies"]
    assert rows[1][0].endswith("Z")


def test_runs_list_and_show(cli, home, trained) -> None:  # type: ignore[no-untyped-def]
    run = cli("score", "--from", T6, "--to", T7, "--workers", "1", "--json").json
    runs = cli("runs", "list", "--json").json["runs"]
    assert [r["run_id"] for r in runs] == [run["run_id"]]
    shown = cli("runs", "show", run["run_id"], "--json").json
    assert shown["status"] == "succeeded" and len(shown["tasks"]) >= 1
    task = shown["tasks"][0]
    assert {"wall_s", "load_data_s", "load_models_s", "score_s", "write_s", "worker", "rows"} <= set(task)
    assert sum(t["rows"] for t in shown["tasks"]) == run["rows"]
    human = cli("runs", "show", run["run_id"])
    assert human.exit_code == 0 and run["run_id"] in human.stdout


def test_models_commands(cli, home, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    versions = cli("models", "versions", "--json").json["versions"]
    assert [v["version"] for v in versions] == ["v1"] and versions[0]["released"]
    listed = cli("models", "list", "--json").json
    assert listed["total"] == 18
    shown = cli("models", "show", "dev-00001", "temperature", "--json").json
    assert shown["n_train"] == 360 and shown["status"] == "ok" and shown["version"] == "v1"
    r = cli("train", "--from", T0, "--to", T6, "--workers", "1", "--no-release", "--nu", "0.1", "--json")
    assert r.json["version"] == "v2" and not r.json["released"]
    assert cli("models", "versions", "--json").json["versions"][1]["released"] is False
    assert cli("models", "release", "v2", "--json").exit_code == 0
    assert [v["released"] for v in cli("models", "versions", "--json").json["versions"]] == [False, True]


def test_window_features(cli, home, fleet_csv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("import", fleet_csv)
    r = cli("train", "--from", T0, "--to", T6, "--features", "window:5m", "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    run = cli("score", "--from", T6, "--to", T7, "--workers", "1", "--json").json
    assert run["status"] == "succeeded" and run["rows"] == 18 * 12
    out = tmp_path / "w.parquet"
    cli("predictions", "--run", run["run_id"], "--out", out)
    cols = pq.read_table(out).column_names
    assert cols[:8] == ["ts", "device", "sensor", "value", "score", "is_anomaly", "model_version", "run_id"]
    assert {"window_start", "count", "mean", "std", "min", "max"} <= set(cols)


def test_json_output_is_exactly_one_object(cli, home, trained) -> None:  # type: ignore[no-untyped-def]
    for args in (("runs", "list"), ("models", "versions"), ("models", "list"), ("quarantine", "list")):
        r = cli(*args, "--json")
        assert r.exit_code == 0, r.stderr
        assert isinstance(json.loads(r.stdout), dict)
        assert r.stdout.count("\n") == 1
