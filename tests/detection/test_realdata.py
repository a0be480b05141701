"""Real labelled series (NAB) through the default detector: it must do at least as well as a robust z-score.

The data lives outside the package (``$FLEETSCORE_DATASETS`` or ``<repo>/../shared/datasets``, see
its README); without it these tests are skipped. They follow the protocol of ``bench/realdata.py``
(train on the first 15% of each series, event recall and point precision, F1) on all 45 labelled
series, with the core functions the pipeline calls (no home, so it stays fast).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.core.features import build_features, day_phase, parse_features
from fleetscore.core.fitting import FitSettings, fit_shard
from fleetscore.core.kinds import score_bundle
from fleetscore.services.tuning import resolve

DATASETS = Path(os.environ.get("FLEETSCORE_DATASETS") or Path(__file__).resolve().parents[2].parent / "shared" / "datasets")
NAB = DATASETS / "nab"
pytestmark = pytest.mark.skipif(not (NAB / "label_windows.json").exists(),
                                reason=f"no NAB data at {NAB} (set FLEETSCORE_DATASETS to the shared datasets folder)")


def load(key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(NAB / key, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([r["timestamp"] for r in rows], dtype="datetime64[us]"), np.array([float(r["value"]) for r in rows])


def default_flags(ts: np.ndarray, value: np.ndarray, train: int) -> np.ndarray:
    """Flags of the defaults (trained on the first ``train`` rows) on every row, as the pipeline scores them."""
    choice = resolve(None, None, None, None, None)
    spec = parse_features(choice.features)
    # the store keeps the first of repeated timestamps: so does this
    keep = np.r_[True, ts[1:] != ts[:-1]]
    table = pa.table({"ts": pa.array(ts[keep].astype("int64")).cast(pa.timestamp("us", tz="UTC")),
                      "device": ["d"] * int(keep.sum()), "sensor": ["s"] * int(keep.sum()), "value": value[keep]})
    meta, X = build_features(table, spec)
    phase = day_phase(meta.column("ts"))
    n_train = int(keep[:train].sum())
    fit = fit_shard([X[:n_train]], FitSettings(choice.kind, choice.nu, choice.gamma, choice.alarm_rate,
                                               choice.min_history, heavy_tails=spec.heavy_tailed,
                                               short_history=spec.short_history, seasonal=spec.seasonal,
                                               values=spec.n_features, side=spec.one_sided,
                                               gated=spec.gated, capped=spec.capped), [phase[:n_train]])
    slots = np.full(len(X), fit.slots[0], dtype=np.int64)
    flags = score_bundle(fit.bundle, [fit.kinds[0]] * len(X), slots, X, phase) < 0
    return np.repeat(flags, np.diff(np.r_[np.flatnonzero(keep), len(ts)]))


def zscore_flags(value: np.ndarray, train: int) -> np.ndarray:
    med = np.median(value[:train])
    mad = 1.4826 * np.median(np.abs(value[:train] - med))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(value - med) / mad > 4


def f1(ts: np.ndarray, flags: np.ndarray, windows: list[list[str]], train: int) -> float:
    hit = flags & (np.arange(len(ts)) >= train)
    inside = np.zeros(len(ts), dtype=bool)
    caught = counted = 0
    for a, b in windows:
        win = (ts >= np.datetime64(a, "us")) & (ts <= np.datetime64(b, "us"))
        inside |= win
        if np.datetime64(b, "us") >= ts[train]:
            counted += 1
            caught += bool((hit & win).any())
    precision = (hit & inside).sum() / hit.sum() if hit.any() else 0.0
    recall = caught / counted if counted else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@pytest.mark.slow
def test_defaults_beat_the_robust_zscore_on_nab() -> None:
    windows = json.loads((NAB / "label_windows.json").read_text())
    ours, baseline, flags_no_anomaly, rows_no_anomaly = [], [], 0, 0
    for key, wins in sorted(windows.items()):
        ts, value = load(key)
        train = math.floor(0.15 * len(ts))
        flags = default_flags(ts, value, train)
        if key.startswith("artificialNoAnomaly/"):
            flags_no_anomaly += int(flags[train:].sum())
            rows_no_anomaly += len(ts) - train
        elif wins:
            ours.append(f1(ts, flags, wins, train))
            baseline.append(f1(ts, zscore_flags(value, train), wins, train))
    assert len(ours) == 45
    assert np.mean(ours) >= np.mean(baseline), (np.mean(ours), np.mean(baseline))
    assert 1000 * flags_no_anomaly / rows_no_anomaly <= 1.0
