"""Run planning: cut a sorted list of (device, sensor) models into cost-balanced shards.

Shards are contiguous ranges of the keys in key order (bucket, device, sensor; see
:mod:`fleetscore.core.keys`), so a shard's readings lie in one bucket, or a few neighbouring ones,
of the stored readings (co-partitioning: a task reads only its part). The cost of a model is what
scoring or training it costs (rows × support vectors, plus a fixed cost per model), not just 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Fixed cost of one model in units of (row × support vector): fitting one with scikit-learn costs about
#: as much Python overhead as this many kernel evaluations of libsvm, whatever its size.
MODEL_COST = 1000.0
#: With several workers, this many shards per worker: the last tasks of a run then end close together.
SHARDS_PER_WORKER = 4


def fit_cost(rows: np.ndarray, nu: float) -> np.ndarray:
    """Estimated cost of fitting each model: rows × expected support vectors (at least nu × rows)."""
    rows = np.asarray(rows, dtype=np.float64)
    return MODEL_COST + rows * np.maximum(1.0, nu * rows)


def score_cost(rows: np.ndarray, n_sv: np.ndarray) -> np.ndarray:
    """Cost of scoring each model: its rows × its support vectors (kernel evaluations)."""
    return np.asarray(rows, dtype=np.float64) * np.maximum(np.asarray(n_sv, dtype=np.float64), 1.0)


def target_shards(workers: int) -> int:
    """Shards to make at least: one worker needs no split; several get a few shards each."""
    return 1 if workers <= 1 else SHARDS_PER_WORKER * workers


def plan_shards(costs: np.ndarray, max_models: int, target_shards: int = 1,
                cuts: np.ndarray | None = None) -> np.ndarray:
    """Shard boundaries for models in key order: returns ``starts`` with starts[0] == 0.

    Shards hold at most ``max_models`` models, at least ``target_shards`` shards are made when
    there are that many models (so every worker gets work), cuts fall where the cumulative cost
    crosses equal shares, and a model costing a whole share or more gets a shard of its own, so it
    does not stall a shard of cheap ones. ``cuts`` (ascending model indices, 0 first): the only
    places a shard may start (`device_starts`: a device's models stay in one shard, even when they
    are more than ``max_models``); each planned start moves back to the nearest of them.
    """
    starts = _plan(costs, max_models, target_shards)
    if cuts is None or not starts.size:
        return starts
    allowed = np.asarray(cuts, dtype=np.int64)
    return np.unique(allowed[np.searchsorted(allowed, starts, side="right") - 1])


def device_starts(devices: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Indices where a new device begins in keys sorted in key order (a device's keys are contiguous)."""
    n = len(devices)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.ones(n, dtype=bool)
    if n > 1:
        change[1:] = pc.not_equal(devices.slice(1), devices.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return np.flatnonzero(change).astype(np.int64)


def _plan(costs: np.ndarray, max_models: int, target_shards: int) -> np.ndarray:
    n = len(costs)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    costs = np.maximum(np.asarray(costs, dtype=np.float64), 1.0)
    n_shards = max(int(np.ceil(n / max_models)), min(target_shards, n))
    heavy = np.zeros(n, dtype=bool)
    while True:  # what is left is shared out again, so isolating one heavy model can reveal another
        share = costs[~heavy].sum() / max(1, n_shards - int(heavy.sum()))
        more = ~heavy & (costs >= share)
        if not more.any():
            break
        heavy |= more
    light = max(1, n_shards - int(heavy.sum()))  # the other shards split the light models' cost evenly
    cum = np.cumsum(np.where(heavy, 0.0, costs))
    cuts = np.searchsorted(cum, cum[-1] / light * np.arange(1, light), side="left") + 1
    alone = np.flatnonzero(heavy)
    bounds = np.unique(np.concatenate([[0, n], cuts, alone, alone + 1]))
    bounds = bounds[(bounds >= 0) & (bounds <= n)]
    out: list[int] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out.extend(range(int(lo), int(hi), max_models))
    return np.asarray(out, dtype=np.int64)


def key_range_mask(
    devices: pa.Array, sensors: pa.Array, lo: tuple[str, str] | None, hi: tuple[str, str] | None
) -> np.ndarray:
    """Rows whose (device, sensor) lies in [lo, hi) in lexicographic order (None = open end)."""
    mask = np.ones(len(devices), dtype=bool)
    if lo is not None:
        gt = pc.greater(devices, lo[0])
        eq = pc.and_(pc.equal(devices, lo[0]), pc.greater_equal(sensors, lo[1]))
        mask &= pc.or_(gt, eq).to_numpy(zero_copy_only=False)
    if hi is not None:
        lt = pc.less(devices, hi[0])
        eq = pc.and_(pc.equal(devices, hi[0]), pc.less(sensors, hi[1]))
        mask &= pc.or_(lt, eq).to_numpy(zero_copy_only=False)
    return mask


def group_bounds(devices: pa.Array, sensors: pa.Array) -> np.ndarray:
    """Start offsets of runs of equal (device, sensor) in rows sorted by key, plus the end."""
    n = len(devices)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    if n > 1:
        d = pc.not_equal(devices.slice(1), devices.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        s = pc.not_equal(sensors.slice(1), sensors.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        change[1:] = d | s
    return np.append(np.flatnonzero(change), n).astype(np.int64)
