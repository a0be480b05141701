"""Model health: a model whose anomaly rate in a run is far above what it was calibrated for is unhealthy.

A calibrated model alarms on about ``expected`` (its alarm rate, e.g. 1e-4) of normal rows. A real
anomaly lasts a few readings, so within one run a healthy model flags a handful of rows at most; a
model that flags a large share of them (``UNHEALTHY_RATE``) has gone bad: its sensor moved to a new
normal (drift, recalibration, replaced hardware) or the model was trained on the wrong data. Such a
model is listed in the run record and can be retrained on its own (``train --only-unhealthy``).

Pure: a task's per-model counts in, a list of unhealthy models out.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: A model flagging at least this share of its rows in a run is unhealthy.
UNHEALTHY_RATE = 0.25
#: ... when it scored at least this many rows in the run (fewer says too little).
MIN_ROWS = 20
#: At most this many unhealthy models are listed per run (all are counted).
MAX_LISTED = 1000


def unhealthy_counts(counts: pa.Table) -> list[dict[str, Any]]:
    """Models that look broken, from a task's per-model counts (``device, sensor, rows, anomalies``)."""
    rows, flagged = counts.column("rows"), pc.fill_null(counts.column("anomalies"), 0)
    bad = pc.and_(pc.greater_equal(rows, MIN_ROWS),
                  pc.greater_equal(pc.divide(pc.cast(flagged, pa.float64()), pc.cast(rows, pa.float64())), UNHEALTHY_RATE))
    counts = counts.filter(bad)
    return [
        {"device": d, "sensor": s, "rows": n, "anomalies": a}
        for d, s, n, a in zip(*(counts.column(c).to_pylist() for c in ("device", "sensor", "rows", "anomalies")))
    ]


def describe(model: dict[str, Any], expected: float | None) -> dict[str, Any]:
    """The model's entry with its rate, the rate it was calibrated for and a reason in words."""
    rate = model["anomalies"] / model["rows"] if model["rows"] else 0.0
    what = "flags nearly everything" if rate >= 0.5 else "drifting"
    calibrated = f"calibrated for {expected:.2%}" if expected is not None else "not calibrated"
    return model | {
        "rate": round(rate, 4), "expected": expected,
        "reason": f"{what}: {model['anomalies']} of {model['rows']} rows flagged ({rate:.0%}), {calibrated}",
    }


def expected_rate(params: dict[str, Any]) -> float | None:
    """What a version's models were calibrated to flag: its alarm rate, else an ocsvm's nu (an upper bound)."""
    for key in ("alarm_rate", "nu"):
        value = params.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
