"""The catalog on SQLite and on PostgreSQL: same behaviour, schema upgrades, and concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleetscore.api import Fleet
from fleetscore.catalog import Catalog
from fleetscore.catalog.sql import SCHEMA_VERSION, metadata, tasks_table
from fleetscore.core.runs import ModelFailure, RunRecord, RunStatus, TaskRecord
from fleetscore.core.simulate import simulate_fleet
from fleetscore.core.times import parse_time
from fleetscore.errors import StorageError

pytestmark = pytest.mark.backend

#: The tables of schema version 1, and the columns the upgrade to version 2 adds.
V1_TABLES = ("meta", "model_versions", "runs", "tasks", "model_failures", "window_commits")
V2_COLUMNS = {"tasks": "node"}


def run_record(run_id: str, window_from: str = "2026-01-01T00:00:00Z") -> RunRecord:
    return RunRecord(run_id=run_id, window_from=parse_time(window_from), window_to=parse_time("2026-01-01T01:00:00Z"),
                     version="v1", created_at=parse_time("2026-01-01T01:00:00.000000Z"), executor="ray")


def test_catalog_records_round_trip(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    assert [catalog.new_version("ocsvm", "raw", {"nu": 0.1}, 0, 3_600_000_000) for _ in range(3)] == ["v1", "v2", "v3"]
    catalog.finish_version("v2", "ready", 5, 1, 2, 0.5)
    catalog.release("v2")
    catalog.release("v2")  # releasing again replaces the row, never duplicates it
    assert catalog.released() == "v2" and catalog.get_version("v2").released and catalog.get_version("v2").models == 5

    run = run_record("0123456789abcdef")
    catalog.save_run(run)
    catalog.save_run(run.with_status(RunStatus.SUCCEEDED, rows=7, extra={"unmatched": [{"device": "d"}]}))
    saved = catalog.get_run(run.run_id)
    assert saved.status is RunStatus.SUCCEEDED and saved.rows == 7 and saved.extra == {"unmatched": [{"device": "d"}]}
    assert [r.run_id for r in catalog.runs()] == [run.run_id]

    first = TaskRecord(run_id=run.run_id, task=0, shard=0, status="failed", worker="h:1", node="10.0.0.5/abc", attempts=1)
    catalog.save_tasks([first, TaskRecord(run_id=run.run_id, task=1, shard=1)])
    catalog.save_tasks([TaskRecord(run_id=run.run_id, task=0, shard=0, status="succeeded", rows=3, worker="h:2",
                                   node="10.0.0.6/def", attempts=2)])
    tasks = catalog.tasks(run.run_id)
    assert [(t.task, t.status, t.node, t.attempts) for t in tasks] == [(0, "succeeded", "10.0.0.6/def", 2), (1, "queued", "", 0)]

    catalog.replace_failures(run.run_id, [0], [ModelFailure("d1", "s1", "bad", 0)])
    catalog.replace_failures(run.run_id, [0], [ModelFailure("d2", "s1", "worse", 0)])
    assert catalog.failures(run.run_id) == [ModelFailure("d2", "s1", "worse", 0)]
    lo, hi = run.window_from, run.window_to
    catalog.commit_window(lo, hi, run.run_id)
    catalog.commit_window(lo, hi, "fedcba9876543210")
    assert catalog.committed_runs() == {(lo, hi): "fedcba9876543210"}
    catalog.close()


def at_once(threads: int, fn: Callable[[], object]) -> list[BaseException]:
    """Run ``fn`` in ``threads`` threads at the same time (each with its own connections); their errors."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return errors


def create_v1_catalog(url: str) -> None:
    """The schema as fleetscore 0.1 created it (no tasks.node), with one run and one task in it."""
    v1 = sa.MetaData()
    for name in V1_TABLES:
        table = metadata.tables[name]
        sa.Table(name, v1, *[c._copy() for c in table.columns if c.name != V2_COLUMNS.get(name)])
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        v1.create_all(conn)
        conn.execute(sa.insert(v1.tables["meta"]).values(key="schema", value="1"))
        run = run_record("00000000000000aa").as_dict()
        conn.execute(sa.insert(v1.tables["runs"]).values(**run | {"extra": "{}"}))
        task = TaskRecord(run_id=run["run_id"], task=0, shard=0, status="succeeded", rows=9, worker="h:1").as_dict()
        del task["node"]
        conn.execute(sa.insert(v1.tables["tasks"]).values(**task))
    engine.dispose()


def schema_of(url: str) -> tuple[str, dict[str, set[str]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema'")).scalar()
        inspector = sa.inspect(conn)
        columns = {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}
    engine.dispose()
    return version, columns


def test_opening_a_v1_catalog_upgrades_it_and_keeps_its_rows(catalog_url: str) -> None:
    create_v1_catalog(catalog_url)
    version, columns = schema_of(catalog_url)
    assert version == "1" and "node" not in columns["tasks"]

    # several processes may open an old catalog at once: the upgrade runs once, the others wait for it
    assert at_once(4, lambda: Catalog(catalog_url).close()) == []

    version, columns = schema_of(catalog_url)
    assert version == str(SCHEMA_VERSION)
    assert set(metadata.tables) <= set(columns)  # tables added since v1 exist too
    assert {c.name for c in tasks_table.columns} == columns["tasks"]
    catalog = Catalog(catalog_url)
    [old] = catalog.tasks("00000000000000aa")
    assert (old.rows, old.worker, old.node) == (9, "h:1", "")
    catalog.save_tasks([TaskRecord(run_id="00000000000000aa", task=1, shard=1, node="n2")])
    assert [t.node for t in catalog.tasks("00000000000000aa")] == ["", "n2"]
    catalog.close()


def test_a_catalog_from_a_newer_fleetscore_is_refused(catalog_url: str) -> None:
    Catalog(catalog_url).close()
    engine = sa.create_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta SET value = :v WHERE key = 'schema'"), {"v": str(SCHEMA_VERSION + 1)})
    engine.dispose()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade fleetscore"):
        Catalog(catalog_url)


def test_version_ids_are_unique_when_allocated_concurrently(catalog_url: str) -> None:
    Catalog(catalog_url).close()
    allocated: list[str] = []

    def train_some() -> None:
        catalog = Catalog(catalog_url)
        try:
            allocated.extend(catalog.new_version("ocsvm", "raw", {}, None, None) for _ in range(3))
        finally:
            catalog.close()

    assert at_once(8, train_some) == []
    assert sorted(allocated, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 25)]


def test_two_scoring_runs_of_different_windows_at_once(catalog_url: str, tmp_path: Path) -> None:
    """Two CLI processes score two windows at the same time against one catalog (and one storage)."""
    home = tmp_path / "home"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    fleet = Fleet.open(home, catalog_url=catalog_url, executor="local", workers=1, shard_models=2)
    fleet.import_table(simulate_fleet(4, 2, start, 4, 60.0, 0.02, 11).select(["ts", "device", "sensor", "value"]))
    assert fleet.train("2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z").models == 8
    fleet.close()

    env = os.environ | {"FLEETSCORE_HOME": str(home), "FLEETSCORE_CATALOG_URL": catalog_url}
    code = "from fleetscore.cli.main import main; main()"
    windows = [("2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z"), ("2026-01-01T03:00:00Z", "2026-01-01T04:00:00Z")]
    procs = [subprocess.Popen([sys.executable, "-c", code, "score", "--from", a, "--to", b, "--workers", "2", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a, b in windows]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    runs = [json.loads(out) for out, _ in results]
    assert all(r["status"] == "succeeded" and r["rows"] == 8 * 60 for r in runs)

    fleet = Fleet.open(home, catalog_url=catalog_url)
    assert {r.run_id for r in fleet.runs()} == {r["run_id"] for r in runs}
    for r in runs:
        record, tasks, _ = fleet.run(r["run_id"])
        assert record.status is RunStatus.SUCCEEDED and len(tasks) == record.tasks
        assert sum(t.rows for t in tasks) == record.rows
    assert set(fleet.catalog.committed_runs().values()) == {r["run_id"] for r in runs}
    assert fleet.predictions(start=windows[0][0], end=windows[1][1]).num_rows == 2 * 8 * 60
    fleet.close()


def test_catalog_status_and_upgrade_commands(catalog_url: str, home: Path, cli,  # type: ignore[no-untyped-def]
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSCORE_CATALOG_URL", catalog_url)
    create_v1_catalog(catalog_url)
    before = cli("catalog", "status", "--json").json
    assert (before["schema_version"], before["up_to_date"]) == (1, False)
    assert before["supported_schema_version"] == SCHEMA_VERSION and before["database"] in catalog_url
    assert schema_of(catalog_url)[0] == "1"  # status changes nothing
    r = cli("catalog", "upgrade", "--json")
    assert r.exit_code == 0, r.stderr
    assert (r.json["upgraded_from"], r.json["schema_version"], r.json["up_to_date"]) == (1, SCHEMA_VERSION, True)
    assert cli("catalog", "status", "--json").json["up_to_date"] is True
