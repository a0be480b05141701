"""models import-sklearn: a trusted pickled pipeline becomes an array model that scores like sklearn."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import numpy as np
import pyarrow.parquet as pq
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


def test_import_and_score_like_sklearn(cli, home, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pipe = make_pipeline(StandardScaler(), OneClassSVM(nu=0.0001, gamma=0.01)).fit(rng.normal(50, 5, size=(300, 1)))
    model = tmp_path / "model.pkl"
    joblib.dump(pipe, model)
    r = cli("models", "import-sklearn", model, "--device", "Machine-1", "--sensor", "Tag-1", "--json")
    assert r.exit_code == 0, r.stderr
    version = r.json["version"]
    assert r.json["models"] == 1 and not r.json["released"]
    values = np.concatenate([rng.normal(50, 5, 58), [500.0, -500.0]])
    ts = [f"2026-01-01T00:{m:02d}:00Z" for m in range(60)]
    data = tmp_path / "classic.csv"
    data.write_text("TS,Device,Tag,Value\n" + "".join(f"{t},Machine-1,Tag-1,{float(v)!r}\n" for t, v in zip(ts, values)))
    assert cli("import", data, "--json").json["accepted"] == 60
    run = cli("score", "--from", T0, "--to", T1, "--version", version, "--workers", "1", "--json").json
    assert run["status"] == "succeeded" and run["rows"] == 60
    out = tmp_path / "p.parquet"
    cli("predictions", "--run", run["run_id"], "--out", out)
    got = pq.read_table(out)
    np.testing.assert_allclose(got.column("score").to_numpy(), pipe.decision_function(values.reshape(-1, 1)), rtol=1e-9)
    assert got.column("is_anomaly").to_pylist() == (pipe.predict(values.reshape(-1, 1)) == -1).tolist()


def test_unconvertible_pickles_exit_2(cli, home, tmp_path: Path) -> None:
    linear = make_pipeline(StandardScaler(), OneClassSVM(kernel="linear")).fit(np.arange(20.0).reshape(-1, 1))
    cases = {
        "linear.pkl": pickle.dumps(linear),
        "unfitted.pkl": pickle.dumps(make_pipeline(StandardScaler(), OneClassSVM())),
        "dict.pkl": pickle.dumps({"not": "a model"}),
        "garbage.pkl": b"\x80\x04 this is not a pickle",
    }
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        r = cli("models", "import-sklearn", path, "--device", "d", "--sensor", "s", "--json")
        assert r.exit_code == 2, (name, r.stdout)
        assert r.json["error"]
    assert cli("models", "import-sklearn", tmp_path / "missing.pkl", "--device", "d", "--sensor", "s").exit_code == 2
    good = tmp_path / "good.pkl"
    joblib.dump(make_pipeline(StandardScaler(), OneClassSVM()).fit(np.arange(20.0).reshape(-1, 1)), good)
    bad_id = cli("models", "import-sklearn", good, "--device", "", "--sensor", "s", "--json")
    assert bad_id.exit_code == 2 and "device id is empty" in bad_id.json["error"]
    wrong_features = cli("models", "import-sklearn", good, "--device", "d", "--sensor", "s", "--features", "window:1m", "--json")
    assert wrong_features.exit_code == 2 and "feature" in wrong_features.json["error"]
    assert cli("models", "versions", "--json").json["versions"] == []
