"""Training service: plan shards over the fleet's keys, fit each shard's models in a worker, commit a version.

Each worker task reads only its shard's key range of the training window, fits every model of the
range and writes one shard file; the manifest is written last, so a version is visible only whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core import kinds
from fleetscore.core.calibrate import check_alarm_rate
from fleetscore.core.features import build_features, day_phase, parse_features
from fleetscore.core.fitting import FitSettings, ShardFit, fit_shard
from fleetscore.core.plan import fit_cost, group_bounds, plan_shards, score_cost, target_shards
from fleetscore.core.times import iso, iso_s
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.exec.base import Executor, TaskError
from fleetscore.services.context import Context
from fleetscore.storage.fs import open_storage
from fleetscore.storage.models import ModelStore, VersionInfo, library_versions
from fleetscore.storage.readings import ReadingStore

KeyBound = tuple[str, str] | None
#: A model needs at least this many feature rows to be trained.
MIN_TRAIN_ROWS = 2
#: A shard whose task raised (a dead worker, a storage error) is trained again, at most this often in all.
TRAIN_ATTEMPTS = 3


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


@dataclass(frozen=True)
class TrainResult:
    version: str
    models: int
    failed: int
    shards: int
    elapsed_s: float
    released: bool
    failures: list[dict[str, str]]

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def shard_bounds(keys: pa.Table, starts: np.ndarray) -> list[tuple[KeyBound, KeyBound]]:
    """[lo, hi) key ranges of the shards; the first starts open and the last ends open."""
    firsts = [(r["device"], r["sensor"]) for r in keys.select(["device", "sensor"]).take(pa.array(starts)).to_pylist()]
    return [(None if i == 0 else first, firsts[i + 1] if i + 1 < len(firsts) else None)
            for i, first in enumerate(firsts)]


def train_shard(task: TrainTask) -> pa.Table:
    """Fit all models of one shard and write its shard file; returns the shard's manifest rows."""
    storage = open_storage(task.storage_url)
    meta, bounds, groups, phases = load_groups(task)
    fitted = fit_shard(groups, task_settings(task), phases)
    ModelStore(storage).write_bundle(task.version, task.shard, fitted.bundle)
    return manifest_rows(task, meta, bounds, fitted)


def load_groups(task: TrainTask) -> tuple[pa.Table, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The shard's training rows: meta, group bounds, and per (device, sensor) its features and times of day."""
    readings = ReadingStore(open_storage(task.storage_url))
    spec = parse_features(task.features)
    table = readings.read_range(task.from_us, task.to_us, task.lo, task.hi)  # sorted by key and time
    meta, x = build_features(table, spec)
    bounds = group_bounds(meta.column("device"), meta.column("sensor"))
    phase = day_phase(meta.column("ts"))
    pairs = list(zip(bounds[:-1], bounds[1:]))
    return meta, bounds, [x[a:b] for a, b in pairs], [phase[a:b] for a, b in pairs]


def task_settings(task: TrainTask) -> FitSettings:
    spec = parse_features(task.features)
    return FitSettings(task.kind, task.nu, task.gamma, task.alarm_rate, task.min_history,
                       heavy_tails=spec.heavy_tailed, short_history=spec.short_history, seasonal=spec.seasonal,
                       values=spec.n_features, side=spec.one_sided, gated=spec.gated, capped=spec.capped)


def manifest_rows(task: TrainTask, meta: pa.Table, bounds: np.ndarray, fitted: ShardFit) -> pa.Table:
    """Manifest rows (one per key of ``meta``) for the models of ``fitted``."""
    starts = bounds[:-1]
    n = len(starts)
    slot, n_sv, reasons = fitted.slots, fitted.sizes, fitted.reasons
    now = iso_s(task.trained_at_us)
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
) -> TrainResult:
    """Train one model per (device, sensor) with readings in [from, to) into a new version.

    ``alarm_rate`` calibrates every model's threshold to that false-alarm rate (None: no
    calibration); keys with fewer than ``min_history`` feature rows get a robust fallback model.
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
    costs = fit_cost(keys.column("rows").to_numpy(), nu)
    starts = plan_shards(costs, max_models=shard_models, target_shards=target_shards(executor.workers))
    params = ({"nu": nu, "gamma": gamma} if kind == "ocsvm" else {}) | {
        "alarm_rate": alarm_rate, "min_history": min_history, "min_train_rows": MIN_TRAIN_ROWS, "fallback": "robust"}
    version = catalog.new_version(kind, spec.text, params, iso(from_us), iso(to_us))
    tasks = [
        TrainTask(ctx.storage_url, version, i, from_us, to_us, lo, hi, spec.text, nu, gamma, kind, alarm_rate,
                  min_history, trained_at_us=ctx.clock())
        for i, (lo, hi) in enumerate(shard_bounds(keys, starts))
    ]
    parts: list[pa.Table | None] = [None] * len(tasks)
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
    manifest = pa.concat_tables([p for p in parts if p is not None])
    shards = _shard_table(tasks, manifest)
    info = VersionInfo(version, kind, spec.text, params, library_versions(), kinds.FORMAT_VERSION)
    ModelStore(storage).write_manifest(info, manifest, shards)
    failed_mask = pc.equal(manifest.column("status"), "failed")
    failed = manifest.filter(failed_mask)
    n_ok = manifest.num_rows - failed.num_rows
    elapsed = time.perf_counter() - started
    catalog.finish_version(version, "ready" if n_ok else "failed", n_ok, failed.num_rows, len(tasks), elapsed)
    released = False
    if release and n_ok:
        catalog.release(version)
        released = True
    failures = [
        {"device": d, "sensor": s, "reason": r}
        for d, s, r in zip(*(failed.column(c).to_pylist()[:100] for c in ("device", "sensor", "reason")))
    ]
    return TrainResult(version, n_ok, failed.num_rows, len(tasks), round(elapsed, 3), released, failures)


def _check_gamma(gamma: float | str) -> float | str:
    if isinstance(gamma, str):
        if gamma in ("scale", "auto", "median"):
            return gamma
        try:
            gamma = float(gamma)
        except ValueError:
            raise InputError(f"--gamma must be 'scale', 'auto', 'median' or a positive number, got {gamma[:40]!r}") from None
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
