"""The drift feature: a real ramp alarms, the readings after a short anomaly do not; old context models are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fleetscore.api import Fleet
from fleetscore.core import robust
from fleetscore.core.context import context_features
from fleetscore.errors import ModelFormatError
from fleetscore.storage.models import ModelStore

RNG = np.random.default_rng(21)
DRIFT_ONLY = (False, False, True, False)


def drift_model() -> robust.RobustParams:
    """A robust model on the drift feature alone, fitted on a day of clean readings (sigma 1)."""
    clean = 50.0 + RNG.normal(size=1440)
    return robust.fit_one(context_features(clean, np.array([0])), use=DRIFT_ONLY)


def drift_alarms(params: robust.RobustParams, x: np.ndarray) -> np.ndarray:
    X = context_features(x, np.array([0]))
    return robust.decision_function(params, np.zeros(len(x), dtype=np.int64), X) < 0


@pytest.mark.parametrize("kind", ["ramp", "noise", "spike"])
def test_no_drift_alarms_in_the_readings_after_a_short_anomaly(kind: str) -> None:
    """An anomaly shorter than half a baseline window: it can move neither baseline's median."""
    params = drift_model()
    x = 50.0 + RNG.normal(size=200)
    seg = slice(100, 107)
    if kind == "ramp":
        x[seg] += np.linspace(4.0, 10.0, 7)
    elif kind == "noise":
        x[seg] += 8.0 * RNG.normal(size=7)
    else:
        x[100:102] += 10.0
    alarms = drift_alarms(params, x)
    assert not alarms[107:].any(), np.flatnonzero(alarms[107:]) + 107
    if kind == "ramp":
        assert alarms[seg].any()


def test_a_sustained_ramp_keeps_alarming() -> None:
    params = drift_model()
    x = 50.0 + RNG.normal(size=200)
    x[100:] += np.arange(100) * 0.5
    alarms = drift_alarms(params, x)
    assert alarms[110:].all(), np.flatnonzero(~alarms[110:]) + 110


def test_a_context_version_of_an_older_format_is_refused(home, small_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = Fleet.open(home, workers=1)
    try:
        fleet.import_table(small_fleet.select(["ts", "device", "sensor", "value"]))
        version = fleet.train("2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z").version
        store = ModelStore(fleet.storage)
        info, manifest = store.read_manifest(version)
        store.write_manifest(replace(info, format_version=2), manifest, store.read_shards(version))
        with pytest.raises(ModelFormatError, match="retrain"):
            fleet.score("2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z", version=version)
    finally:
        fleet.close()


def test_no_residual_alarms_when_readings_return_after_a_level_change() -> None:
    """A 10-reading shift lifts the recent median; the normal readings after it still match the older baseline."""
    clean = 50.0 + RNG.normal(size=1440)
    params = robust.fit_one(context_features(clean, np.array([0])), use=(False, True, False, False))
    x = 50.0 + RNG.normal(size=200)
    x[100:110] += 8.0
    x[150] += 10.0
    X = context_features(x, np.array([0]))
    alarms = robust.decision_function(params, np.zeros(len(x), dtype=np.int64), X) < 0
    assert not alarms[111:150].any(), np.flatnonzero(alarms[111:150]) + 111
    assert alarms[150]
