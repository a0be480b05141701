"""models import-sklearn: a trusted pickled pipeline becomes an array model that scores like sklearn; a hostile
pickle runs no code, with or without --trust-pickle."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.errors import ModelFormatError
from fleetscore.services.sklearn_import import load_pickle

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


def test_import_and_score_like_sklearn(cli, home, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pipe = make_pipeline(StandardScaler(), OneClassSVM(nu=0.0001, gamma=0.01)).fit(rng.normal(50, 5, size=(300, 1)))
    model = tmp_path / "model.pkl"
    joblib.dump(pipe, model)
    r = cli("models", "import-sklearn", model, "--device", "Machine-1", "--sensor", "Tag-1", "--trust-pickle", "--json")
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
        r = cli("models", "import-sklearn", path, "--device", "d", "--sensor", "s", "--trust-pickle", "--json")
        assert r.exit_code == 2, (name, r.stdout)
        assert r.json["error"]
    assert cli("models", "import-sklearn", tmp_path / "missing.pkl", "--device", "d", "--sensor", "s",
               "--trust-pickle").exit_code == 2
    good = tmp_path / "good.pkl"
    joblib.dump(make_pipeline(StandardScaler(), OneClassSVM()).fit(np.arange(20.0).reshape(-1, 1)), good)
    bad_id = cli("models", "import-sklearn", good, "--device", "", "--sensor", "s", "--trust-pickle", "--json")
    assert bad_id.exit_code == 2 and "device id is empty" in bad_id.json["error"]
    wrong_features = cli("models", "import-sklearn", good, "--device", "d", "--sensor", "s", "--features", "window:1m",
                         "--trust-pickle", "--json")
    assert wrong_features.exit_code == 2 and "feature" in wrong_features.json["error"]
    assert cli("models", "versions", "--json").json["versions"] == []


class _Calls:
    """Pickles as a call of ``func(*args)``: what a hostile model file does on load."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _hostile_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """Pickles that create ``marker`` when unpickled freely: os.system, builtins.open, and one hidden in a
    joblib object array inside a real pipeline."""
    pipe = make_pipeline(StandardScaler(), OneClassSVM()).fit(np.arange(20.0).reshape(-1, 1))
    pipe.steps[0][1].feature_names_in_ = np.array([_Calls(builtins.open, str(marker), "w")], dtype=object)
    files = {"system.pkl": pickle.dumps(_Calls(os.system, f"touch {marker}")),
             "open.pkl": pickle.dumps(_Calls(builtins.open, str(marker), "w"), protocol=2)}
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    joblib.dump(pipe, tmp_path / "nested.joblib")
    return {name: tmp_path / name for name in [*files, "nested.joblib"]}


def test_hostile_pickle_runs_no_code(cli, home, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, path in _hostile_files(tmp_path, marker).items():
        refused = cli("models", "import-sklearn", path, "--device", "d", "--sensor", "s", "--json")
        assert refused.exit_code == 2 and "--trust-pickle" in refused.json["error"], (name, refused.stdout)
        assert "runs any code" in refused.json["error"]
        trusted = cli("models", "import-sklearn", path, "--device", "d", "--sensor", "s", "--trust-pickle")
        assert trusted.exit_code == 2, (name, trusted.stdout)
        assert "refusing to load" in trusted.stderr and "Traceback" not in trusted.stderr, (name, trusted.stderr)
        assert not marker.exists(), name
    assert cli("models", "versions", "--json").json["versions"] == []


def test_load_pickle_restricts_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, path in _hostile_files(tmp_path, marker).items():
        with pytest.raises(ModelFormatError, match="refusing to load"):
            load_pickle(path, trust_pickle=True)
        assert not marker.exists(), name


def test_genuine_pickles_of_every_format_import(cli, home, tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(10, 2, size=(50, 1))
    pipe = make_pipeline(StandardScaler(), OneClassSVM(gamma=0.1)).fit(pd.DataFrame({"x": x[:, 0]}))  # object array
    files = {f"p{proto}.pkl": pickle.dumps(pipe, protocol=proto) for proto in (0, 2, 5)}
    files["bare.pkl"] = pickle.dumps(OneClassSVM(gamma=0.1).fit(x))
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    joblib.dump(pipe, tmp_path / "plain.joblib")
    joblib.dump(pipe, tmp_path / "zlib.joblib", compress=3)
    for name in [*files, "plain.joblib", "zlib.joblib"]:
        r = cli("models", "import-sklearn", tmp_path / name, "--device", "d", "--sensor", "s", "--trust-pickle", "--json")
        assert r.exit_code == 0 and r.json["models"] == 1, (name, r.stdout, r.stderr)
