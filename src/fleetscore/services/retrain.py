"""Model health across runs, and retraining only the unhealthy models (``train --only-unhealthy``).

Each scoring run lists the models that flagged far more than they were calibrated for
(`fleetscore.core.health`) in its record (``extra.health``). `health_report` gathers them from
runs; `retrain_unhealthy` takes those of the latest finished run of the released version and makes
a new version: same kind, features and settings as the released one, the unhealthy keys refitted
on the given window, every other model copied unchanged (shard files without an unhealthy key are
copied byte for byte; the others are rewritten with the refitted models appended). A key without
readings in the window keeps its old model and is reported as not retrained. A device model is one
model: an unhealthy sensor of it refits the whole device (every sensor the device has in the shard).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import Catalog, VersionRecord
from fleetscore.core.fitting import DeviceSeries, fit_shard
from fleetscore.core.keys import Key
from fleetscore.core.kinds import FORMAT_VERSION, KINDS, Bundle, get_kind
from fleetscore.core.runs import RunRecord, RunStatus
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.exec.base import Executor, TaskError
from fleetscore.services.context import Context
from fleetscore.services.train import MIN_TRAIN_ROWS, TrainResult, TrainTask, intervals, load_groups, manifest_rows, task_settings
from fleetscore.storage import layout
from fleetscore.storage.fs import open_storage
from fleetscore.storage.models import ModelStore, library_versions

#: Start of the manifest reason of a model refitted by `retrain_unhealthy`.
RETRAINED = "retrained: unhealthy"
_FINISHED = (RunStatus.SUCCEEDED, RunStatus.PARTIAL)


def _finished_runs(catalog: Catalog, limit: int, version: str | None = None) -> list[RunRecord]:
    runs = [r for r in catalog.runs(max(limit * 20, 200)) if r.status in _FINISHED]
    return [r for r in runs if version is None or r.version == version][:limit]


def health_report(ctx: Context, run_id: str | None = None, last: int = 1) -> dict[str, Any]:
    """Unhealthy models of one run, or of the ``last`` finished runs (the newest entry per model wins)."""
    if run_id is not None:
        layout.check_run_id(run_id)
    runs = [ctx.catalog.get_run(run_id)] if run_id else _finished_runs(ctx.catalog, last)
    found: dict[Key, dict[str, Any]] = {}
    for run in reversed(runs):  # oldest first, so newer runs overwrite
        for entry in run.extra.get("health", {}).get("unhealthy", []):
            found[(entry["device"], entry["sensor"])] = entry | {"run_id": run.run_id, "version": run.version}
    return {"runs": [r.run_id for r in runs], "unhealthy": [found[k] for k in sorted(found)]}


@dataclass(frozen=True)
class RetrainTask:
    """Refit ``keys`` of one shard of ``base`` (``train`` carries the new version, shard and window)."""

    train: TrainTask
    base: str
    keys: tuple[Key, ...]


@dataclass(frozen=True)
class RetrainResult(TrainResult):
    base_version: str = ""
    retrained: list[dict[str, str]] = field(default_factory=list)
    not_retrained: list[dict[str, str]] = field(default_factory=list)


def retrain_shard(task: RetrainTask) -> pa.Table:
    """Write the new version's shard: the base shard's models, with ``keys`` refitted; its manifest rows."""
    t = task.train
    storage = open_storage(t.storage_url)
    store = ModelStore(storage)
    data = load_groups(t)
    meta, bounds, groups, phases = data.meta, data.bounds, data.groups, data.phases
    keys = set(task.keys)
    dev, sen = meta.column("device").to_pylist(), meta.column("sensor").to_pylist()
    chosen = [i for i, start in enumerate(bounds[:-1]) if (dev[start], sen[start]) in keys]
    fresh_meta = meta.take(pa.array(bounds[:-1][chosen], pa.int64())) if chosen else meta.slice(0, 0)
    at = {g: k for k, g in enumerate(chosen)}
    devices = [DeviceSeries([at[g] for g in d.members if g in at], [x for g, x in zip(d.members, d.ts_us) if g in at],
                            [x for g, x in zip(d.members, d.values) if g in at]) for d in data.devices]
    fitted = fit_shard([groups[i] for i in chosen], task_settings(t), [phases[i] for i in chosen],
                       [d for d in devices if d.members])
    own = replace(data, intervals=data.intervals[np.array(chosen, dtype=np.int64)])
    fresh = manifest_rows(t, fresh_meta, np.append(np.arange(len(chosen)), len(chosen)), fitted, intervals(own, fitted))
    fresh = fresh.set_column(fresh.schema.get_field_index("n_train"), "n_train",
                             pa.array([len(groups[i]) for i in chosen], pa.int64()))
    note = [RETRAINED + (f"; {r}" if r else "") for r in fresh.column("reason").to_pylist()]
    fresh = fresh.set_column(fresh.schema.get_field_index("reason"), "reason", pa.array(note, pa.string()))
    refitted = {(d, s) for d, s, k in zip(fresh.column("device").to_pylist(), fresh.column("sensor").to_pylist(),
                                           fitted.kinds) if k is not None}
    old = store.read_shard_manifest(task.base, t.shard)
    old_keys = list(zip(old.column("device").to_pylist(), old.column("sensor").to_pylist()))
    keep = pa.array([k not in refitted for k in old_keys])
    kept = old.filter(keep)
    bundle, kept = _take_models(store.read_bundle(task.base, t.shard), kept)
    fresh = fresh.filter(pc.is_valid(fresh.column("kind"))) if fresh.num_rows else fresh
    for name, params in fitted.bundle.items():
        offset = bundle[name].n_models if name in bundle else 0
        bundle[name] = get_kind(name).params_type.concat([bundle[name], params]) if name in bundle else params
        is_kind = pc.equal(fresh.column("kind"), name)
        slot = pc.if_else(is_kind, pc.add(fresh.column("slot"), offset), fresh.column("slot"))
        fresh = fresh.set_column(fresh.schema.get_field_index("slot"), "slot", pc.cast(slot, pa.int32()))
    store.write_bundle(t.version, t.shard, bundle)
    rows = pa.concat_tables([kept.select(fresh.column_names).cast(fresh.schema), fresh])
    return rows.sort_by([("device", "ascending"), ("sensor", "ascending")])


def _take_models(bundle: Bundle, manifest: pa.Table) -> tuple[Bundle, pa.Table]:
    """The models of ``manifest``'s rows only, renumbered per kind, and the manifest with the new slots
    (rows naming one model, a device model's sensors, keep naming one)."""
    kinds = manifest.column("kind").to_pylist()
    slots = manifest.column("slot").to_numpy(zero_copy_only=False).astype(np.int64)
    new_slots = np.full(len(slots), -1, dtype=np.int32)
    out: Bundle = {}
    for name, params in bundle.items():
        rows = np.flatnonzero((np.asarray(kinds, dtype=object) == name) & (slots >= 0))
        if rows.size:
            kept, new = np.unique(slots[rows], return_inverse=True)
            out[name] = params.take(kept)
            new_slots[rows] = new.astype(np.int32)
    return out, manifest.set_column(manifest.schema.get_field_index("slot"), "slot", pa.array(new_slots))


def _whole_devices(keys: set[Key], manifest: pa.Table) -> set[Key]:
    """``keys`` with, for each key of a device model, every sensor of its device (the model is refitted whole)."""
    per_device = {name for name, spec in KINDS.items() if spec.per_device}
    devices = manifest.column("device").to_pylist()
    sensors = manifest.column("sensor").to_pylist()
    kinds = manifest.column("kind").to_pylist()
    whole = {d for (d, s), k in zip(zip(devices, sensors), kinds) if k in per_device and (d, s) in keys}
    return keys | {(d, s) for d, s in zip(devices, sensors) if d in whole}


def retrain_unhealthy(ctx: Context, executor: Executor, base: VersionRecord, from_us: int, to_us: int, *,
                      release: bool = True, on_progress: Callable[[int, int], None] | None = None) -> RetrainResult:
    """New version = ``base`` (the released one) with its latest run's unhealthy models refitted on [from, to)."""
    started = time.perf_counter()
    runs = _finished_runs(ctx.catalog, 1, base.version)
    if not runs:
        raise InputError(f"no finished run of the released version {base.version}: score first, then retrain")
    sick = runs[0].extra.get("health", {}).get("unhealthy", [])
    if not sick:
        raise InputError(f"the latest run {runs[0].run_id} of {base.version} marked no model unhealthy; nothing to retrain")
    keys = {(u["device"], s) for u in sick for s in u.get("sensors") or [u["sensor"]]}
    storage, catalog = ctx.storage, ctx.catalog
    store = ModelStore(storage)
    info, manifest = store.read_manifest(base.version)
    keys = _whole_devices(keys, manifest)
    shards = store.read_shards(base.version)
    p = info.params
    params = p | {"base_version": base.version, "retrained": len(keys)}
    version = catalog.new_version(info.kind, info.features, params, from_us, to_us)
    shard_of = dict(zip(zip(manifest.column("device").to_pylist(), manifest.column("sensor").to_pylist()),
                        manifest.column("shard").to_pylist()))
    tasks: list[RetrainTask] = []
    for s in shards.to_pylist():
        mine = tuple(sorted(k for k in keys if shard_of.get(k) == s["shard"]))
        if not mine:
            copy = storage.read_bytes(layout.shard_key(base.version, s["shard"]))
            storage.write_bytes(layout.shard_key(version, s["shard"]), copy)
            continue
        lo = None if s["lo_device"] is None else (s["lo_device"], s["lo_sensor"])
        hi = None if s["hi_device"] is None else (s["hi_device"], s["hi_sensor"])
        train = TrainTask(ctx.storage_url, version, int(s["shard"]), from_us, to_us, lo, hi, info.features,
                          p.get("nu", 0.05), p.get("gamma", "scale"), info.kind, p.get("alarm_rate"),
                          int(p.get("min_history", MIN_TRAIN_ROWS)), trained_at_us=ctx.clock(),
                          auto_device=bool(p.get("auto_device", False)))
        tasks.append(RetrainTask(train, base.version, mine))
    parts: dict[int, pa.Table | None] = {t.train.shard: None for t in tasks}
    errors: list[str] = []
    for done, (i, result) in enumerate(executor.map(retrain_shard, tasks), start=1):
        if isinstance(result, TaskError):
            errors.append(f"shard {tasks[i].train.shard}: {result.error}")
        else:
            parts[tasks[i].train.shard] = result
        if on_progress:
            on_progress(done, len(tasks))
    if errors:
        catalog.finish_version(version, "failed", 0, 0, shards.num_rows, time.perf_counter() - started)
        raise FleetscoreError(f"retraining {version} failed: " + "; ".join(errors[:5]))
    untouched = manifest.filter(pc.invert(pc.is_in(manifest.column("shard"), pa.array(list(parts), pa.int32()))))
    refitted = [t.select(manifest.column_names).cast(manifest.schema) for t in parts.values() if t is not None]
    new_manifest = pa.concat_tables([untouched.select(manifest.column_names), *refitted])
    new_manifest = new_manifest.sort_by([("device", "ascending"), ("sensor", "ascending")])
    store.write_manifest(replace(info, version=version, params=params, libraries=library_versions(),
                                 format_version=FORMAT_VERSION), new_manifest, shards)
    failed = new_manifest.filter(pc.equal(new_manifest.column("status"), "failed"))
    n_ok = new_manifest.num_rows - failed.num_rows
    elapsed = time.perf_counter() - started
    catalog.finish_version(version, "ready" if n_ok else "failed", n_ok, failed.num_rows, shards.num_rows, elapsed)
    if release and n_ok:
        catalog.release(version)
    marked = new_manifest.filter(pc.starts_with(pc.fill_null(new_manifest.column("reason"), ""), RETRAINED))
    retrained = sorted(zip(marked.column("device").to_pylist(), marked.column("sensor").to_pylist()))
    return RetrainResult(
        version, n_ok, failed.num_rows, shards.num_rows, round(elapsed, 3), bool(release and n_ok),
        [{"device": d, "sensor": s, "reason": r} for d, s, r in
         zip(*(failed.column(c).to_pylist()[:100] for c in ("device", "sensor", "reason")))],
        base_version=base.version,
        retrained=[{"device": d, "sensor": s} for d, s in retrained],
        not_retrained=[{"device": d, "sensor": s, "reason": "no readings in the training window"}
                       for d, s in sorted(keys - set(retrained))],
    )
