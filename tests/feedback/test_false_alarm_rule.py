"""The pure rule behind `models health`'s false-alarm list, and the span cover train and evaluate use."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.core.health import false_alarms, suggested_rate
from fleetscore.core.spans import covered, overlapping, sensor_spans


def test_false_alarms_suggest_retrain_for_unhealthy_models_and_adjust_otherwise() -> None:
    marks = {("p1", "flow"): 3, ("p2", "temp"): 2, ("p3", "x"): 1}
    out = false_alarms(marks, {("p1", "flow"): 1e-4, ("p2", "temp"): 1e-3}, {("p1", "flow")},
                       "fleetscore train --only-unhealthy --from A --to B")
    assert [(u["device"], u["action"]) for u in out] == [("p1", "retrain"), ("p2", "adjust")]
    assert out[0]["command"] == "fleetscore train --only-unhealthy --from A --to B"
    assert out[0]["suggested_alarm_rate"] is None
    assert out[1]["suggested_alarm_rate"] == pytest.approx(1e-4)
    assert out[1]["command"] == "fleetscore models adjust p2 temp --alarm-rate 0.0001"
    assert false_alarms(marks, {}, set(), "x", min_marks=4) == []


def test_suggested_commands_quote_hostile_names_and_rates_stay_in_range() -> None:
    out = false_alarms({("a b", "$(rm -rf ~);x"): 2}, {}, set(), "x")
    assert out[0]["command"] == "fleetscore models adjust 'a b' '$(rm -rf ~);x' --alarm-rate 1e-05"
    assert suggested_rate(None) == suggested_rate(0.7) == 1e-5  # unknown: the default rate's tenth
    assert suggested_rate(1e-9) == pytest.approx(1e-10)  # always below the model's own
    assert suggested_rate(0.02) == pytest.approx(0.002)


def test_covered_holds_both_ends_per_sensor_only() -> None:
    us = np.array([0, 10, 20, 30, 10, 20], dtype=np.int64)
    table = pa.table({"ts": pa.array(us, pa.timestamp("us", tz="UTC")),
                      "device": ["d"] * 4 + ["e"] * 2, "sensor": ["a"] * 4 + ["a", "b"]})
    spans = sensor_spans([("d", 10, 20, ("a",)), ("e", 0, 100, ("b",))])
    assert covered(table, spans).tolist() == [False, True, True, False, False, True]
    assert covered(table, []).tolist() == [False] * 6
    assert overlapping(spans, 21, 50) == [("e", "b", 0, 100)]
