"""Scoring service: one run scores the window [from, to) with one model version, shard by shard.

Each task reads only its shard's key range of the window (and before it, as many readings as its
models' features need at their learned intervals: `read_history`, `fleetscore.core.history`) and its
shard file, scores all its models in one fused kernel call per kind (device models on their
device-times, every reading getting its device-time's score, severity and top sensors) and writes
one Parquet file atomically under the run's folder. The run is
committed at the end by pointing the window's ``_COMMITTED.json`` at the run: re-scoring a window
replaces its predictions, and a retried task overwrites its own file, so nothing is duplicated.

A task that raises runs again after a backoff (``RunControl.retries``); each task's record is saved
as it finishes, so :func:`resume` can finish a failed or crashed run by re-running only the tasks
that did not succeed. Every run and task writes its log to storage (:mod:`fleetscore.storage.logs`).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import Catalog
from fleetscore.core import ocsvm
from fleetscore.core.devicegrid import score_readings
from fleetscore.core.execution import Execution, choose_execution
from fleetscore.core.explain import HISTORY, Explanation, device_reason, explain_bundle
from fleetscore.core.features import FeatureSpec, build_features, day_phase, parse_features
from fleetscore.core.health import describe, expected_rate, unhealthy_counts
from fleetscore.core.history import first_lookback_s, history_needs, max_lookback_s, short_units, widened
from fleetscore.core.incidents import flags_of
from fleetscore.core.keys import KeyBound, device_bucket
from fleetscore.core.kinds import KINDS, Bundle, history_rows, needs_phase, rows_before, score_and_severity_bundle
from fleetscore.core.matching import match_runs
from fleetscore.core.plan import group_bounds
from fleetscore.core.runs import (
    MAX_LISTED,
    FailureLimit,
    ModelFailure,
    RunRecord,
    RunStatus,
    TaskRecord,
    backoff_delay,
    needs_rerun,
    run_status,
)
from fleetscore.core.times import iso, iso_us
from fleetscore.errors import FleetscoreError, ModelFormatError
from fleetscore.exec.base import Executor, Inline, TaskError
from fleetscore.exec.capture import run_captured
from fleetscore.exec.control import CANCELLED, RunControl, RunStopped
from fleetscore.exec.place import current_place
from fleetscore.services.context import Context
from fleetscore.storage import layout
from fleetscore.storage.fs import HOT_WRITE, Storage, open_storage
from fleetscore.storage.logs import RunLog, worker_name
from fleetscore.storage.models import ModelStore
from fleetscore.storage.readings import ReadingStore


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
    attempt: int = 1
    kernel: str = "auto"  # ocsvm scoring kernel (``[executor] kernel``, or the run's choice: `core.execution`)
    models: int = 0  # planned: the shard's models and training cost (`fleetscore.core.plan.score_cost`)
    cost: float = 0.0


@dataclass(frozen=True)
class ScoreOutcome:
    """What a task reports back: its record, failed models, keys without a model, unhealthy models and its flags."""

    record: TaskRecord
    failures: list[ModelFailure] = field(default_factory=list)
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    output: str | None = None
    unhealthy: list[dict[str, Any]] = field(default_factory=list)  # models flagging most of their rows
    flags: pa.Table | None = None  # the output's flagged rows (`core.incidents.FLAGS`): incidents never re-read them


def score_shard(task: ScoreTask) -> ScoreOutcome:
    """Score all models of one shard over the window; write the task's predictions file."""
    t0, c0 = time.perf_counter(), time.process_time()
    storage = open_storage(task.storage_url, in_task=True)
    spec = parse_features(task.features)

    models = ModelStore(storage)
    manifest = models.read_shard_manifest(task.version, task.shard).select(
        ["device", "sensor", "slot", "status", "reason", "kind", "fallback", "interval_s", "sensor_index"]
    )
    bundle = models.read_bundle(task.version, task.shard)
    t1 = time.perf_counter()

    # only the shard's keys (its buckets, and their row groups holding its devices), sorted by key and time,
    # with as many readings before the window as its models' features need (core.history)
    readings, lookback_us = read_history(ReadingStore(storage), task, spec, manifest, bundle)
    t2 = time.perf_counter()

    slot_of = manifest.column("slot").to_numpy(zero_copy_only=False)
    kinds = pc.dictionary_encode(manifest.column("kind").combine_chunks())
    on_device = _on_device(manifest)
    device_part = None
    if on_device.any() and readings.num_rows:  # readings of device models are scored on device-times
        bounds, run_model = match_runs(readings.column("device"), readings.column("sensor"), manifest)
        row_model = np.repeat(run_model, np.diff(bounds))
        mine = (row_model >= 0) & on_device[np.maximum(row_model, 0)]
        device_part = _score_devices(readings.filter(pa.array(mine)), row_model[mine], manifest, kinds, bundle,
                                     task.from_us)
        readings = readings.filter(pa.array(~mine))

    meta, x = build_features(readings, spec, grouped=True)  # read_history's rows: by key, then time
    built, kept = meta, None  # every built row (explanations read a flagged reading's history) and the ones kept
    # history is read for the features; of it, the rows the models' rules compare the window's first rows
    # with are scored too (`history_rows`), but only the window's own readings (windows overlapping it) are kept
    in_window = np.ones(meta.num_rows, dtype=bool)
    if lookback_us:
        first = task.from_us - (spec.width_s * 1_000_000 - 1 if spec.name == "window" else 0)
        in_window = pc.greater_equal(meta.column("ts"), pa.scalar(first, pa.int64()).cast(meta.column("ts").type)
                                     ).to_numpy(zero_copy_only=False)
        keep = in_window | rows_before(group_bounds(meta.column("device"), meta.column("sensor")), in_window,
                                       history_rows(bundle))
        meta, x, in_window, kept = meta.filter(pa.array(keep)), x[keep], in_window[keep], np.flatnonzero(keep)

    # rows come in key order: match each run of one (device, sensor) to its model, not each row
    bounds, run_model = match_runs(meta.column("device"), meta.column("sensor"), manifest)
    lengths = np.diff(bounds)
    run_slot = np.where(run_model >= 0, slot_of[np.maximum(run_model, 0)], -1) if len(manifest) else run_model
    has_run = run_slot >= 0
    has_model = np.repeat(has_run, lengths)
    if in_window.all():
        unmatched = _unmatched(meta, bounds, run_model, ~has_run, manifest)
    else:
        window = meta.filter(pa.array(in_window))
        w_bounds, w_model = match_runs(window.column("device"), window.column("sensor"), manifest)
        w_slot = np.where(w_model >= 0, slot_of[np.maximum(w_model, 0)], -1) if len(manifest) else w_model
        unmatched = _unmatched(window, w_bounds, w_model, w_slot < 0, manifest)
    scored = meta if has_model.all() else meta.filter(pa.array(has_model))
    rows_model = np.repeat(run_model[has_run], lengths[has_run])  # manifest row of every scored row
    kind = pa.DictionaryArray.from_arrays(pa.array(kinds.indices.to_numpy(zero_copy_only=False)[rows_model]),
                                          kinds.dictionary)
    scored = scored.append_column("kind", kind).append_column(
        "fallback", pc.fill_null(manifest.column("fallback"), False).take(pa.array(rows_model)))
    slots = rows_model  # one id per model of the shard, whatever its kind
    score_args = (bundle, kind, slot_of[rows_model].astype(np.int64), x if has_model.all() else x[has_model],
                  day_phase(scored.column("ts")) if needs_phase(bundle) else None)
    scores, severity = score_and_severity_bundle(*score_args, task.kernel)
    flagged = np.flatnonzero(ocsvm.predict_is_anomaly(scores) & in_window[has_model])  # explained: the window's flags
    built_row = np.flatnonzero(has_model) if kept is None else kept[has_model]  # each scored row's built row
    scored = _with_explanation(scored, flagged, _explain(score_args, scored, flagged, spec, built, built_row))
    if not in_window.all():
        keep = in_window[has_model]
        scored, slots, scores, severity = scored.filter(pa.array(keep)), slots[keep], scores[keep], severity[keep]
    top = pa.nulls(scored.num_rows, TOP_SENSORS_TYPE)
    if device_part is not None:
        scored, slots, scores, severity, top = _merge(device_part, (scored, slots, scores, severity, top))
    finite = np.isfinite(scores)
    failures: list[ModelFailure] = []
    if not finite.all():
        bad_slots = np.unique(slots[~finite])
        keep = ~np.isin(slots, bad_slots)
        for row in manifest.select(["device", "sensor"]).take(pa.array(bad_slots)).to_pylist():
            failures.append(ModelFailure(row["device"], row["sensor"], "score is not finite (NaN or inf)", task.task))
        scored, slots, scores, severity = scored.filter(pa.array(keep)), slots[keep], scores[keep], severity[keep]
        top = top.filter(pa.array(keep))
    t3 = time.perf_counter()

    out = _predictions(scored, scores, severity, top, task)  # in key order, as read
    key = layout.task_predictions_key(task.from_us, task.to_us, task.run_id, task.task)
    storage.write_parquet(key, out, **HOT_WRITE)
    t4 = time.perf_counter()

    tally = _tally(slots, out.column("is_anomaly").to_numpy(zero_copy_only=False), manifest)
    unhealthy = _with_sensors(unhealthy_counts(tally), manifest)
    place = current_place()
    record = TaskRecord(
        run_id=task.run_id, task=task.task, shard=task.shard, status="failed" if failures and not out.num_rows else "succeeded",
        models=tally.num_rows, rows=out.num_rows, anomalies=int(pc.sum(tally.column("anomalies")).as_py() or 0),
        unmatched_rows=int((~has_model & in_window).sum()), failed_models=len(failures),
        wall_s=t4 - t0, cpu_s=time.process_time() - c0, load_data_s=t2 - t1, load_models_s=t1 - t0,
        score_s=t3 - t2, write_s=t4 - t3, worker=place.worker, node=place.node,
        attempts=task.attempt + place.attempt - 1,  # the executor's own retries (a dead Ray worker) count too
    )
    return ScoreOutcome(record, failures, unmatched, key, unhealthy, flags_of(out))


#: The ``top_sensors`` column: up to 3 sensor names of a device model's flagged device-time, most contributing first.
TOP_SENSORS_TYPE = pa.list_(pa.string())
#: The explanation columns (`fleetscore.core.explain`), after all others: in the reading's units, and why it was flagged.
EXPLANATION_COLUMNS = ("expected", "lower", "upper", "reason")


def _explain(score_args: tuple[Any, ...], scored: pa.Table, flagged: np.ndarray, spec: FeatureSpec, built: pa.Table,
             built_row: np.ndarray) -> Explanation:
    """Why each of the ``flagged`` rows of a scoring pass (``score_args``, its ``scored`` rows) was flagged; context
    features read each one's history from the ``built`` rows (``built_row``: each scored row's)."""
    if not flagged.size:
        return Explanation.unbounded([])
    bundle, kind, slots, x, phase = score_args
    value = scored.column("value").take(pa.array(flagged)).to_numpy(zero_copy_only=False).astype(np.float64)
    previous = _history(built, built_row[flagged], HISTORY) if spec.name == "context" else None
    return explain_bundle(bundle, kind, slots, x, value, phase, flagged, spec.name, previous)


def _history(built: pa.Table, rows: np.ndarray, depth: int) -> np.ndarray:
    """The ``depth`` readings of the same (device, sensor) before each of ``rows`` of ``built`` (grouped by key, in
    time order), oldest first, NaN before the series starts."""
    back = rows[:, None] - np.arange(depth, 0, -1)
    at, own = pa.array(np.maximum(back, 0).ravel()), pa.array(np.repeat(rows, depth))
    same = np.ones(back.size, dtype=bool)
    for name in ("device", "sensor"):
        column = built.column(name)
        same &= pc.equal(column.take(at), column.take(own)).to_numpy(zero_copy_only=False)
    values = built.column("value").take(at).to_numpy(zero_copy_only=False).astype(np.float64)
    return np.where(same.reshape(back.shape) & (back >= 0), values.reshape(back.shape), np.nan)


def _with_explanation(table: pa.Table, rows: np.ndarray, why: Explanation) -> pa.Table:
    """``table`` with the `EXPLANATION_COLUMNS` of its ``rows`` (``why``); null on every other row."""
    n = table.num_rows
    for name, values in zip(EXPLANATION_COLUMNS, (why.expected, why.lower, why.upper)):
        full = np.full(n, np.nan)
        full[rows] = values
        table = table.append_column(name, pa.array(full, pa.float64(), from_pandas=True) if rows.size
                                    else pa.nulls(n, pa.float64()))
    texts = sorted(set(why.reason))
    indices = np.full(n, -1, dtype=np.int32)
    indices[rows] = np.searchsorted(np.array(texts, dtype=object), np.array(why.reason, dtype=object))
    reason = pa.DictionaryArray.from_arrays(pa.array(indices, mask=indices < 0), pa.array(texts, pa.string()))
    return table.append_column("reason", reason.cast(pa.string()))


def _on_device(manifest: pa.Table) -> np.ndarray:
    """Per manifest row: a model of a per-device kind (scored on device-times)."""
    per_device = [name for name, spec in KINDS.items() if spec.per_device]
    kind = manifest.column("kind")
    slot = manifest.column("slot").to_numpy(zero_copy_only=False)
    device_kind: np.ndarray = pc.fill_null(pc.is_in(kind, pa.array(per_device, pa.string())), False).to_numpy(
        zero_copy_only=False)
    return np.asarray(device_kind & (slot >= 0), dtype=bool)


def read_history(store: ReadingStore, task: ScoreTask, spec: FeatureSpec, manifest: pa.Table,
                 bundle: Bundle) -> tuple[pa.Table, int]:
    """The shard's readings of the window and, before it, what its models' features need (`fleetscore.core.history`).

    First reads back enough for every model at its learned interval; then, while a model with readings
    in the window lacks history, reads twice as far back for the key range of just those models, up to
    the features' maximum look-back. Returns the readings (sorted by key and time) and the look-back read (µs).
    """
    kinds_ = manifest.column("kind").to_pylist()
    slots = manifest.column("slot").to_numpy(zero_copy_only=False)
    interval = pc.fill_null(manifest.column("interval_s"), np.nan).to_numpy(zero_copy_only=False)
    ticks = bundle["device"].tick_us if "device" in bundle else None
    needs = history_needs(kinds_, slots, interval, spec.name, ticks)
    max_s = max_lookback_s(spec.name, spec.width_s, bool(_on_device(manifest).any()))
    lookback_s = first_lookback_s(needs.need, interval, spec.lookback_s, max_s)
    if spec.name == "window":
        lookback_s = max(lookback_s, float(spec.width_s))  # the window holding the window's start
    lookback_us = int(np.ceil(lookback_s * 1_000_000))
    table = store.read_range(task.from_us - lookback_us, task.to_us, task.lo, task.hi)
    widened_any = False
    max_us = int(max_s * 1_000_000)
    may_widen = bool((needs.known & (needs.need > 0)).any())  # unknown intervals read the fixed look-back only
    while may_widen and lookback_us < max_us and table.num_rows:
        bounds, run_model = match_runs(table.column("device"), table.column("sensor"), manifest)
        run_unit = np.where(run_model >= 0, needs.unit[np.maximum(run_model, 0)], -1)
        ts = pc.cast(table.column("ts"), pa.int64()).to_numpy(zero_copy_only=False)
        short = short_units(needs, run_unit, bounds, ts, task.from_us)
        if not short.size:
            break
        further = int(np.ceil(widened(lookback_us / 1e6, max_s) * 1_000_000))
        lo, hi = _key_range(manifest, needs.unit, short)
        older = store.read_range(task.from_us - further, task.from_us - lookback_us, lo, hi)
        if older.num_rows:
            table = pa.concat_tables([older, table.select(older.column_names)])
            widened_any = True
        lookback_us = further
    if widened_any:
        table = table.sort_by([("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])
    return table, lookback_us


def _key_range(manifest: pa.Table, unit: np.ndarray, short: np.ndarray) -> tuple[KeyBound, KeyBound]:
    """The smallest key range [lo, hi) in key order (bucket, device, sensor) holding the keys of ``short`` units."""
    rows = np.flatnonzero(np.isin(unit, short))
    keys = sorted((device_bucket(d), d, s) for d, s in zip(manifest.column("device").take(pa.array(rows)).to_pylist(),
                                                             manifest.column("sensor").take(pa.array(rows)).to_pylist()))
    return (keys[0][1], keys[0][2]), (keys[-1][1], keys[-1][2] + "\x00")


def _score_devices(readings: pa.Table, row_model: np.ndarray, manifest: pa.Table, kinds: pa.DictionaryArray,
                   bundle: Bundle, from_us: int) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Readings of device models scored on their device-times (`fleetscore.core.devicegrid`); those in the window out.

    Returns (rows with ts, device, sensor, value, kind, fallback; manifest row, score, severity, top_sensors) per row.
    """
    params = bundle.get("device")
    if params is None:
        raise ModelFormatError("the manifest names device models that the shard file does not hold")
    slot = manifest.column("slot").to_numpy(zero_copy_only=False).astype(np.int64)
    column = pc.fill_null(manifest.column("sensor_index"), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    ts = pc.cast(readings.column("ts"), pa.int64()).to_numpy(zero_copy_only=False)
    result = score_readings(params, ts, readings.column("value").to_numpy(), slot[row_model], column[row_model], from_us)
    keep = ts >= from_us
    rows_model = row_model[keep]
    top = result.top_sensors[keep]
    # sensor names per (device model, column): the manifest rows of each device model
    width = max(params.max_sensors, 1)
    names = np.full((params.n_models, width), None, dtype=object)
    own = np.flatnonzero(column >= 0)
    names[slot[own], column[own]] = manifest.column("sensor").take(pa.array(own)).to_numpy(zero_copy_only=False)
    valid = top >= 0
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = names[np.repeat(slot[rows_model], counts), top[valid]]
    top_list = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.string()), mask=pa.array(counts == 0))
    kind = pa.DictionaryArray.from_arrays(pa.array(kinds.indices.to_numpy(zero_copy_only=False)[rows_model]),
                                          kinds.dictionary)
    out = readings.select(["ts", "device", "sensor", "value"]).filter(pa.array(keep))
    out = out.append_column("kind", kind).append_column("fallback", pa.array(np.zeros(out.num_rows, dtype=bool)))
    flagged = np.flatnonzero(ocsvm.predict_is_anomaly(result.decision[keep]))
    why = Explanation.unbounded([device_reason(flat[offsets[r]:offsets[r + 1]].tolist()) for r in flagged.tolist()])
    return _with_explanation(out, flagged, why), rows_model, result.decision[keep], result.severity[keep], top_list


def _merge(device_part: tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, pa.Array],
           rest: tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, pa.Array]
           ) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Both parts' rows together, in key order (by device, sensor, time), with their per-row arrays."""
    parts = [p for p in (rest, device_part) if p[0].num_rows]
    if len(parts) <= 1:
        return parts[0] if parts else device_part
    both = pa.concat_tables([p[0] for p in parts], promote_options="default")
    order = pc.sort_indices(both, sort_keys=[("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])
    both = both.take(order)
    idx = order.to_numpy()
    arrays = [np.concatenate([p[j] for p in parts])[idx] for j in (1, 2, 3)]
    top = pa.concat_arrays([p[4] for p in parts]).take(order)
    return both, arrays[0], arrays[1], arrays[2], top


def _tally(slots: np.ndarray, is_anomaly: np.ndarray, manifest: pa.Table) -> pa.Table:
    """Rows and anomalies of each scored model (``slots``: its manifest row, per scored row); a device model
    counts once, under its first sensor's row, with the readings of all its sensors."""
    on_device = _on_device(manifest)
    if on_device.any():
        slots = _model_row(manifest, on_device)[slots]
    rows = np.bincount(slots, minlength=manifest.num_rows)
    flagged = np.bincount(slots, weights=is_anomaly, minlength=manifest.num_rows).astype(np.int64)
    scored = np.flatnonzero(rows)
    return manifest.select(["device", "sensor"]).take(pa.array(scored)).append_column(
        "rows", pa.array(rows[scored])).append_column("anomalies", pa.array(flagged[scored]))


def _model_row(manifest: pa.Table, on_device: np.ndarray) -> np.ndarray:
    """Per manifest row: the row its model is counted under (a device model's first row; else itself)."""
    out = np.arange(manifest.num_rows)
    slot = manifest.column("slot").to_numpy(zero_copy_only=False)
    first: dict[int, int] = {}
    for r in np.flatnonzero(on_device).tolist():
        out[r] = first.setdefault(int(slot[r]), r)
    return out


def _with_sensors(models: list[dict[str, Any]], manifest: pa.Table) -> list[dict[str, Any]]:
    """Unhealthy models with, for a device model, ``kind`` and all its ``sensors`` (it is listed once)."""
    on_device = _on_device(manifest)
    if not models or not on_device.any():
        return models
    rows = _model_row(manifest, on_device)
    devices, sensors = manifest.column("device").to_pylist(), manifest.column("sensor").to_pylist()
    members: dict[tuple[str, str], list[str]] = {}
    for r in np.flatnonzero(on_device).tolist():
        members.setdefault((devices[rows[r]], sensors[rows[r]]), []).append(sensors[r])
    return [m | {"kind": "device", "sensors": members[(m["device"], m["sensor"])]}
            if (m["device"], m["sensor"]) in members else m for m in models]


def _unmatched(meta: pa.Table, bounds: np.ndarray, run_model: np.ndarray, unscored: np.ndarray,
               manifest: pa.Table) -> list[dict[str, Any]]:
    """The keys (in key order) whose rows were not scored, with their row counts and why."""
    if not unscored.any():
        return []
    runs = np.flatnonzero(unscored)
    starts = pa.array(bounds[runs])
    known = run_model[runs] >= 0
    reasons = [None] * len(runs) if not len(manifest) else \
        manifest.column("reason").take(pa.array(np.maximum(run_model[runs], 0))).to_pylist()
    tbl = pa.table({
        "device": meta.column("device").take(starts), "sensor": meta.column("sensor").take(starts),
        "reason": pa.array([r if k and r else "no model for this device and sensor in the version"
                            for r, k in zip(reasons, known)], pa.string()),
        "rows": pa.array(np.diff(bounds)[runs]),
    })
    grouped = tbl.group_by(["device", "sensor", "reason"]).aggregate([("rows", "sum")])
    grouped = grouped.sort_by([("device", "ascending"), ("sensor", "ascending")])
    return [
        {"device": d, "sensor": s, "reason": r, "rows": n}
        for d, s, r, n in zip(*(grouped.column(c).to_pylist() for c in ("device", "sensor", "reason", "rows_sum")))
    ]


def _predictions(scored: pa.Table, scores: np.ndarray, severity: np.ndarray, top: pa.Array, task: ScoreTask) -> pa.Table:
    n = scored.num_rows
    columns = {
        "ts": scored.column("ts"),
        "device": scored.column("device"),
        "sensor": scored.column("sensor"),
        "value": scored.column("value"),
        "score": pa.array(scores, pa.float64()),
        "is_anomaly": pa.array(ocsvm.predict_is_anomaly(scores), pa.bool_()),
        "model_version": _repeat(task.version, n),
        "run_id": _repeat(task.run_id, n),
        "model_kind": scored.column("kind"),
        "fallback": pc.fill_null(scored.column("fallback"), False),
        "severity": pa.array(severity, pa.float64(), from_pandas=True),  # null: a kind without a calibrated tail
        "top_sensors": top,  # device models' flagged rows: up to 3 sensors, most contributing first; else null
    }
    for name in ("window_start", "count", "mean", "std", "min", "max"):
        if name in scored.column_names:
            columns[name] = scored.column(name)
    for name in EXPLANATION_COLUMNS:  # flagged rows: expected value, band (null where none) and reason; else null
        columns[name] = scored.column(name)
    return pa.table(columns)


def _repeat(text: str, n: int) -> pa.Array:
    """``n`` copies of ``text`` as a string array, built without ``n`` Python objects."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([text]))


def plan_tasks(storage: Storage, storage_url: str, run_id: str, version: str, features: str,
               from_us: int, to_us: int, kernel: str = "auto") -> list[ScoreTask]:
    """One task per shard of the version, the costliest first (shards are cost-balanced when trained,
    and a costly shard started last would finish last: largest-first keeps the end of a run short)."""
    shards = ModelStore(storage).read_shards(version).to_pylist()
    tasks = [
        ScoreTask(
            storage_url, run_id, i, int(s["shard"]), version, features, from_us, to_us,
            None if s["lo_device"] is None else (s["lo_device"], s["lo_sensor"]),
            None if s["hi_device"] is None else (s["hi_device"], s["hi_sensor"]), kernel=kernel,
            models=int(s["models"] or 0), cost=float(s["cost"] or 0.0),
        )
        for i, s in enumerate(shards)
    ]
    order = sorted(range(len(shards)), key=lambda i: -(shards[i]["cost"] or 0.0))
    return [tasks[i] for i in order]


def _choose_execution(ctx: Context, executor: Executor, run: RunRecord, todo: list[ScoreTask]) -> Execution:
    """In-process or on the executor's workers, by the planned work of ``todo`` (`fleetscore.core.execution`):
    models, and kernel evaluations scaled from the training window's to the run's."""
    version = ctx.catalog.get_version(run.version)
    span = (version.train_to or 0) - (version.train_from or 0)
    per_window = (run.window_to - run.window_from) / span if span > 0 else 1.0
    return choose_execution(sum(t.models for t in todo), sum(t.cost for t in todo) * per_window, executor.workers,
                            features=version.features, kernel=ctx.config.executor.kernel,
                            in_process=ctx.config.executor.in_process, can_inline=executor.can_inline,
                            pool_warm=executor.warm,
                            numba_available=importlib.util.find_spec("numba") is not None,
                            numba_loaded=ocsvm.numba_kernel_loaded())


def score(ctx: Context, executor: Executor, from_us: int, to_us: int, version: str, *, run_id: str,
          schedule: str | None = None, control: RunControl | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> RunRecord:
    """Score [from, to) with ``version`` as run ``run_id``; returns the finished run record (also in the
    catalog). Called under the window's lease by `fleetscore.services.runs`, the one road into scoring."""
    ModelStore(ctx.storage).read_info(version)  # a missing or unreadable version fails before a run exists
    run = RunRecord(run_id=run_id, window_from=from_us, window_to=to_us, version=version, created_at=ctx.clock(),
                    executor=executor.name, schedule=schedule)
    ctx.catalog.save_run(run)
    return _execute(ctx, executor, run, control or RunControl(), on_progress)


def resume(ctx: Context, executor: Executor, run_id: str, *, control: RunControl | None = None,
           on_progress: Callable[[int, int], None] | None = None) -> RunRecord:
    """Finish an existing run: re-run only its tasks that did not succeed (failed, interrupted or never
    started) into the run's own folder, then commit the window again (``runs retry``, and after a crash)."""
    run = replace(ctx.catalog.get_run(run_id), executor=executor.name)
    return _execute(ctx, executor, run, control or RunControl(), on_progress)


def _execute(ctx: Context, executor: Executor, run: RunRecord, control: RunControl,
             on_progress: Callable[[int, int], None] | None) -> RunRecord:
    """Run the tasks of ``run`` that still need to run, record each one, then sum up and commit."""
    started, before = time.perf_counter(), run.elapsed_s or 0.0
    storage, catalog, storage_url = ctx.storage, ctx.catalog, ctx.storage_url
    from_us, to_us = run.window_from, run.window_to
    log = RunLog(storage, run.run_id, clock=ctx.clock)
    try:
        info = ModelStore(storage).read_info(run.version)
        tasks = plan_tasks(storage, storage_url, run.run_id, run.version, info.features, from_us, to_us,
                           ctx.config.executor.kernel)
        records = {r.task: r for r in catalog.tasks(run.run_id)}
        todo = [replace(t, attempt=records[t.task].attempts + 1 if t.task in records else 1)
                for t in tasks if t.task not in records or needs_rerun(records[t.task])]  # attempts count on
        execution = _choose_execution(ctx, executor, run, todo)
        todo = [replace(t, kernel=execution.kernel) for t in todo]
        catalog.save_tasks([TaskRecord(run_id=run.run_id, task=t.task, shard=t.shard, attempts=t.attempt - 1)
                            for t in todo])
        run = replace(run.with_status(RunStatus.RUNNING, started_at=run.started_at or ctx.clock(), finished_at=None,
                                      tasks=len(tasks), error=None), extra=run.extra | {"execution": execution.as_dict()})
        catalog.save_run(run)
        log.event("run.start", window_from=iso(from_us), window_to=iso(to_us), version=run.version,
                  schedule=run.schedule, executor=executor.name, worker=worker_name(), tasks=len(tasks),
                  to_run=len(todo), retries=control.retries, storage=storage_url, catalog=catalog.url,
                  execution=execution.as_dict())
        if execution.mode == "in-process":
            executor = Inline(executor.name)
        from fleetscore.services import incidents  # built after the commit, from the flags the tasks hand back

        incidents.preload()
        rerun = {t.task for t in todo}
        budget = FailureBudget(control.max_failed, sum(t.models for t in tasks),
                               sum(r.failed_models for task, r in records.items() if task not in rerun))
        flags = _run_tasks(catalog, storage, executor, todo, on_progress, control, log, expected_rate(info.params),
                           budget)
        run = _finish(ctx, run, from_us, to_us, flags, budget.aborted)
    except RunStopped as exc:
        log.event("run.stopped", "warning", reason=exc.reason)
        if exc.reason == CANCELLED:  # a lost lease leaves the record to the process that took the run over
            run = run.with_status(RunStatus.CANCELLED, finished_at=ctx.clock(), error="cancelled",
                                  elapsed_s=round(before + time.perf_counter() - started, 3))
            catalog.save_run(run)
        log.close()
        raise
    except BaseException as exc:
        run = run.with_status(RunStatus.FAILED, finished_at=ctx.clock(), error=f"{type(exc).__name__}: {exc}",
                              elapsed_s=round(before + time.perf_counter() - started, 3))
        catalog.save_run(run)
        log.event("run.end", "error", status=run.status.value, error=run.error)
        log.close()
        raise
    run = replace(run, elapsed_s=round(before + time.perf_counter() - started, 3))
    catalog.save_run(run)
    log.event("run.end", "info" if run.status is RunStatus.SUCCEEDED else "warning", status=run.status.value,
              models=run.models, rows=run.rows, anomalies=run.anomalies, failed_models=run.failed_models,
              elapsed_s=run.elapsed_s, error=run.error)
    log.close()
    return run


@dataclass
class FailureBudget:
    """The failed models a run may still have (``--max-failed-models``): ``failed`` so far of the ``planned``
    models; ``aborted`` says why the run stopped once the limit was passed."""

    limit: FailureLimit | None
    planned: int
    failed: int = 0
    aborted: str | None = None

    def spend(self, failed: int) -> bool:
        """Count a task's ``failed`` models; True when the run must stop."""
        self.failed += failed
        if self.limit is not None and self.aborted is None:
            self.aborted = self.limit.abort_reason(self.failed, self.planned)
        return self.aborted is not None


def _run_tasks(catalog: Catalog, storage: Storage, executor: Executor, tasks: list[ScoreTask],
               on_progress: Callable[[int, int], None] | None, control: RunControl, log: RunLog,
               expected: float | None, budget: FailureBudget) -> dict[str, pa.Table]:
    """Run ``tasks``; those that raise run again after a backoff, up to ``control.retries`` more times.

    Each task's final outcome is recorded as it arrives, with its failed models, unhealthy models (described
    against the ``expected`` alarm rate) and keys without a model, so a crashed run can be resumed and the
    driver holds none of the run's per-model lists however big the fleet. Once the failed models pass the
    ``budget``, no more tasks start (those queued in the executor are cancelled). Returns the flags the tasks
    that succeeded handed back, by predictions file (for incident building).
    """
    done, queue = 0, tasks
    flags: dict[str, pa.Table] = {}
    retried: dict[int, int] = {}  # task -> retries so far in this execution
    while queue:
        again: list[ScoreTask] = []
        for i, result in executor.map(partial(run_captured, score_shard), queue):
            t = queue[i]
            if isinstance(result, TaskError) and retried.get(t.task, 0) < control.retries:
                retried[t.task] = retried.get(t.task, 0) + 1
                again.append(replace(t, attempt=t.attempt + 1))
                log.event("task.failed", "warning", task=t.task, shard=t.shard, attempt=t.attempt, error=result.error)
                catalog.save_tasks([TaskRecord(run_id=t.run_id, task=t.task, shard=t.shard, status="retrying",
                                               attempts=t.attempt, error=result.error)])
            else:
                stop = budget.spend(_record(catalog, storage, t, result, log, expected))
                if isinstance(result, ScoreOutcome) and result.output and result.flags is not None:
                    flags[result.output] = result.flags
                done += 1
                if on_progress:
                    on_progress(done, len(tasks))
                if stop:
                    log.event("run.aborted", "error", reason=budget.aborted, failed_models=budget.failed)
                    return flags
            control.stop.check(t.run_id)
        if again:
            retry = max(retried[t.task] for t in again)
            delay = backoff_delay(retry, control.backoff_s)
            log.event("task.retry", tasks=[t.task for t in again], retry=retry, delay_s=delay)
            control.stop.sleep(again[0].run_id, delay)
        queue = again
    return flags


def _record(catalog: Catalog, storage: Storage, task: ScoreTask, result: ScoreOutcome | TaskError,
            log: RunLog, expected: float | None) -> int:
    """Save a task's final outcome (its record and per-model lists, replacing an earlier attempt's) and log it;
    returns its failed models."""
    if isinstance(result, TaskError):
        failed, sample = _shard_failures(storage, task, result.error)
        record = TaskRecord(run_id=task.run_id, task=task.task, shard=task.shard, status="failed",
                            failed_models=failed, attempts=task.attempt + result.attempts - 1, error=result.error)
        # a file left by an earlier attempt is not this run's output for the shard any more
        storage.delete(layout.task_predictions_key(task.from_us, task.to_us, task.run_id, task.task))
        log.event("task.end", "error", **record.as_dict(), traceback=result.traceback)
        catalog.save_task_result(record, sample, {})
        return failed
    log.event("task.end", "info" if result.record.status == "succeeded" else "error", **result.record.as_dict())
    catalog.save_task_result(result.record, result.failures,
                             {"unhealthy": [describe(m, expected) for m in result.unhealthy],
                              "unmatched": result.unmatched})
    return result.record.failed_models


def _finish(ctx: Context, run: RunRecord, from_us: int, to_us: int, flags: dict[str, pa.Table],
            aborted: str | None = None) -> RunRecord:
    """Sum the run up from all its task records and lists (those of earlier attempts too), then commit the window
    and build its incidents from the ``flags`` the tasks handed back (by predictions file). A run ``aborted``
    for too many failed models ends ``failed`` with that reason and commits nothing.

    The record lists the first `MAX_LISTED` unhealthy models and keys without a model beside their totals;
    the catalog keeps every entry (`fleetscore.catalog.Catalog.run_list`).
    """
    storage, catalog = ctx.storage, ctx.catalog
    records = catalog.tasks(run.run_id)
    failed_models = sum(r.failed_models for r in records)
    failed_tasks = sum(1 for r in records if r.status == "failed")
    scored_models = sum(r.models for r in records)
    status = RunStatus.FAILED if aborted else run_status(scored_models, failed_models, failed_tasks)
    files = [] if aborted else storage.list(layout.run_predictions_dir(from_us, to_us, run.run_id))
    summary: dict[str, Any] = {}
    if files or status is not RunStatus.FAILED:
        _commit(ctx, run, files, from_us, to_us)
        from fleetscore.services import incidents  # the committed window's flags into incidents; never fails the run

        summary = {"incidents": incidents.build_summary(ctx, from_us, to_us, run.run_id, flags)}
    unmatched, unmatched_keys = catalog.run_list(run.run_id, "unmatched", MAX_LISTED)
    unhealthy, unhealthy_models = catalog.run_list(run.run_id, "unhealthy", MAX_LISTED)
    errors = ([aborted] if aborted else []) + [f"task {r.task}: {r.error}" for r in records if r.error]
    return run.with_status(
        status, finished_at=ctx.clock(), models=scored_models,
        rows=sum(r.rows for r in records), anomalies=sum(r.anomalies for r in records),
        unmatched_rows=sum(r.unmatched_rows for r in records), failed_models=failed_models,
        error="; ".join(errors[:5]) or None,
        extra=run.extra | {"unmatched": unmatched, "unmatched_keys": unmatched_keys,
                           "health": {"unhealthy": unhealthy, "unhealthy_models": unhealthy_models}} | summary,
    )


def _shard_failures(storage: Storage, task: ScoreTask, error: str) -> tuple[int, list[ModelFailure]]:
    """Every model of a failed shard is a failed model, with the task's error as the reason: their count, and the
    first `MAX_LISTED` of them by key as a sample (the task record holds the count and the error, so a systemic
    failure writes a bounded number of rows however big the fleet; the shard's manifest lists them all)."""
    try:
        manifest = ModelStore(storage).read_shard_manifest(task.version, task.shard).select(["device", "sensor", "slot"])
    except (FleetscoreError, OSError):
        return max(task.models, 1), [ModelFailure("*", "*", error, task.task)]
    manifest = manifest.filter(pc.greater_equal(manifest.column("slot"), 0))
    sample = manifest.sort_by([("device", "ascending"), ("sensor", "ascending")]).slice(0, MAX_LISTED)
    return len(manifest), [ModelFailure(d, s, error, task.task) for d, s in
                           zip(sample.column("device").to_pylist(), sample.column("sensor").to_pylist())]


def _commit(ctx: Context, run: RunRecord, files: list[str], from_us: int, to_us: int) -> None:
    """Point the window at this run's files, then remove the window's older runs."""
    storage = ctx.storage
    pointer = {"run_id": run.run_id, "version": run.version, "files": sorted(files),
               "committed_at": iso_us(ctx.clock())}
    storage.write_bytes(layout.commit_key(from_us, to_us), json.dumps(pointer).encode())
    ctx.catalog.commit_window(from_us, to_us, run.run_id)
    keep = f"run={run.run_id}"
    for name in storage.list_dirs(layout.predictions_dir(from_us, to_us)):
        if name.startswith("run=") and name != keep:
            storage.delete(f"{layout.predictions_dir(from_us, to_us)}/{name}", recursive=True)
