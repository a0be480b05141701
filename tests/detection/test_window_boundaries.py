"""A reading's score does not depend on where scoring windows start (interval-aware look-back, core.history).

The same readings are scored as one span and as consecutive hourly windows (as the scheduler runs
them) through the real `Fleet` API; scores and severities must be identical, for series sampled
every second, minute, 5 minutes, hour, and irregularly (with a gap shorter than the maximum
look-back). Each home holds per-sensor models (the defaults' robust kind on context features, one
of them a cold-start fallback) and a device whose sensors move together (the defaults give it a
device model), so every kind's history is covered. The hourly series needs ``LOOKBACK`` hours of
history: as long as that is within the maximum look-back (7 days), its windows score as its span.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetscore.api import Fleet
from fleetscore.core.context import LOOKBACK

H = 3600
CASES = {
    # name: (sampling interval s (None: irregular), training hours, scored hours)
    "1s": (1, 2, 3),
    "1min": (60, 8, 5),
    "5min": (300, 48, 12),
    "hourly": (3600, max(24 * 12, 2 * LOOKBACK), 30),  # training holds the history the features need
    "irregular": (None, 24, 8),
}
T0 = np.datetime64("2026-03-02T00:00:00", "us")


def _times(step: int | None, hours: int, rng: np.random.Generator) -> np.ndarray:
    """Reading times (µs offsets from T0) over ``hours``: every ``step`` seconds, or irregular with a gap."""
    end = hours * H * 1_000_000
    if step is not None:
        return np.arange(0, end, step * 1_000_000, dtype=np.int64) + 250_000  # off the hour: ticks still align
    gaps = rng.exponential(180.0, size=int(hours * H / 90)) * 1_000_000
    t = np.cumsum(gaps).astype(np.int64)
    t = t[t < end]
    t = t[(t < 20 * H * 1_000_000) | (t > 23 * H * 1_000_000 + 7 * 60 * 1_000_000)]  # a 3-hour gap, across windows
    return np.unique(t)


def _fleet_table(step: int | None, hours: int, train_h: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = _times(step, hours, rng)
    n = t.size
    cols: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    cycle = np.sin(2 * np.pi * (t / 1e6) / 86_400)
    load = np.convolve(rng.standard_normal(n + 9), np.ones(10) / np.sqrt(10), "valid")
    for j, scale in enumerate((1.0, 8.0, 0.2)):
        cols[("pump", f"s{j}")] = (t, (2.0 * load + rng.standard_normal(n)) * scale + 10 * j)
    cols[("meter", "power")] = (t, 50 + 5 * cycle + rng.standard_normal(n))
    spikes = rng.standard_normal(n) * 2
    spikes[rng.choice(n, size=max(3, n // 400), replace=False)] += 25
    cols[("meter", "temp")] = (t, 20 + spikes)
    late = t[t >= train_h * H * 1_000_000 - 40 * (step or 180) * 1_000_000]  # 40 readings before training ends: a fallback
    cols[("late", "flow")] = (late, rng.standard_normal(late.size) + 3)
    ts = np.concatenate([v[0] for v in cols.values()]) + T0.astype(np.int64)
    return pa.table({
        "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array(np.concatenate([[d] * v[0].size for (d, _), v in cols.items()]), pa.string()),
        "sensor": pa.array(np.concatenate([[s] * v[0].size for (_, s), v in cols.items()]), pa.string()),
        "value": pa.array(np.concatenate([v[1] for v in cols.values()]), pa.float64()),
    })


def _iso(offset_s: int) -> str:
    return str(T0 + np.timedelta64(offset_s, "s")) + "Z"


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])


@pytest.mark.parametrize("case", list(CASES))
def test_hourly_windows_score_as_one_span(tmp_path: Path, case: str) -> None:
    step, train_h, score_h = CASES[case]
    hours = train_h + score_h
    table = _fleet_table(step, hours, train_h, seed=sorted(CASES).index(case))
    fleet = Fleet.open(tmp_path / "home", workers=1)
    try:
        fleet.import_table(table)
        version = fleet.train(_iso(0), _iso(train_h * H)).version
        manifest = fleet.models(version)
        kinds = dict(zip(zip(manifest.column("device").to_pylist(), manifest.column("sensor").to_pylist()),
                         manifest.column("kind").to_pylist()))
        assert kinds[("pump", "s0")] == "device" and kinds[("meter", "temp")] == "robust"
        assert manifest.filter(pc.equal(manifest.column("device"), "late")).column("fallback").to_pylist() == [True]
        assert pc.min(manifest.column("interval_s")).as_py() > 0

        span = fleet.predictions(run_id=fleet.score(_iso(train_h * H), _iso(hours * H), version=version).run_id)
        hourly = pa.concat_tables([
            fleet.predictions(run_id=fleet.score(_iso(h * H), _iso((h + 1) * H), version=version).run_id)
            for h in range(train_h, hours)])
    finally:
        fleet.close()
    span, hourly = _sorted(span), _sorted(hourly)
    scored = pc.cast(table.column("ts"), pa.int64()).to_numpy() >= T0.astype(np.int64) + train_h * H * 1_000_000
    assert span.num_rows == hourly.num_rows == int(scored.sum())
    for column in ("ts", "device", "sensor", "value", "score", "is_anomaly", "severity", "top_sensors"):
        assert span.column(column).equals(hourly.column(column)), column
    assert set(span.column("model_kind").to_pylist()) == {"device", "robust"}
