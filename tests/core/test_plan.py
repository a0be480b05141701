"""Shard planning: contiguous, capped, cost-balanced; key-range masks are exact."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from fleetscore.core.plan import device_starts, group_bounds, key_range_mask, plan_shards


def shards(starts: np.ndarray, n: int) -> list[tuple[int, int]]:
    ends = list(starts[1:]) + [n]
    return list(zip(starts.tolist(), ends))


def test_cap_and_cover() -> None:
    starts = plan_shards(np.ones(1000), max_models=300)
    parts = shards(starts, 1000)
    assert parts[0][0] == 0 and parts[-1][1] == 1000
    assert all(b - a <= 300 for a, b in parts) and len(parts) == 4


def test_cost_balance_isolates_a_heavy_model() -> None:
    costs = np.ones(100)
    costs[50] = 1000.0
    starts = plan_shards(costs, max_models=1000, target_shards=4)
    loads = [costs[a:b].sum() for a, b in shards(starts, 100)]
    heavy = next(i for i, (a, b) in enumerate(shards(starts, 100)) if a <= 50 < b)
    assert loads[heavy] - 1000 < 50  # the heavy model is (nearly) alone
    assert len(loads) >= 2


def test_target_shards_gives_every_worker_work() -> None:
    assert len(plan_shards(np.ones(10), max_models=1000, target_shards=4)) == 4
    assert len(plan_shards(np.ones(2), max_models=1000, target_shards=4)) == 2
    assert len(plan_shards(np.ones(0), max_models=10)) == 0


def test_key_range_mask_and_groups() -> None:
    dev = pa.array(["a", "a", "b", "b", "c"])
    sen = pa.array(["x", "y", "x", "y", "x"])
    assert key_range_mask(dev, sen, ("a", "y"), ("b", "y")).tolist() == [False, True, True, False, False]
    assert key_range_mask(dev, sen, None, ("a", "y")).tolist() == [True, False, False, False, False]
    assert key_range_mask(dev, sen, ("c", "x"), None).tolist() == [False, False, False, False, True]
    assert group_bounds(dev, sen).tolist() == [0, 1, 2, 3, 4, 5]
    assert group_bounds(pa.array(["a", "a"]), pa.array(["x", "x"])).tolist() == [0, 2]


def test_shards_can_be_cut_only_between_devices() -> None:
    devices = pa.array([f"d{i // 3:02d}" for i in range(30)])  # 10 devices of 3 sensors, in key order
    cuts = device_starts(devices)
    assert cuts.tolist() == list(range(0, 30, 3))
    starts = plan_shards(np.ones(30), max_models=4, target_shards=4, cuts=cuts)
    assert starts[0] == 0 and set(starts.tolist()) <= set(cuts.tolist()) and len(starts) >= 4
    assert plan_shards(np.ones(30), max_models=2, cuts=cuts).tolist() == cuts.tolist()  # a device never split
    assert device_starts(pa.array([], pa.string())).size == 0
