"""Training service: plan shards over the fleet's keys, fit each shard's models in a worker, commit a version.

Each worker task reads only its shard's key range of the training window, fits every model of the
range and writes one shard file; the manifest is written last, so a version is visible only whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import Catalog
from fleetscore.core import ocsvm
from fleetscore.core.features import build_features, parse_features
from fleetscore.core.plan import group_bounds, key_range_mask, plan_shards
from fleetscore.core.times import iso
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.exec.base import Executor, TaskError
from fleetscore.storage.fs import open_storage
from fleetscore.storage.models import ModelStore, VersionInfo, library_versions
from fleetscore.storage.readings import ReadingStore

KeyBound = tuple[str, str] | None
#: A model needs at least this many feature rows to be trained.
MIN_TRAIN_ROWS = 2


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


def key_counts(readings: ReadingStore, from_us: int, to_us: int) -> pa.Table:
    """Rows per (device, sensor) in the window, sorted by key; reads two columns an hour at a time."""
    parts = []
    for key in readings.hour_keys(from_us, to_us):
        hour = readings.read_hour(key, from_us, to_us, columns=["device", "sensor"])
        if hour.num_rows:
            parts.append(hour.group_by(["device", "sensor"]).aggregate([([], "count_all")]))
    if not parts:
        return pa.table({"device": pa.array([], pa.string()), "sensor": pa.array([], pa.string()),
                         "rows": pa.array([], pa.int64())})
    counts = pa.concat_tables(parts).group_by(["device", "sensor"]).aggregate([("count_all", "sum")])
    counts = counts.rename_columns(["device", "sensor", "rows"])
    return counts.sort_by([("device", "ascending"), ("sensor", "ascending")])


def shard_bounds(keys: pa.Table, starts: np.ndarray) -> list[tuple[KeyBound, KeyBound]]:
    """[lo, hi) key ranges of the shards; the first starts open and the last ends open."""
    dev, sen = keys.column("device").to_pylist(), keys.column("sensor").to_pylist()
    bounds: list[tuple[KeyBound, KeyBound]] = []
    for i, start in enumerate(starts):
        lo = None if i == 0 else (dev[start], sen[start])
        hi = None if i + 1 == len(starts) else (dev[starts[i + 1]], sen[starts[i + 1]])
        bounds.append((lo, hi))
    return bounds


def train_shard(task: TrainTask) -> pa.Table:
    """Fit all models of one shard and write its shard file; returns the shard's manifest rows."""
    storage = open_storage(task.storage_url)
    readings = ReadingStore(storage)
    spec = parse_features(task.features)
    lo_dev = task.lo[0] if task.lo else None
    hi_dev = task.hi[0] if task.hi else None
    table = readings.read_window(task.from_us, task.to_us, devices=(lo_dev, hi_dev))
    table = table.filter(pa.array(key_range_mask(table.column("device"), table.column("sensor"), task.lo, task.hi)))
    table = table.sort_by([("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])
    meta, x = build_features(table, spec)
    bounds = group_bounds(meta.column("device"), meta.column("sensor"))
    starts = bounds[:-1]
    groups = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    fitted = ocsvm.fit_many(groups, nu=task.nu, gamma=task.gamma)
    ModelStore(storage).write_shard(task.version, task.shard, fitted.params)
    n = len(groups)
    slot = np.full(n, -1, dtype=np.int32)
    slot[np.asarray(fitted.fitted_indices, dtype=np.int64)] = np.arange(len(fitted.fitted_indices), dtype=np.int32)
    n_sv = np.zeros(n, dtype=np.int32)
    n_sv[np.asarray(fitted.fitted_indices, dtype=np.int64)] = fitted.params.n_sv
    reasons = [fitted.failures.get(i) for i in range(n)]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return pa.table(
        {
            "device": meta.column("device").take(pa.array(starts)),
            "sensor": meta.column("sensor").take(pa.array(starts)),
            "shard": pa.array(np.full(n, task.shard, dtype=np.int32)),
            "slot": pa.array(slot),
            "status": pa.array(["ok" if r is None else "failed" for r in reasons], pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "n_train": pa.array(np.diff(bounds).astype(np.int64)),
            "n_sv": pa.array(n_sv),
            "trained_at": pa.array([now] * n, pa.string()),
        }
    )


def train(
    *,
    storage_url: str,
    catalog: Catalog,
    executor: Executor,
    from_us: int,
    to_us: int,
    kind: str = "ocsvm",
    nu: float = 0.05,
    gamma: float | str = "scale",
    features: str = "raw",
    shard_models: int = 2000,
    release: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train one model per (device, sensor) with readings in [from, to) into a new version."""
    started = time.perf_counter()
    if kind != "ocsvm":
        raise InputError(f"--kind {kind!r} is not supported; available: ocsvm")
    spec = parse_features(features)
    gamma = _check_gamma(gamma)
    if not 0 < nu <= 1:
        raise InputError(f"--nu must be in (0, 1], got {nu}")
    storage = open_storage(storage_url)
    keys = key_counts(ReadingStore(storage), from_us, to_us)
    if keys.num_rows == 0:
        raise InputError(f"no readings between {iso(from_us)} and {iso(to_us)} to train on")
    costs = keys.column("rows").to_numpy().astype(np.float64)
    starts = plan_shards(costs, max_models=shard_models, target_shards=executor.workers)
    params = {"nu": nu, "gamma": gamma, "min_train_rows": MIN_TRAIN_ROWS}
    version = catalog.new_version(kind, spec.text, params, iso(from_us), iso(to_us))
    tasks = [
        TrainTask(storage_url, version, i, from_us, to_us, lo, hi, spec.text, nu, gamma)
        for i, (lo, hi) in enumerate(shard_bounds(keys, starts))
    ]
    parts: list[pa.Table | None] = [None] * len(tasks)
    errors: list[str] = []
    for done, (i, result) in enumerate(executor.map(train_shard, tasks), start=1):
        if isinstance(result, TaskError):
            errors.append(f"shard {i}: {result.error}")
        else:
            parts[i] = result
        if on_progress:
            on_progress(done, len(tasks))
    elapsed = time.perf_counter() - started
    if errors:
        catalog.finish_version(version, "failed", 0, 0, len(tasks), elapsed)
        raise FleetscoreError(f"training {version} failed: " + "; ".join(errors[:5]))
    manifest = pa.concat_tables([p for p in parts if p is not None])
    shards = _shard_table(tasks, manifest, costs, starts)
    info = VersionInfo(version, kind, spec.text, params, library_versions(), ocsvm.FORMAT_VERSION)
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
        if gamma in ("scale", "auto"):
            return gamma
        try:
            gamma = float(gamma)
        except ValueError:
            raise InputError(f"--gamma must be 'scale', 'auto' or a positive number, got {gamma[:40]!r}") from None
    if not np.isfinite(gamma) or gamma <= 0:
        raise InputError(f"--gamma must be a positive number, got {gamma}")
    return float(gamma)


def _shard_table(tasks: list[TrainTask], manifest: pa.Table, costs: np.ndarray, starts: np.ndarray) -> pa.Table:
    ends = np.append(starts[1:], len(costs))
    return pa.table(
        {
            "shard": pa.array([t.shard for t in tasks], pa.int32()),
            "models": pa.array(np.bincount(manifest.column("shard").to_numpy(), minlength=len(tasks)), pa.int32()),
            "lo_device": pa.array([t.lo[0] if t.lo else None for t in tasks], pa.string()),
            "lo_sensor": pa.array([t.lo[1] if t.lo else None for t in tasks], pa.string()),
            "hi_device": pa.array([t.hi[0] if t.hi else None for t in tasks], pa.string()),
            "hi_sensor": pa.array([t.hi[1] if t.hi else None for t in tasks], pa.string()),
            "cost": pa.array([float(costs[a:b].sum()) for a, b in zip(starts, ends)], pa.float64()),
        }
    )
