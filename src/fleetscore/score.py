"""Scoring service: one run scores the window [from, to) with one model version, shard by shard.

Each task reads only its shard's key range of the window and its shard file, scores all its models
in one fused kernel call and writes one Parquet file atomically under the run's folder. The run is
committed at the end by pointing the window's ``_COMMITTED.json`` at the run: re-scoring a window
replaces its predictions, and a retried task overwrites its own file, so nothing is duplicated.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import Catalog
from fleetscore.catalog.sql import now_iso
from fleetscore.core import ocsvm
from fleetscore.core.features import build_features, parse_features
from fleetscore.core.plan import key_range_mask
from fleetscore.core.runs import ModelFailure, RunRecord, RunStatus, TaskRecord, run_status
from fleetscore.core.times import iso
from fleetscore.errors import FleetscoreError
from fleetscore.exec.base import Executor, TaskError
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage, open_storage
from fleetscore.storage.models import ModelStore
from fleetscore.storage.readings import ReadingStore

KeyBound = tuple[str, str] | None
#: At most this many unmatched (device, sensor) keys are listed per task (all are counted).
MAX_LISTED_UNMATCHED = 50


@dataclass(frozen=True)
class ScoreTask:
    """One shard to score in one run: everything a worker needs, nothing large."""

    storage_url: str
    run_id: str
    task: int
    shard: int
    version: str
    features: str
    from_us: int
    to_us: int
    lo: KeyBound
    hi: KeyBound


@dataclass(frozen=True)
class ScoreOutcome:
    """What a task reports back: its record, failed models and a sample of keys without a model."""

    record: TaskRecord
    failures: list[ModelFailure] = field(default_factory=list)
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    output: str | None = None


def score_shard(task: ScoreTask) -> ScoreOutcome:
    """Score all models of one shard over the window; write the task's predictions file."""
    t0, c0 = time.perf_counter(), time.process_time()
    storage = open_storage(task.storage_url)
    spec = parse_features(task.features)

    readings = ReadingStore(storage).read_window(
        task.from_us, task.to_us, devices=(task.lo[0] if task.lo else None, task.hi[0] if task.hi else None)
    )
    readings = readings.filter(
        pa.array(key_range_mask(readings.column("device"), readings.column("sensor"), task.lo, task.hi))
    )
    meta, x = build_features(readings, spec)
    t1 = time.perf_counter()

    models = ModelStore(storage)
    manifest = storage.read_parquet(
        layout.manifest_key(task.version),
        columns=["device", "sensor", "slot", "status", "reason"],
        filters=[("shard", "=", task.shard)],
    )
    params = models.read_shard(task.version, task.shard)
    t2 = time.perf_counter()

    joined = _attach_slots(meta, manifest)
    slot = joined.column("slot").to_numpy(zero_copy_only=False)
    x = x[joined.column("_row").to_numpy()]
    has_model = slot >= 0
    unmatched = _unmatched(joined.filter(pa.array(~has_model)))
    scored = joined.filter(pa.array(has_model))
    slots = slot[has_model].astype(np.int64)
    scores = ocsvm.decision_function(params, slots, x[has_model])
    finite = np.isfinite(scores)
    failures: list[ModelFailure] = []
    if not finite.all():
        bad_slots = np.unique(slots[~finite])
        keep = ~np.isin(slots, bad_slots)
        for row in _first_rows(scored, slots, bad_slots):
            failures.append(ModelFailure(row["device"], row["sensor"], "score is not finite (NaN or inf)", task.task))
        scored, slots, scores = scored.filter(pa.array(keep)), slots[keep], scores[keep]
    t3 = time.perf_counter()

    out = _predictions(scored, scores, task).sort_by(
        [("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]
    )
    key = layout.task_predictions_key(task.from_us, task.to_us, task.run_id, task.task)
    storage.write_parquet(key, out)
    t4 = time.perf_counter()

    n_anom = int(pc.sum(out.column("is_anomaly")).as_py() or 0) if out.num_rows else 0
    record = TaskRecord(
        run_id=task.run_id, task=task.task, shard=task.shard, status="failed" if failures and not out.num_rows else "succeeded",
        models=int(len(np.unique(slots))), rows=out.num_rows, anomalies=n_anom,
        unmatched_rows=int((~has_model).sum()), failed_models=len(failures),
        wall_s=t4 - t0, cpu_s=time.process_time() - c0, load_data_s=t1 - t0, load_models_s=t2 - t1,
        score_s=t3 - t2, write_s=t4 - t3, worker=f"{socket.gethostname()}:{os.getpid()}", attempts=1,
    )
    return ScoreOutcome(record, failures, unmatched, key)


def _attach_slots(meta: pa.Table, manifest: pa.Table) -> pa.Table:
    """Meta rows with the model slot (-1 when there is none) and reason; keeps ``_row`` (row in meta)."""
    meta = meta.append_column("_row", pa.array(np.arange(meta.num_rows, dtype=np.int64)))
    joined = meta.join(manifest, keys=["device", "sensor"], join_type="left outer")
    slot = pc.fill_null(joined.column("slot"), -1)
    joined = joined.set_column(joined.schema.get_field_index("slot"), "slot", slot)
    return joined.sort_by("_row")


def _unmatched(rows: pa.Table) -> list[dict[str, Any]]:
    if rows.num_rows == 0:
        return []
    reason = pc.fill_null(rows.column("reason"), "no model for this device and sensor in the version")
    tbl = pa.table({"device": rows.column("device"), "sensor": rows.column("sensor"), "reason": reason})
    grouped = tbl.group_by(["device", "sensor", "reason"]).aggregate([([], "count_all")])
    grouped = grouped.sort_by([("device", "ascending"), ("sensor", "ascending")]).slice(0, MAX_LISTED_UNMATCHED)
    return [
        {"device": d, "sensor": s, "reason": r, "rows": n}
        for d, s, r, n in zip(*(grouped.column(c).to_pylist() for c in ("device", "sensor", "reason", "count_all")))
    ]


def _first_rows(table: pa.Table, slots: np.ndarray, wanted: np.ndarray) -> list[dict[str, Any]]:
    idx = [int(np.flatnonzero(slots == s)[0]) for s in wanted]
    return table.select(["device", "sensor"]).take(pa.array(idx)).to_pylist()


def _predictions(scored: pa.Table, scores: np.ndarray, task: ScoreTask) -> pa.Table:
    n = scored.num_rows
    columns = {
        "ts": scored.column("ts"),
        "device": scored.column("device"),
        "sensor": scored.column("sensor"),
        "value": scored.column("value"),
        "score": pa.array(scores, pa.float64()),
        "is_anomaly": pa.array(ocsvm.predict_is_anomaly(scores), pa.bool_()),
        "model_version": pa.array([task.version] * n, pa.string()).dictionary_encode(),
        "run_id": pa.array([task.run_id] * n, pa.string()).dictionary_encode(),
    }
    for name in ("window_start", "count", "mean", "std", "min", "max"):
        if name in scored.column_names:
            columns[name] = scored.column(name)
    table = pa.table(columns)
    return table.cast(
        pa.schema([f.with_type(pa.string()) if f.name in ("model_version", "run_id") else f for f in table.schema])
    )


def plan_tasks(storage: Storage, storage_url: str, run_id: str, version: str, features: str,
               from_us: int, to_us: int) -> list[ScoreTask]:
    """One task per shard of the version (shards are cost-balanced when the version is trained)."""
    shards = ModelStore(storage).read_shards(version).to_pylist()
    return [
        ScoreTask(
            storage_url, run_id, i, int(s["shard"]), version, features, from_us, to_us,
            None if s["lo_device"] is None else (s["lo_device"], s["lo_sensor"]),
            None if s["hi_device"] is None else (s["hi_device"], s["hi_sensor"]),
        )
        for i, s in enumerate(shards)
    ]


def score(
    *,
    storage_url: str,
    catalog: Catalog,
    executor: Executor,
    from_us: int,
    to_us: int,
    version: str,
    schedule: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunRecord:
    """Score [from, to) with ``version``; returns the finished run record (also in the catalog)."""
    started = time.perf_counter()
    storage = open_storage(storage_url)
    info, _ = ModelStore(storage).read_manifest(version)
    run = RunRecord(
        run_id=uuid.uuid4().hex, window_from=iso(from_us), window_to=iso(to_us), version=version,
        created_at=now_iso(), executor=executor.name, schedule=schedule,
    )
    catalog.save_run(run)
    tasks = plan_tasks(storage, storage_url, run.run_id, version, info.features, from_us, to_us)
    run = run.with_status(RunStatus.RUNNING, started_at=now_iso(), tasks=len(tasks))
    catalog.save_run(run)
    try:
        outcomes = _run_tasks(executor, tasks, on_progress)
        run = _finish(catalog, storage, run, tasks, outcomes, from_us, to_us)
    except BaseException as exc:
        run = run.with_status(RunStatus.FAILED, finished_at=now_iso(), error=f"{type(exc).__name__}: {exc}")
        catalog.save_run(replace(run, elapsed_s=round(time.perf_counter() - started, 3)))
        raise
    run = replace(run, elapsed_s=round(time.perf_counter() - started, 3))
    catalog.save_run(run)
    return run


def _run_tasks(
    executor: Executor, tasks: list[ScoreTask], on_progress: Callable[[int, int], None] | None
) -> list[ScoreOutcome]:
    outcomes: list[ScoreOutcome | None] = [None] * len(tasks)
    for done, (i, result) in enumerate(executor.map(score_shard, tasks), start=1):
        if isinstance(result, TaskError):
            t = tasks[i]
            result = ScoreOutcome(
                TaskRecord(run_id=t.run_id, task=t.task, shard=t.shard, status="failed",
                           attempts=result.attempts, error=result.error)
            )
        outcomes[i] = result
        if on_progress:
            on_progress(done, len(tasks))
    return [o for o in outcomes if o is not None]


def _finish(catalog: Catalog, storage: Storage, run: RunRecord, tasks: list[ScoreTask],
            outcomes: list[ScoreOutcome], from_us: int, to_us: int) -> RunRecord:
    failures: list[ModelFailure] = []
    for t, o in zip(tasks, outcomes):
        failures.extend(o.failures)
        if o.record.status == "failed" and o.record.error:
            failures.extend(_shard_failures(storage, t, o.record.error))
    records = [o.record for o in outcomes]
    catalog.save_tasks(records)
    catalog.replace_failures(run.run_id, [t.task for t in tasks], failures)
    files = [o.output for o in outcomes if o.output]
    failed_tasks = sum(1 for r in records if r.status == "failed")
    scored_models = sum(r.models for r in records)
    status = run_status(scored_models, len(failures), failed_tasks)
    if files or status is not RunStatus.FAILED:
        _commit(catalog, storage, run, files, from_us, to_us)
    unmatched = [u for o in outcomes for u in o.unmatched][:MAX_LISTED_UNMATCHED]
    errors = [f"task {r.task}: {r.error}" for r in records if r.error]
    return run.with_status(
        status, finished_at=now_iso(), models=scored_models,
        rows=sum(r.rows for r in records), anomalies=sum(r.anomalies for r in records),
        unmatched_rows=sum(r.unmatched_rows for r in records), failed_models=len(failures),
        error="; ".join(errors[:5]) or None, extra={"unmatched": unmatched},
    )


def _shard_failures(storage: Storage, task: ScoreTask, error: str) -> list[ModelFailure]:
    """Every model of a failed shard is a failed model, with the task's error as the reason."""
    try:
        manifest = storage.read_parquet(
            layout.manifest_key(task.version), columns=["device", "sensor", "slot"], filters=[("shard", "=", task.shard)]
        )
    except (FleetscoreError, OSError):
        return [ModelFailure("*", "*", error, task.task)]
    manifest = manifest.filter(pc.greater_equal(manifest.column("slot"), 0))
    return [ModelFailure(d, s, error, task.task) for d, s in
            zip(manifest.column("device").to_pylist(), manifest.column("sensor").to_pylist())]


def _commit(catalog: Catalog, storage: Storage, run: RunRecord, files: list[str], from_us: int, to_us: int) -> None:
    """Point the window at this run's files, then remove the window's older runs."""
    pointer = {"run_id": run.run_id, "version": run.version, "files": sorted(files), "committed_at": now_iso()}
    storage.write_bytes(layout.commit_key(from_us, to_us), json.dumps(pointer).encode())
    catalog.commit_window(run.window_from, run.window_to, run.run_id)
    keep = f"run={run.run_id}"
    for name in storage.list_dirs(layout.predictions_dir(from_us, to_us)):
        if name.startswith("run=") and name != keep:
            storage.delete(f"{layout.predictions_dir(from_us, to_us)}/{name}", recursive=True)
