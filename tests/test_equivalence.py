"""fleetscore's predictions equal scikit-learn's own pipeline on the same data and hyper-parameters."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.api import Fleet
from fleetscore.core.features import build_features, parse_features

T0, T6, T8 = "2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T08:00:00Z"


@pytest.mark.parametrize("features,nu,gamma", [("raw", 0.05, "scale"), ("window:5m", 0.1, 0.5), ("raw", 0.2, "auto")])
def test_predictions_equal_sklearn_pipeline(home, small_fleet, features: str, nu: float, gamma) -> None:  # type: ignore[no-untyped-def]
    fleet = Fleet.open(home, workers=1)
    fleet.import_table(small_fleet.select(["ts", "device", "sensor", "value"]))
    version = fleet.train(T0, T6, nu=nu, gamma=gamma, features=features).version
    run = fleet.score(T6, T8, version=version)
    assert run.status.value == "succeeded"
    preds = fleet.predictions(run_id=run.run_id)
    spec = parse_features(features)
    train_rows = fleet.readings(T0, T6)
    test_rows = fleet.readings(T6, T8)
    checked = 0
    for device, sensor in {(r["device"], r["sensor"]) for r in preds.select(["device", "sensor"]).to_pylist()}:
        def pick(t, device=device, sensor=sensor):  # type: ignore[no-untyped-def]
            return t.filter(pc.and_(pc.equal(t.column("device"), device), pc.equal(t.column("sensor"), sensor)))

        _, x_train = build_features(pick(train_rows).sort_by("ts"), spec)
        meta, x_test = build_features(pick(test_rows).sort_by("ts"), spec)
        pipe = make_pipeline(StandardScaler(), OneClassSVM(kernel="rbf", nu=nu, gamma=gamma)).fit(x_train)
        mine = pick(preds).sort_by("ts")
        assert mine.column("ts").equals(meta.column("ts"))
        np.testing.assert_allclose(mine.column("score").to_numpy(), pipe.decision_function(x_test), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(mine.column("is_anomaly").to_numpy(zero_copy_only=False), pipe.predict(x_test) == -1)
        checked += 1
    assert checked == 18
    fleet.close()
