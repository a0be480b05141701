"""Model health: a model whose anomaly rate in a run is far above what it was calibrated for is unhealthy.

A calibrated model alarms on about ``expected`` (its alarm rate, e.g. 1e-4) of normal rows. A real
anomaly lasts a few readings, so within one run a healthy model flags a handful of rows at most; a
model that flags a large share of them (``UNHEALTHY_RATE``) has gone bad: its sensor moved to a new
normal (drift, recalibration, replaced hardware) or the model was trained on the wrong data. Such a
model is counted and listed with the run (`fleetscore.core.runs.RUN_LISTS`) and can be retrained on its
own (``train --only-unhealthy``).

Operators' feedback is the other sign: a model whose incidents operators marked ``false`` at least
`FALSE_MARKS` times while its version scored (`false_alarms`) is listed with a suggested action:
retrain on recent data when runs also find it unhealthy (its normal moved), else raise its
threshold (``fleetscore models adjust``) to `ADJUST_FACTOR` times fewer alarms than it was calibrated for.

Pure: a task's per-model counts in, a list of unhealthy models out; false-mark counts in, suggestions out.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.calibrate import DEFAULT_ALARM_RATE

#: A model flagging at least this share of its rows in a run is unhealthy.
UNHEALTHY_RATE = 0.25
#: ... when it scored at least this many rows in the run (fewer says too little).
MIN_ROWS = 20
#: A model whose incidents were marked false this often (while its version scored) is listed with an action.
FALSE_MARKS = 2
#: Raising a threshold suggests an alarm rate this many times below the model's current one (or the default rate).
ADJUST_FACTOR = 10.0


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


def suggested_rate(expected: float | None) -> float:
    """The alarm rate to suggest for a model with too many false alarms: `ADJUST_FACTOR` times below its own."""
    base = expected if expected is not None and 0 < expected < 0.5 else DEFAULT_ALARM_RATE
    return float(f"{base / ADJUST_FACTOR:.2g}")


def false_alarms(marks: Mapping[tuple[str, str], int], expected: Mapping[tuple[str, str], float | None],
                 unhealthy: Collection[tuple[str, str]], retrain_command: str,
                 min_marks: int = FALSE_MARKS) -> list[dict[str, Any]]:
    """Models with at least ``min_marks`` incidents marked false, each with a suggested action and its command.

    ``marks``: false marks per (device, sensor); ``expected``: each model's calibrated alarm rate;
    ``unhealthy``: models runs found flagging far more than calibrated (they are retrained with ``retrain_command``).
    """
    out = []
    for (device, sensor), n in sorted(marks.items()):
        if n < min_marks:
            continue
        rate = expected.get((device, sensor))
        entry: dict[str, Any] = {"device": device, "sensor": sensor, "false_marks": n, "expected": rate}
        if (device, sensor) in unhealthy:
            entry |= {"action": "retrain", "suggested_alarm_rate": None, "command": retrain_command,
                      "reason": f"{n} incidents marked false and it flags far more than calibrated: "
                                "retrain on recent data"}
        else:
            r = suggested_rate(rate)
            entry |= {"action": "adjust", "suggested_alarm_rate": r,
                      "command": f"fleetscore models adjust {shlex.quote(device)} {shlex.quote(sensor)} --alarm-rate {r:g}",
                      "reason": f"{n} incidents marked false: raise its threshold"}
        out.append(entry)
    return out
