"""Feature specs of a model version: ``raw`` (each reading's value) or ``window:DURATION`` aggregates.

``build_features`` turns canonical readings into the rows that get scored (``meta``) and their
feature matrix ``X``; training and scoring share it so a model sees the same features in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fleetscore.core.windows import WINDOW_FEATURES, parse_duration, tumbling_aggregate, window_feature_matrix
from fleetscore.errors import InputError


@dataclass(frozen=True)
class FeatureSpec:
    """``raw`` or tumbling windows of ``width_s`` seconds."""

    name: str
    width_s: int = 0

    @property
    def n_features(self) -> int:
        return 1 if self.name == "raw" else len(WINDOW_FEATURES)

    def __str__(self) -> str:
        return self.text

    @property
    def text(self) -> str:
        return "raw" if self.name == "raw" else f"window:{_fmt(self.width_s)}"


def _fmt(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_features(text: str) -> FeatureSpec:
    """Parse ``raw`` or ``window:1m`` (any duration parse_duration accepts)."""
    text = (text or "").strip()
    if text == "raw":
        return FeatureSpec("raw")
    if text.startswith("window:"):
        return FeatureSpec("window", parse_duration(text.removeprefix("window:")))
    raise InputError(f"--features must be 'raw' or 'window:DURATION' (e.g. window:1m), got {text[:40]!r}")


def build_features(readings: pa.Table, spec: FeatureSpec) -> tuple[pa.Table, np.ndarray]:
    """Scored rows (with ts, device, sensor, value and, for windows, the aggregates) and X."""
    if spec.name == "raw":
        meta = readings.select(["ts", "device", "sensor", "value"])
        x = readings.column("value").to_numpy().reshape(-1, 1).astype(np.float64, copy=False)
        return meta, x
    agg = tumbling_aggregate(readings.select(["ts", "device", "sensor", "value"]), spec.width_s)
    meta = pa.table(
        {
            "ts": agg.column("window_start"),
            "device": agg.column("device"),
            "sensor": agg.column("sensor"),
            "value": agg.column("mean"),
            "window_start": agg.column("window_start"),
            **{name: agg.column(name) for name in WINDOW_FEATURES},
        }
    )
    return meta, window_feature_matrix(agg)
