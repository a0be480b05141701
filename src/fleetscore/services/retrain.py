"""Model health across runs and operators' marks, and retraining only the unhealthy models (``train --only-unhealthy``).

Each scoring run lists the models that flagged far more than they were calibrated for
(`fleetscore.core.health`) in the catalog (its record: the first few and the total, ``extra.health``).
`health_report` gathers them from runs; `retrain_unhealthy` takes those of the latest finished run
of the released version and makes a new version: same kind, features and settings as the released
one, the unhealthy keys refitted on the given window, every other model copied unchanged (shard files
without an unhealthy key are copied byte for byte; the others are rewritten with the refitted models
appended). A key without readings in the window keeps its old model and is reported as not retrained.
A device model is one model: an unhealthy sensor of it refits the whole device (every sensor the device has in the shard).
`copy_shards` and `commit_derived` are the one road of versions derived from another (also
``models adjust``, `fleetscore.services.adjust`). `health_report` also lists the released version's
models whose incidents operators repeatedly marked false (`fleetscore.core.health.false_alarms`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import Catalog, VersionRecord
from fleetscore.core.fitting import DeviceSeries, fit_shard
from fleetscore.core.health import FALSE_MARKS, expected_rate, false_alarms
from fleetscore.core.keys import Key
from fleetscore.core.kinds import FORMAT_VERSION, KINDS, Bundle, get_kind
from fleetscore.core.runs import RunRecord, RunStatus
from fleetscore.core.times import iso
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.exec.base import Executor, TaskError
from fleetscore.services.context import Context
from fleetscore.services.train import (
    MIN_TRAIN_ROWS,
    ShardTrained,
    TrainResult,
    TrainTask,
    intervals,
    load_groups,
    manifest_rows,
    marked_true_spans,
    task_settings,
)
from fleetscore.storage import layout
from fleetscore.storage.fs import open_storage
from fleetscore.storage.models import ModelStore, VersionInfo, library_versions

#: Start of the manifest reason of a model refitted by `retrain_unhealthy`.
RETRAINED = "retrained: unhealthy"
_FINISHED = (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
#: False marks count for the released version over (at most) this many of its latest finished runs' windows.
FEEDBACK_RUNS = 200
_DAY_US = 86_400 * 1_000_000


def _finished_runs(catalog: Catalog, limit: int, version: str | None = None) -> list[RunRecord]:
    runs = [r for r in catalog.runs(max(limit * 20, 200)) if r.status in _FINISHED]
    return [r for r in runs if version is None or r.version == version][:limit]


def health_report(ctx: Context, run_id: str | None = None, last: int = 1, min_false_marks: int = FALSE_MARKS,
                  limit: int | None = None, offset: int = 0) -> dict[str, Any]:
    """Unhealthy models of one run, or of the ``last`` finished runs (the newest entry per model wins): entries
    ``offset`` .. ``offset + limit`` (None: all) in key order and how many there are (``unhealthy_models``); and the
    released version's models with at least ``min_false_marks`` incidents marked false (``false_alarms``)."""
    if run_id is not None:
        layout.check_run_id(run_id)
    if not isinstance(min_false_marks, int) or min_false_marks < 1:
        raise InputError(f"--min-false-marks must be a whole number >= 1, got {min_false_marks!r}")
    if (limit is not None and limit < 1) or offset < 0:
        raise InputError(f"--limit must be >= 1 and --offset >= 0, got {limit} and {offset}")
    runs = [ctx.catalog.get_run(run_id)] if run_id else _finished_runs(ctx.catalog, last)
    tag = [{"run_id": r.run_id, "version": r.version} for r in runs]
    if len(runs) == 1:  # one run: the catalog pages its list
        entries, total = ctx.catalog.run_list(runs[0].run_id, "unhealthy", limit, offset)
        unhealthy = [e | tag[0] for e in entries]
    else:
        found: dict[Key, dict[str, Any]] = {}
        for run, own in zip(reversed(runs), reversed(tag)):  # oldest first, so newer runs overwrite
            for entry in unhealthy_models(ctx.catalog, run.run_id):
                found[(entry["device"], entry["sensor"])] = entry | own
        total, keys = len(found), sorted(found)
        unhealthy = [found[k] for k in keys[offset:None if limit is None else offset + limit]]
    return {"runs": [r.run_id for r in runs], "unhealthy": unhealthy, "unhealthy_models": total, "offset": offset,
            "false_alarms": false_alarm_report(ctx, min_false_marks)}


def unhealthy_models(catalog: Catalog, run_id: str) -> list[dict[str, Any]]:
    """Every model run ``run_id`` found unhealthy, in key order."""
    return catalog.run_list(run_id, "unhealthy")[0]


def false_alarm_report(ctx: Context, min_marks: int = FALSE_MARKS) -> list[dict[str, Any]]:
    """The released version's models whose incidents were marked false at least ``min_marks`` times within the
    windows its latest runs scored, with a suggested action (`fleetscore.core.health.false_alarms`)."""
    from fleetscore.catalog.incidents import IncidentStore

    released = ctx.catalog.released()
    runs = [] if released is None else _finished_runs(ctx.catalog, FEEDBACK_RUNS, released)
    if released is None or not runs:
        return []
    lo, hi = min(r.window_from for r in runs), max(r.window_to for r in runs)
    marks = Counter((device, sensor) for device, start, last, sensors in IncidentStore(ctx.catalog).marked_spans("false")
                    if last >= lo and start < hi for sensor in sensors)
    if not marks:
        return []
    record = ctx.catalog.get_version(released)
    rate = expected_rate(record.params)
    adjusted = {(a["device"], a["sensor"]): float(a["alarm_rate"]) for a in record.params.get("adjusted", [])}
    expected = {k: adjusted.get(k, rate) for k in marks}
    sick = unhealthy_models(ctx.catalog, runs[0].run_id)
    unhealthy = {(u["device"], s) for u in sick for s in u.get("sensors") or [u["sensor"]]}
    span = (record.train_to - record.train_from) if record.train_from is not None and record.train_to else _DAY_US
    command = f"fleetscore train --only-unhealthy --from {iso(hi - span)} --to {iso(hi)}"
    return false_alarms(marks, expected, unhealthy, command, min_marks)


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
    #: Why no version was made (no model to retrain); ``version`` is then the base version, unchanged.
    nothing_to_do: str | None = None


def retrain_shard(task: RetrainTask) -> ShardTrained:
    """Write the new version's shard: the base shard's models, with ``keys`` refitted; its manifest rows."""
    t = task.train
    storage = open_storage(t.storage_url, in_task=True)
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
    return ShardTrained(rows.sort_by([("device", "ascending"), ("sensor", "ascending")]), data.excluded)


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


def copy_shards(ctx: Context, base: str, version: str, shards: list[int]) -> None:
    """Copy ``shards`` of ``base`` byte for byte into ``version`` (models a derived version keeps unchanged)."""
    for shard in shards:
        ctx.storage.write_bytes(layout.shard_key(version, shard), ctx.storage.read_bytes(layout.shard_key(base, shard)))


@dataclass(frozen=True)
class Derived:
    """A version derived from another, committed: its manifest, how many models are ok, the failed rows."""

    manifest: pa.Table
    n_ok: int
    failed: pa.Table
    released: bool


def commit_derived(ctx: Context, info: VersionInfo, version: str, params: dict[str, Any], manifest: pa.Table,
                   shards: pa.Table, replaced: dict[int, pa.Table], started: float, release: bool) -> Derived:
    """Finish ``version`` derived from ``info``'s version (``manifest``, ``shards``): its manifest is the base's
    with the rows of the ``replaced`` shards exchanged (their files already written, the others copied);
    marked ready (or failed, without a model) and released if asked."""
    untouched = manifest.filter(pc.invert(pc.is_in(manifest.column("shard"), pa.array(list(replaced), pa.int32()))))
    rewritten = [t.select(manifest.column_names).cast(manifest.schema) for t in replaced.values()]
    new_manifest = pa.concat_tables([untouched.select(manifest.column_names), *rewritten])
    new_manifest = new_manifest.sort_by([("device", "ascending"), ("sensor", "ascending")])
    ModelStore(ctx.storage).write_manifest(replace(info, version=version, params=params, libraries=library_versions(),
                                                   format_version=FORMAT_VERSION), new_manifest, shards)
    failed = new_manifest.filter(pc.equal(new_manifest.column("status"), "failed"))
    n_ok = new_manifest.num_rows - failed.num_rows
    elapsed = time.perf_counter() - started
    ctx.catalog.finish_version(version, "ready" if n_ok else "failed", n_ok, failed.num_rows, shards.num_rows, elapsed)
    if release and n_ok:
        ctx.catalog.release(version)
    return Derived(new_manifest, n_ok, failed, bool(release and n_ok))


def retrain_unhealthy(ctx: Context, executor: Executor, base: VersionRecord, from_us: int, to_us: int, *,
                      release: bool = True, on_progress: Callable[[int, int], None] | None = None) -> RetrainResult:
    """New version = ``base`` (the released one) with its latest run's unhealthy models refitted on [from, to)."""
    started = time.perf_counter()
    runs = _finished_runs(ctx.catalog, 1, base.version)
    if not runs:
        raise InputError(f"no finished run of the released version {base.version}: score first, then retrain")
    sick = unhealthy_models(ctx.catalog, runs[0].run_id)
    if not sick:
        reason = f"the latest run {runs[0].run_id} of {base.version} marked no model unhealthy; nothing to retrain"
        return RetrainResult(base.version, 0, 0, 0, round(time.perf_counter() - started, 3), False, [],
                             base_version=base.version, nothing_to_do=reason)
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
    marked = marked_true_spans(ctx, from_us, to_us)
    tasks: list[RetrainTask] = []
    unchanged: list[int] = []
    for s in shards.to_pylist():
        mine = tuple(sorted(k for k in keys if shard_of.get(k) == s["shard"]))
        if not mine:
            unchanged.append(int(s["shard"]))
            continue
        lo = None if s["lo_device"] is None else (s["lo_device"], s["lo_sensor"])
        hi = None if s["hi_device"] is None else (s["hi_device"], s["hi_sensor"])
        train = TrainTask(ctx.storage_url, version, int(s["shard"]), from_us, to_us, lo, hi, info.features,
                          p.get("nu", 0.05), p.get("gamma", "scale"), info.kind, p.get("alarm_rate"),
                          int(p.get("min_history", MIN_TRAIN_ROWS)), trained_at_us=ctx.clock(),
                          auto_device=bool(p.get("auto_device", False)), excluded=marked)
        tasks.append(RetrainTask(train, base.version, mine))
    copy_shards(ctx, base.version, version, unchanged)
    parts: dict[int, ShardTrained] = {}
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
    derived = commit_derived(ctx, info, version, params, manifest, shards,
                             {shard: part.rows for shard, part in parts.items()}, started, release)
    new_manifest, failed = derived.manifest, derived.failed
    refit = new_manifest.filter(pc.starts_with(pc.fill_null(new_manifest.column("reason"), ""), RETRAINED))
    retrained = sorted(zip(refit.column("device").to_pylist(), refit.column("sensor").to_pylist()))
    return RetrainResult(
        version, derived.n_ok, failed.num_rows, shards.num_rows, round(time.perf_counter() - started, 3), derived.released,
        [{"device": d, "sensor": s, "reason": r} for d, s, r in
         zip(*(failed.column(c).to_pylist()[:100] for c in ("device", "sensor", "reason")))],
        excluded_marked_true=sum(part.excluded for part in parts.values()),
        base_version=base.version,
        retrained=[{"device": d, "sensor": s} for d, s in retrained],
        not_retrained=[{"device": d, "sensor": s, "reason": "no readings in the training window"}
                       for d, s in sorted(keys - set(retrained))],
    )
