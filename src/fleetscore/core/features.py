"""Feature specs of a model version: ``raw`` (each reading's value), ``window:DURATION`` aggregates,
or ``context:LOOKBACK`` (each reading with features of its recent past, see `fleetscore.core.context`).

``LOOKBACK`` is the longest history scoring reads before a window (default, and plain ``context``:
`fleetscore.core.history.MAX_LOOKBACK_S`, 7 days); within it scoring reads back as many readings
as the features need, at each model's learned sampling interval (`fleetscore.core.history`).

``build_features`` turns canonical readings into the rows that get scored (``meta``) and their
feature matrix ``X``; training and scoring share it so a model sees the same features in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.context import (
    CONTEXT_FEATURES,
    GATED,
    HEAVY_TAILED,
    ONE_SIDED,
    SEASONAL,
    SHORT_HISTORY,
    context_features,
)
from fleetscore.core.history import MAX_LOOKBACK_S
from fleetscore.core.plan import group_bounds
from fleetscore.core.times import parse_duration
from fleetscore.core.windows import WINDOW_FEATURES, tumbling_aggregate, window_feature_matrix
from fleetscore.errors import InputError, ModelFormatError

_DAY_US = 86_400_000_000
#: The most history scoring reads before a window for ``context`` features (plain ``context``); what it
#: reads is counted in readings at each model's learned interval (`fleetscore.core.history`): ``LOOKBACK``
#: readings. Versions trained before intervals were learned say ``context:30m`` (or ``31m``) and read that
#: fixed span.
DEFAULT_CONTEXT_LOOKBACK_S = MAX_LOOKBACK_S
#: First model format whose ``context`` features mean what `build_features` computes now (format 5: the four
#: features alone, robust models with training envelopes, one-sided flat and the persistence rule; format 4:
#: each feature followed by a novelty code; format 3: the drift feature counts only a shift that the reading
#: itself and a nearer baseline share, the residual only a departure from the drift's baseline too); older
#: context models would score differently, so they are refused with a request to retrain.
CONTEXT_FORMAT = 5


@dataclass(frozen=True)
class FeatureSpec:
    """``raw``, tumbling windows of ``width_s`` seconds, or ``context`` reading at most ``width_s`` of history."""

    name: str
    width_s: int = 0

    @property
    def n_features(self) -> int:
        """Feature columns a model fits."""
        return {"raw": 1, "context": len(CONTEXT_FEATURES)}.get(self.name, len(WINDOW_FEATURES))

    @property
    def heavy_tailed(self) -> tuple[bool, ...]:
        """Per feature: a heavy far tail (calibrated with an exponential tail, `fleetscore.core.calibrate`)."""
        return HEAVY_TAILED if self.name == "context" else (False,) * self.n_features

    @property
    def short_history(self) -> tuple[bool, ...]:
        """Per feature: usable by a fallback model fitted on a short history."""
        return SHORT_HISTORY if self.name == "context" else (True,) * self.n_features

    @property
    def seasonal(self) -> tuple[bool, ...]:
        """Per feature: its center may follow a daily profile (the value itself, and context's level changes)."""
        return {"raw": (True,), "context": SEASONAL}.get(self.name, (False,) * self.n_features)

    @property
    def one_sided(self) -> tuple[int, ...]:
        """Per feature: the side its deviations count on (-1 below, 0 both): context's flat counts only falls."""
        return ONE_SIDED if self.name == "context" else (0,) * self.n_features

    @property
    def gated(self) -> tuple[bool, ...]:
        """Per feature: a persisting or repeated deviation stops alarming (context's level, residual and drift)."""
        return GATED if self.name == "context" else (False,) * self.n_features

    @property
    def capped(self) -> tuple[bool, ...]:
        """Per feature: values far outside the training range alarm whatever the fitted tail (the level)."""
        return {"raw": (True,), "context": (True, False, False, False)}.get(self.name, (False,) * self.n_features)

    @property
    def lookback_s(self) -> int:
        """Seconds of readings before a scored window its features may read: ``context``, the most (the
        readings it needs at the learned interval, `fleetscore.core.history`; all of it when the interval
        is unknown); ``window:D``, the window's width (the window holding the window's start); ``raw``, 0."""
        return self.width_s if self.name in ("context", "window") else 0

    def __str__(self) -> str:
        return self.text

    @property
    def text(self) -> str:
        return "raw" if self.name == "raw" else f"{self.name}:{_fmt(self.width_s)}"


def _fmt(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_features(text: str) -> FeatureSpec:
    """Parse ``raw``, ``window:1m`` or ``context[:30m]`` (durations as parse_duration accepts)."""
    text = (text or "").strip()
    if text == "raw":
        return FeatureSpec("raw")
    if text.startswith("window:"):
        return FeatureSpec("window", parse_duration(text.removeprefix("window:")))
    if text == "context":
        return FeatureSpec("context", DEFAULT_CONTEXT_LOOKBACK_S)
    if text.startswith("context:"):
        return FeatureSpec("context", parse_duration(text.removeprefix("context:")))
    raise InputError(
        f"--features must be 'raw', 'window:DURATION' (e.g. window:1m) or 'context[:LOOKBACK]', got {text[:40]!r}"
    )


def check_features_format(version: str, features: str, format_version: int) -> None:
    """ModelFormatError if model ``version`` (format ``format_version``) was trained on older context features."""
    if format_version < CONTEXT_FORMAT and parse_features(features).name == "context":
        raise ModelFormatError(
            f"model version {version} (format {format_version}) was trained on context features of an older "
            f"fleetscore (they changed in format {CONTEXT_FORMAT}); retrain it with fleetscore train")


def day_phase(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Time of day of each timestamp as a fraction of a UTC day, in [0, 1)."""
    us: np.ndarray = pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False)
    phase: np.ndarray = (us % _DAY_US) / _DAY_US
    return phase


def build_features(readings: pa.Table, spec: FeatureSpec, grouped: bool = False) -> tuple[pa.Table, np.ndarray]:
    """Scored rows (with ts, device, sensor, value and, for windows, the aggregates) and X.

    ``grouped``: the readings already hold each (device, sensor)'s rows together and in time order (as
    `fleetscore.storage.readings.ReadingStore.read_range` returns them), so context features keep that
    order instead of sorting by key again."""
    if spec.name == "raw":
        meta = readings.select(["ts", "device", "sensor", "value"])
        x = readings.column("value").to_numpy().reshape(-1, 1).astype(np.float64, copy=False)
        return meta, x
    if spec.name == "context":
        return _context(readings, grouped)
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


def _context(readings: pa.Table, grouped: bool) -> tuple[pa.Table, np.ndarray]:
    """One row per reading, grouped by (device, sensor) in time order (sorted so unless ``grouped``), with
    its context features."""
    meta = readings.select(["ts", "device", "sensor", "value"])
    if meta.num_rows and not grouped:
        meta = meta.sort_by([("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])
    starts = group_bounds(meta.column("device"), meta.column("sensor"))[:-1]
    return meta, context_features(meta.column("value").to_numpy(), starts)
