"""The v3 catalog upgrade on SQLite and PostgreSQL: per-model lists move out of run records into the catalog."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import sqlalchemy as sa

from fleetscore.catalog import Catalog
from fleetscore.catalog.sql import metadata
from fleetscore.core.runs import MAX_LISTED, ModelFailure, RunRecord, RunStatus, TaskRecord
from fleetscore.core.times import parse_time
from fleetscore.errors import InputError

pytestmark = pytest.mark.backend

T6, T7 = "2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"


def test_upgrading_moves_listed_models_out_of_run_records(catalog_url: str) -> None:
    """A v2 catalog's run listing 30 unhealthy models and 5 keys without a model inline: after the upgrade the
    catalog holds all of them and the record the first 20 beside the totals."""
    sick = [{"device": f"d{i:02d}", "sensor": "s", "rows": 60, "anomalies": 60, "reason": "r"} for i in range(30)]
    unmatched = [{"device": f"u{i}", "sensor": "s", "rows": 1, "reason": "no model"} for i in range(5)]
    run = RunRecord(run_id="00000000000000bb", window_from=parse_time(T6), window_to=parse_time(T7), version="v1",
                    status=RunStatus.SUCCEEDED, extra={"unmatched": unmatched,
                                                       "health": {"unhealthy": sick, "unhealthy_models": 31}})
    engine = sa.create_engine(catalog_url)
    v2 = [t for name, t in metadata.tables.items() if name != "run_lists"]
    with engine.begin() as conn:
        metadata.create_all(conn, tables=v2)
        conn.execute(sa.insert(metadata.tables["meta"]).values(key="schema", value="2"))
        conn.execute(sa.insert(metadata.tables["runs"]).values(**run.as_dict() | {"extra": json.dumps(run.extra)}))
    engine.dispose()

    catalog = Catalog(catalog_url)
    extra = catalog.get_run(run.run_id).extra
    assert extra["health"] == {"unhealthy": sick[:MAX_LISTED], "unhealthy_models": 31}
    assert extra["unmatched"] == unmatched and extra["unmatched_keys"] == 5
    assert catalog.run_list(run.run_id, "unhealthy") == (sick, 30)
    assert catalog.run_list(run.run_id, "unhealthy", 4, 28) == (sick[28:], 30)
    assert catalog.run_list(run.run_id, "unmatched") == (unmatched, 5)
    catalog.close()


def test_task_results_replace_their_lists_and_pages_come_in_code_point_order(catalog_url: str) -> None:
    """What a task saves replaces its earlier attempt's entries; pages of every list are in the order Python sorts
    keys (code points, on PostgreSQL too), with the list's total."""
    catalog = Catalog(catalog_url)
    run_id = "00000000000000cc"
    devices = ["Zeta", "alpha", "Ärger", "beta", "zeta-2", "Alpha", "éclair"]

    def entries(task: int, n: int) -> list[dict[str, object]]:
        return [{"device": devices[i % len(devices)] + f"-{task}", "sensor": f"s{i:02d}", "rows": i} for i in range(n)]

    first = TaskRecord(run_id=run_id, task=0, shard=0, status="failed", attempts=1)
    catalog.save_task_result(first, [ModelFailure(d["device"], d["sensor"], "bad", 0) for d in entries(0, 30)],
                             {"unhealthy": entries(0, 30), "unmatched": entries(0, 3)})
    catalog.save_task_result(TaskRecord(run_id=run_id, task=1, shard=1, status="succeeded"), [],
                             {"unhealthy": entries(1, 25), "unmatched": []})
    catalog.save_task_result(replace(first, status="succeeded", attempts=2), [],  # the retry of task 0
                             {"unhealthy": entries(0, 12), "unmatched": entries(0, 2)})
    expected = sorted(entries(0, 12) + entries(1, 25), key=lambda e: (e["device"], e["sensor"]))
    assert catalog.run_list(run_id, "unhealthy") == (expected, 37)
    assert catalog.run_list(run_id, "unhealthy", MAX_LISTED) == (expected[:MAX_LISTED], 37)
    assert catalog.run_list(run_id, "unhealthy", 10, 30) == (expected[30:], 37)
    assert catalog.run_list(run_id, "unmatched")[1] == 2 and catalog.run_list(run_id, "failures") == ([], 0)
    assert [t.attempts for t in catalog.tasks(run_id)] == [2, 0]

    failed = [ModelFailure(d["device"], d["sensor"], "bad", 1) for d in entries(1, 25)]
    catalog.save_task_result(TaskRecord(run_id=run_id, task=1, shard=1, status="failed"), failed, {})
    page, total = catalog.run_list(run_id, "failures", 10, 5)
    assert total == 25 and page == [f.__dict__ for f in sorted(failed, key=lambda f: (f.device, f.sensor))][5:15]
    assert catalog.run_list(run_id, "unhealthy")[1] == 12
    with pytest.raises(InputError, match="lists are"):
        catalog.run_list(run_id, "tasks")
    catalog.close()
