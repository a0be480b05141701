"""Bounded output: run records, ``score`` and ``runs show`` list at most 20 entries of each per-model list beside
its total; ``runs show --all``, ``models health --run`` and the API's pages give every entry, and retries count right."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from fleetscore.api import Fleet
from fleetscore.core.kinds import get_kind
from fleetscore.core.runs import MAX_LISTED
from fleetscore.core.simulate import simulate_fleet
from fleetscore.core.times import parse_time
from fleetscore.storage.models import ModelStore
from fleetscore.web.app import create_app

START = datetime(2026, 1, 1, tzinfo=UTC)

T0, T5, T6, T7 = "2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"
DEVICES, SENSORS, NEW_KEYS = 45, 2, 25


def keys(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["device"], e["sensor"]) for e in entries]


@pytest.fixture
def broken(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """90 robust models in 3 shards, every one flagging all its rows (unhealthy), and 25 keys without a model in
    the scored hour; then shard 1's file is corrupted (its models fail)."""
    monkeypatch.setenv("FLEETSCORE_SHARD_MODELS", "30")
    monkeypatch.setenv("COLUMNS", "250")
    fleet = Fleet.open(home, workers=1)
    readings = simulate_fleet(DEVICES, SENSORS, START, 7, 60.0, 0.0, 5).select(["ts", "device", "sensor", "value"])
    fleet.import_table(readings)
    version = fleet.train(T0, T5, kind="robust").version
    new = pa.table({"ts": pa.array([parse_time(T6)] * NEW_KEYS, pa.timestamp("us", tz="UTC")),
                    "device": [f"zz-new-{i:03d}" for i in range(NEW_KEYS)], "sensor": ["temperature"] * NEW_KEYS,
                    "value": [1.0] * NEW_KEYS})
    fleet.import_table(new)
    store, manifest = ModelStore(fleet.storage), fleet.models(version)
    by_shard: dict[int, list[tuple[str, str]]] = {}
    for row in manifest.to_pylist():
        by_shard.setdefault(row["shard"], []).append((row["device"], row["sensor"]))
    assert sorted(by_shard) == [0, 1, 2] and all(len(v) > MAX_LISTED for v in by_shard.values())
    for shard in by_shard:
        bundle = store.read_bundle(version, shard)
        params = bundle["robust"]  # every row scores below 0: flagged
        bundle["robust"] = get_kind("robust").with_intercept(params, np.full(params.intercept.shape, -5.0))
        store.write_bundle(version, shard, bundle)
    shard_file = home / "data" / "models" / version / "shard-00001.npz"
    good = shard_file.read_bytes()
    shard_file.write_bytes(b"not a model")
    yield {"fleet": fleet, "by_shard": by_shard, "repair": lambda: shard_file.write_bytes(good),
           "models": sorted(k for v in by_shard.values() for k in v)}
    fleet.close()


def test_lists_are_bounded_with_totals_and_given_in_full_elsewhere(cli, broken) -> None:  # type: ignore[no-untyped-def]
    by_shard, fleet = broken["by_shard"], broken["fleet"]
    r = cli("score", "--from", T6, "--to", T7, "--json")
    assert r.exit_code == 3, r.stderr  # partial
    run = r.json
    run_id = run["run_id"]
    sick, failed = sorted(by_shard[0] + by_shard[2]), sorted(by_shard[1])
    health, extra = run["extra"]["health"], run["extra"]
    assert health["unhealthy_models"] == len(sick) and keys(health["unhealthy"]) == sick[:MAX_LISTED]
    assert run["failed_models"] == len(failed) and keys(run["failures"]) == failed[:MAX_LISTED]
    assert 0 < extra["unmatched_keys"] and len(extra["unmatched"]) == min(MAX_LISTED, extra["unmatched_keys"])
    assert "nearly everything" in health["unhealthy"][0]["reason"]
    assert run["full_lists"]["unhealthy"].startswith(f"fleetscore models health --run {run_id}")
    assert f"/api/runs/{run_id}/failures?limit=&offset=" in run["full_lists"]["failures"]
    stored = fleet.catalog.get_run(run_id)  # the record in the catalog is bounded too
    assert stored.extra["health"] == health and len(json.dumps(stored.extra)) < 20_000

    shown = cli("runs", "show", run_id, "--json").json
    assert keys(shown["failures"]) == failed[:MAX_LISTED] and shown["extra"]["health"] == health
    full = cli("runs", "show", run_id, "--all", "--json").json
    # a failed shard is one task record with its model count and a sample of its models, not a row per model
    assert keys(full["failures"]) == failed[:MAX_LISTED] and keys(full["extra"]["health"]["unhealthy"]) == sick
    assert [t["failed_models"] for t in full["tasks"] if t["status"] == "failed"] == [len(failed)]
    listed = cli("models", "list", "--version", run["version"], "--shard", "1", "--json").json
    assert sorted(keys(listed["models"])) == failed and listed["total"] == len(failed)
    assert "has shards 0 to 2; got --shard 3" in cli("models", "list", "--shard", "3", "--json").json["error"]
    assert len(full["extra"]["unmatched"]) == full["extra"]["unmatched_keys"] == extra["unmatched_keys"]
    human = cli("runs", "show", run_id).stdout
    assert f"unhealthy models: {MAX_LISTED} of {len(sick)}" in human and f"failed models: {MAX_LISTED} of {MAX_LISTED}" in human
    assert f"fleetscore models health --run {run_id}" in human
    assert f"all {len(failed)} models of shard 1 failed" in human and "--shard 1" in human

    report = cli("models", "health", "--run", run_id, "--json").json
    assert keys(report["unhealthy"]) == sick and report["unhealthy_models"] == len(sick)
    page = cli("models", "health", "--run", run_id, "--limit", "7", "--offset", "30", "--json").json
    assert keys(page["unhealthy"]) == sick[30:37] and page["unhealthy_models"] == len(sick)
    assert f"{len(sick)} unhealthy model(s) in 1 run(s), 7 listed" in cli("models", "health", "--run", run_id,
                                                                         "--limit", "7").stdout

    with TestClient(create_app(fleet)) as client:
        lists = (("unhealthy", sick), ("failures", failed[:MAX_LISTED]), ("unmatched", keys(full["extra"]["unmatched"])))
        for name, expected in lists:
            pages, offset = [], 0
            while True:
                body = client.get(f"/api/runs/{run_id}/{name}", params={"limit": 13, "offset": offset}).json()
                assert body["total"] == len(expected) and body["offset"] == offset, body
                pages += body["items"]
                offset += 13
                if offset >= body["total"]:
                    break
            assert keys(pages) == expected, name
        assert client.get(f"/api/runs/{run_id}/unhealthy?limit=0").status_code == 422
        assert client.get("/api/runs/00000000000000ff/failures").status_code == 404
        assert client.get("/api/runs/not-a-run/failures").status_code == 404

    # a retry re-runs the task of shard 1 (repaired) and one that succeeded but had a failed model: each model
    # is counted once, whatever ran before
    broken["repair"]()
    task0 = next(t for t in fleet.catalog.tasks(run_id) if t.shard == 0)
    fleet.catalog.save_tasks([replace(task0, failed_models=1)])
    retried = cli("runs", "retry", run_id, "--json")
    assert retried.exit_code == 0 and sorted(retried.json["retried_tasks"]) == sorted([task0.task, 1]), retried.stderr
    after = cli("runs", "show", run_id, "--all", "--json").json
    everyone = broken["models"]
    assert after["extra"]["health"]["unhealthy_models"] == len(everyone) == DEVICES * SENSORS
    assert keys(after["extra"]["health"]["unhealthy"]) == everyone
    assert after["failed_models"] == 0 and after["failures"] == []
    assert after["extra"]["unmatched_keys"] == NEW_KEYS == len(after["extra"]["unmatched"])
    record = fleet.catalog.get_run(run_id).extra
    assert record["unmatched_keys"] == NEW_KEYS and len(record["unmatched"]) == MAX_LISTED
    assert keys(record["health"]["unhealthy"]) == everyone[:MAX_LISTED]
    assert keys(cli("models", "health", "--run", run_id, "--json").json["unhealthy"]) == everyone

    again = cli("score", "--from", T6, "--to", T7)  # the human output says where each list is in full
    assert again.exit_code == 0
    assert f"{len(everyone)} unhealthy models, all listed by: fleetscore models health --run" in again.stdout
    assert f"{NEW_KEYS} keys without a model, all listed by: fleetscore runs show" in again.stdout
