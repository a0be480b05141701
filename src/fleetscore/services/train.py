"""Training service: plan shards over the fleet's keys, fit each shard's models in a worker, commit a version.

Each worker task reads only its shard's key range of the training window, fits every model of the
range and writes one shard file; the manifest is written last, so a version is visible only whole.
Every manifest row records its model's learned sampling interval (``interval_s``, what scoring's
look-back is counted from: `fleetscore.core.history`; a device model's rows its tick). Where device
models may be fitted (``kind="device"``, or ``auto_device``) shards are cut only between devices,
so a device's sensors are trained, and scored, together.

Readings an operator confirmed abnormal are not learned as normal: the readings of every sensor of
an incident marked ``true`` from its first to its last flag, widened by `MARGIN_READINGS` of the
sensor's own sampling interval, are left out before features are built (`fleetscore.core.spans`;
one catalog query per version, nothing to do without such marks), and counted in the result
(``excluded_marked_true``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core import kinds
from fleetscore.core.calibrate import check_alarm_rate
from fleetscore.core.features import build_features, day_phase, parse_features
from fleetscore.core.fitting import DeviceSeries, FitSettings, ShardFit, fit_shard
from fleetscore.core.history import series_intervals
from fleetscore.core.keys import KeyBound
from fleetscore.core.plan import device_starts, fit_cost, group_bounds, plan_shards, score_cost, target_shards
from fleetscore.core.spans import SensorSpan, covered, overlapping, sensor_spans
from fleetscore.core.times import iso, iso_s
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.exec.base import Executor, TaskError
from fleetscore.services.context import Context
from fleetscore.services.runs import hold_lease, training_lease_key
from fleetscore.storage.fs import open_storage
from fleetscore.storage.models import ModelStore, VersionInfo, library_versions
from fleetscore.storage.readings import ReadingStore

#: A model needs at least this many feature rows to be trained.
MIN_TRAIN_ROWS = 2
#: A shard whose task raised (a dead worker, a storage error) is trained again, at most this often in all.
TRAIN_ATTEMPTS = 3
#: Readings (of the sensor's sampling interval) left out on each side of a marked-true incident's span.
MARGIN_READINGS = 2
#: Marked spans this close to a training window are passed to its tasks (the margins are at most a few intervals).
SPAN_SLACK_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class TrainTask:
    """One shard to train: its key range [lo, hi) and the training window, all a worker needs."""

    storage_url: str
    version: str
    shard: int
    from_us: int
    to_us: int
    lo: KeyBound
    hi: KeyBound
    features: str
    nu: float
    gamma: float | str
    kind: str = "ocsvm"
    alarm_rate: float | None = None  # None: no calibration (exact scikit-learn semantics for ocsvm)
    min_history: int = MIN_TRAIN_ROWS  # rows a key needs for ``kind``; fewer get a robust fallback
    trained_at_us: int = 0  # when the version was started (the driver's clock), stamped on its manifest rows
    auto_device: bool = False  # devices whose sensors move together get a device model (core.fitting)
    excluded: tuple[SensorSpan, ...] = ()  # spans of incidents marked true: their readings are not trained on


@dataclass(frozen=True)
class ShardData:
    """A shard's training data: feature rows per (device, sensor) key, and what device models need."""

    meta: pa.Table  # the feature rows (ts, device, sensor, ...), grouped by key
    bounds: np.ndarray  # offsets of each key's rows in ``meta``, plus the end
    groups: list[np.ndarray]  # feature matrix of each key
    phases: list[np.ndarray]  # time of day of each key's rows
    intervals: np.ndarray  # (keys,) learned sampling interval of each key's readings, seconds (NaN: unknown)
    devices: list[DeviceSeries]  # the keys of each device with their raw readings (device models)
    excluded: int = 0  # readings left out as inside incidents marked true


@dataclass(frozen=True)
class ShardTrained:
    """What a training task returns: its shard's manifest rows and how many readings it left out."""

    rows: pa.Table
    excluded: int


@dataclass(frozen=True)
class TrainResult:
    version: str
    models: int
    failed: int
    shards: int
    elapsed_s: float
    released: bool
    failures: list[dict[str, str]]
    excluded_marked_true: int = 0  # readings not trained on: inside incidents operators marked true

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def shard_bounds(keys: pa.Table, starts: np.ndarray) -> list[tuple[KeyBound, KeyBound]]:
    """[lo, hi) key ranges of the shards; the first starts open and the last ends open."""
    firsts = [(r["device"], r["sensor"]) for r in keys.select(["device", "sensor"]).take(pa.array(starts)).to_pylist()]
    return [(None if i == 0 else first, firsts[i + 1] if i + 1 < len(firsts) else None)
            for i, first in enumerate(firsts)]


def train_shard(task: TrainTask) -> ShardTrained:
    """Fit all models of one shard and write its shard file; returns its manifest rows and the readings left out."""
    storage = open_storage(task.storage_url, in_task=True)
    data = load_groups(task)
    fitted = fit_shard(data.groups, task_settings(task), data.phases, data.devices)
    ModelStore(storage).write_bundle(task.version, task.shard, fitted.bundle)
    return ShardTrained(manifest_rows(task, data.meta, data.bounds, fitted, intervals(data, fitted)), data.excluded)


def without_spans(table: pa.Table, spans: tuple[SensorSpan, ...]) -> tuple[pa.Table, int]:
    """``table`` (readings sorted by key and time) without those inside ``spans`` widened by `MARGIN_READINGS`
    of each sensor's sampling interval, and how many were left out."""
    if not spans or table.num_rows == 0:
        return table, 0
    bounds = group_bounds(table.column("device"), table.column("sensor"))
    keys = zip(table.column("device").take(pa.array(bounds[:-1])).to_pylist(),
               table.column("sensor").take(pa.array(bounds[:-1])).to_pylist())
    ts = pc.cast(table.column("ts"), pa.int64()).to_numpy(zero_copy_only=False)
    margin = {k: 0 if not np.isfinite(s) else int(MARGIN_READINGS * s * 1e6) for k, s in zip(keys, series_intervals(ts, bounds))}
    widened = [(d, s, lo - margin[(d, s)], hi + margin[(d, s)]) for d, s, lo, hi in spans if (d, s) in margin]
    drop = covered(table, widened)
    return table.filter(pa.array(~drop)), int(drop.sum())


def marked_true_spans(ctx: Context, from_us: int, to_us: int) -> tuple[SensorSpan, ...]:
    """Per sensor, the spans of incidents marked true near [from, to): one catalog query."""
    from fleetscore.catalog.incidents import IncidentStore

    spans = sensor_spans(IncidentStore(ctx.catalog).marked_spans("true"))
    return tuple(overlapping(spans, from_us - SPAN_SLACK_US, to_us + SPAN_SLACK_US))


def load_groups(task: TrainTask) -> ShardData:
    """The shard's training rows: per (device, sensor) its features, times of day and sampling interval,
    and (where device models may be fitted) each device's raw readings."""
    readings = ReadingStore(open_storage(task.storage_url, in_task=True))
    spec = parse_features(task.features)
    table = readings.read_range(task.from_us, task.to_us, task.lo, task.hi)  # sorted by key and time
    table, excluded = without_spans(table, task.excluded)
    meta, x = build_features(table, spec)
    bounds = group_bounds(meta.column("device"), meta.column("sensor"))
    phase = day_phase(meta.column("ts"))
    pairs = list(zip(bounds[:-1], bounds[1:]))
    keys = list(zip(meta.column("device").take(pa.array(bounds[:-1])).to_pylist(),
                    meta.column("sensor").take(pa.array(bounds[:-1])).to_pylist())) if len(bounds) > 1 else []
    raw_bounds = group_bounds(table.column("device"), table.column("sensor"))
    raw_keys = list(zip(table.column("device").take(pa.array(raw_bounds[:-1])).to_pylist(),
                        table.column("sensor").take(pa.array(raw_bounds[:-1])).to_pylist())) if table.num_rows else []
    ts = pc.cast(table.column("ts"), pa.int64()).to_numpy(zero_copy_only=False) if table.num_rows else np.zeros(0, np.int64)
    raw_intervals = dict(zip(raw_keys, series_intervals(ts, raw_bounds)))
    where = {k: (int(a), int(b)) for k, a, b in zip(raw_keys, raw_bounds[:-1], raw_bounds[1:])}
    devices: list[DeviceSeries] = []
    if task.kind == "device" or task.auto_device:
        values = table.column("value").to_numpy() if table.num_rows else np.zeros(0)
        by_device: dict[str, list[int]] = {}
        for i, (d, _) in enumerate(keys):
            by_device.setdefault(d, []).append(i)
        for members in by_device.values():
            members = [i for i in members if keys[i] in where]
            slices = [where[keys[i]] for i in members]
            devices.append(DeviceSeries(members, [ts[a:b] for a, b in slices], [values[a:b] for a, b in slices]))
    return ShardData(meta, bounds, [x[a:b] for a, b in pairs], [phase[a:b] for a, b in pairs],
                     np.array([raw_intervals.get(k, np.nan) for k in keys], dtype=np.float64), devices, excluded)


def intervals(data: ShardData, fitted: ShardFit) -> np.ndarray:
    """Each key's interval for its manifest row: its readings' own, or for a device model's sensors the device's tick."""
    out = np.array(data.intervals, dtype=np.float64)
    if "device" in fitted.bundle and fitted.sensor_index is not None:
        on_device = np.flatnonzero(fitted.sensor_index >= 0)
        out[on_device] = fitted.bundle["device"].tick_us[fitted.slots[on_device]] / 1e6
    return out


def task_settings(task: TrainTask) -> FitSettings:
    spec = parse_features(task.features)
    return FitSettings(task.kind, task.nu, task.gamma, task.alarm_rate, task.min_history,
                       heavy_tails=spec.heavy_tailed, short_history=spec.short_history, seasonal=spec.seasonal,
                       values=spec.n_features, side=spec.one_sided, gated=spec.gated, capped=spec.capped,
                       auto_device=task.auto_device)


def manifest_rows(task: TrainTask, meta: pa.Table, bounds: np.ndarray, fitted: ShardFit,
                  interval_s: np.ndarray | None = None) -> pa.Table:
    """Manifest rows (one per key of ``meta``) for the models of ``fitted``; ``interval_s``: each key's interval."""
    starts = bounds[:-1]
    n = len(starts)
    slot, n_sv, reasons = fitted.slots, fitted.sizes, fitted.reasons
    now = iso_s(task.trained_at_us)
    interval = np.full(n, np.nan) if interval_s is None else np.asarray(interval_s, dtype=np.float64)
    column = np.full(n, -1, dtype=np.int32) if fitted.sensor_index is None else fitted.sensor_index
    return pa.table(
        {
            "device": meta.column("device").take(pa.array(starts)),
            "sensor": meta.column("sensor").take(pa.array(starts)),
            "shard": pa.array(np.full(n, task.shard, dtype=np.int32)),
            "slot": pa.array(slot),
            "status": pa.array(["failed" if k is None else "ok" for k in fitted.kinds], pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "n_train": pa.array(np.diff(bounds).astype(np.int64)),
            "n_sv": pa.array(n_sv),
            "trained_at": pa.array([now] * n, pa.string()),
            "kind": pa.array(fitted.kinds, pa.string()),
            "fallback": pa.array(fitted.fallback),
            "interval_s": pa.array(interval, pa.float64(), from_pandas=True),  # NaN -> null: unknown
            "sensor_index": pa.array(column, pa.int32(), mask=column < 0),  # null: not a device model
        }
    )


def train(
    ctx: Context,
    executor: Executor,
    from_us: int,
    to_us: int,
    *,
    kind: str = "ocsvm",
    nu: float = 0.05,
    gamma: float | str = "scale",
    features: str = "raw",
    shard_models: int = 2000,
    release: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    alarm_rate: float | None = None,
    min_history: int = MIN_TRAIN_ROWS,
    auto_device: bool = False,
) -> TrainResult:
    """Train one model per (device, sensor) with readings in [from, to) into a new version.

    ``alarm_rate`` calibrates every model's threshold to that false-alarm rate (None: no
    calibration); keys with fewer than ``min_history`` feature rows get a robust fallback model.
    ``kind="device"``: one model per device over its sensors; ``auto_device``: such a model only
    for devices whose sensors move together, the version's kind per sensor elsewhere (`fleetscore.core.fitting`).
    """
    started = time.perf_counter()
    kinds.get_kind(kind)
    alarm_rate = None if alarm_rate is None else check_alarm_rate(alarm_rate)
    if not isinstance(min_history, int) or min_history < MIN_TRAIN_ROWS:
        raise InputError(f"min_history must be an integer >= {MIN_TRAIN_ROWS}, got {min_history!r}")
    spec = parse_features(features)
    gamma = _check_gamma(gamma)
    if not 0 < nu <= 1:
        raise InputError(f"--nu must be in (0, 1], got {nu}")
    storage, catalog = ctx.storage, ctx.catalog
    keys = ReadingStore(storage).key_counts(from_us, to_us)  # in key order, one bucket at a time
    if keys.num_rows == 0:
        raise InputError(f"no readings between {iso(from_us)} and {iso(to_us)} to train on")
    if auto_device and kind not in ("robust", "device"):
        raise InputError(f"device models are chosen automatically only beside robust models, not {kind}")
    costs = fit_cost(keys.column("rows").to_numpy(), nu)
    whole = device_starts(keys.column("device")) if kind == "device" or auto_device else None
    starts = plan_shards(costs, max_models=shard_models, target_shards=target_shards(executor.workers), cuts=whole)
    params = ({"nu": nu, "gamma": gamma} if kind == "ocsvm" else {}) | {
        "alarm_rate": alarm_rate, "min_history": min_history, "min_train_rows": MIN_TRAIN_ROWS, "fallback": "robust"} | (
        {"auto_device": True} if auto_device else {})
    marked = marked_true_spans(ctx, from_us, to_us)
    version = catalog.new_version(kind, spec.text, params, from_us, to_us)
    with _training(ctx, version, started):
        tasks = [
            TrainTask(ctx.storage_url, version, i, from_us, to_us, lo, hi, spec.text, nu, gamma, kind, alarm_rate,
                      min_history, trained_at_us=ctx.clock(), auto_device=auto_device, excluded=marked)
            for i, (lo, hi) in enumerate(shard_bounds(keys, starts))
        ]
        parts: list[ShardTrained | None] = [None] * len(tasks)
        errors: dict[int, str] = {}
        # costliest shards first: one started last would finish last and hold up the whole version
        pending = [int(k) for k in np.argsort(-np.add.reduceat(costs, starts), kind="stable")]
        done = 0
        for _ in range(TRAIN_ATTEMPTS):
            errors = {}
            for j, result in executor.map(train_shard, [tasks[k] for k in pending]):
                if isinstance(result, TaskError):
                    errors[pending[j]] = result.error
                    continue
                parts[pending[j]] = result
                done += 1
                if on_progress:
                    on_progress(done, len(tasks))
            pending = [i for i in pending if i in errors]  # shard files are written atomically: a rerun replaces
            if not pending:
                break
        elapsed = time.perf_counter() - started
        if errors:
            catalog.finish_version(version, "failed", 0, 0, len(tasks), elapsed)
            raise FleetscoreError(f"training {version} failed after {TRAIN_ATTEMPTS} attempts: "
                                  + "; ".join(f"shard {i}: {e}" for i, e in sorted(errors.items())[:5]))
        manifest = pa.concat_tables([p.rows for p in parts if p is not None])
        excluded = sum(p.excluded for p in parts if p is not None)
        shards = _shard_table(tasks, manifest)
        info = VersionInfo(version, kind, spec.text, params, library_versions(), kinds.FORMAT_VERSION)
        ModelStore(storage).write_manifest(info, manifest, shards)
        failed_mask = pc.equal(manifest.column("status"), "failed")
        failed = manifest.filter(failed_mask)
        n_ok = manifest.num_rows - failed.num_rows
        elapsed = time.perf_counter() - started
        catalog.finish_version(version, "ready" if n_ok else "failed", n_ok, failed.num_rows, len(tasks), elapsed)
        if not n_ok:
            raise FleetscoreError(_none_trained(version, manifest.num_rows, failed))
        if release:
            catalog.release(version)
        failures = [
            {"device": d, "sensor": s, "reason": r}
            for d, s, r in zip(*(failed.column(c).to_pylist()[:100] for c in ("device", "sensor", "reason")))
        ]
        return TrainResult(version, n_ok, failed.num_rows, len(tasks), round(elapsed, 3), release, failures,
                           excluded_marked_true=excluded)


def _none_trained(version: str, planned: int, failed: pa.Table) -> str:
    """Why a version ended with no model: none planned, or every one failed (the first reasons)."""
    if not planned:
        return f"training {version} trained no model: its shards held no (device, sensor) with readings"
    reasons = "; ".join(f"{d}/{s}: {r}" for d, s, r in zip(
        *(failed.column(c).to_pylist()[:3] for c in ("device", "sensor", "reason"))))
    return f"training {version} trained no model: all {planned:,} failed ({reasons})"


@contextmanager
def _training(ctx: Context, version: str, started: float) -> Iterator[None]:
    """Hold ``version``'s training lease while it trains (should this process die, the version is abandoned
    once the lease expires, and ``gc`` removes it); a version an error ends while ``training`` is marked failed."""
    with hold_lease(ctx, training_lease_key(version)):
        try:
            yield
        except BaseException:
            if ctx.catalog.get_version(version).status == "training":
                ctx.catalog.finish_version(version, "failed", 0, 0, 0, time.perf_counter() - started)
            raise


def _check_gamma(gamma: float | str) -> float | str:
    if isinstance(gamma, str):
        if gamma in ("scale", "auto", "median"):
            return gamma
        try:
            gamma = float(gamma)
        except ValueError:
            raise InputError(f"--gamma must be 'scale', 'auto', 'median' or a positive number, got {str(gamma)[:40]!r}"
                             ) from None
    if not np.isfinite(gamma) or gamma <= 0:
        raise InputError(f"--gamma must be a positive number, got {gamma}")
    return float(gamma)


def _shard_table(tasks: list[TrainTask], manifest: pa.Table) -> pa.Table:
    shard = manifest.column("shard").to_numpy()
    cost = score_cost(manifest.column("n_train").to_numpy(), manifest.column("n_sv").to_numpy())
    return pa.table(
        {
            "shard": pa.array([t.shard for t in tasks], pa.int32()),
            "models": pa.array(np.bincount(shard, minlength=len(tasks)), pa.int32()),
            "lo_device": pa.array([t.lo[0] if t.lo else None for t in tasks], pa.string()),
            "lo_sensor": pa.array([t.lo[1] if t.lo else None for t in tasks], pa.string()),
            "hi_device": pa.array([t.hi[0] if t.hi else None for t in tasks], pa.string()),
            "hi_sensor": pa.array([t.hi[1] if t.hi else None for t in tasks], pa.string()),
            "cost": pa.array(np.bincount(shard, weights=cost, minlength=len(tasks)), pa.float64()),
        }
    )
