"""Tests of fleetscore.core.ocsvm: flat OneClassSVM parameters and the fused scorer match scikit-learn."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.core import ocsvm
from fleetscore.core.ocsvm import (
    FORMAT_VERSION,
    FitResult,
    OcsvmParams,
    decision_function,
    fit_many,
    fit_one,
    from_sklearn,
    predict_is_anomaly,
)
from fleetscore.config import load_config
from fleetscore.errors import ConfigError, InputError, ModelFormatError

RNG = np.random.default_rng(20240601)


@pytest.fixture(params=["numba", "numpy"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(ocsvm, "DEFAULT_KERNEL", request.param)
    return request.param


def assert_matches(params: OcsvmParams, model_idx: np.ndarray, X: np.ndarray, want: np.ndarray) -> None:
    """decision_function equals ``want`` to 1e-9 relative, 1e-12 * sum|dual_coef| absolute near 0."""
    got = decision_function(params, model_idx, X)
    model_of_sv = np.repeat(np.arange(params.n_models), params.n_sv)
    dual_sum = np.bincount(model_of_sv, np.abs(params.dual_coef), minlength=params.n_models)
    tol = 1e-9 * np.abs(want) + 1e-12 * np.maximum(1.0, dual_sum[model_idx])
    bad = np.flatnonzero(~(np.abs(got - want) <= tol))
    assert got.shape == want.shape and got.dtype == np.float64
    assert bad.size == 0, f"{bad.size} rows differ, first: row {bad[0]} got {got[bad[0]]!r} want {want[bad[0]]!r}"


def check_pipeline(pipe: Pipeline | OneClassSVM, X: np.ndarray) -> OcsvmParams:
    """Convert ``pipe`` and check it scores X exactly like sklearn; returns the params."""
    params = from_sklearn(pipe)
    assert params.n_models == 1
    assert_matches(params, np.zeros(len(X), dtype=np.int64), X, pipe.decision_function(X))
    return params


def sensor(n: int, rng: np.random.Generator = RNG) -> np.ndarray:
    """Minute readings of a sensor with a daily cycle plus noise, shape (n, 1)."""
    t = np.arange(n) * 60.0
    base = rng.uniform(-20, 40) + rng.uniform(0.5, 8) * np.sin(2 * np.pi * t / 86400 + rng.uniform(0, 6))
    return (base + rng.normal(0, rng.uniform(0.05, 1.0), n))[:, None]


def probe(X: np.ndarray) -> np.ndarray:
    """Rows to score: near the training data, outliers, and extremes where every kernel term underflows."""
    lo, hi = X.min(axis=0), X.max(axis=0)
    span = np.maximum(hi - lo, 1.0)
    near = RNG.uniform(lo - span, hi + span, size=(40, X.shape[1]))
    extreme = np.array([lo - 1e6 * span, hi + 1e8 * span, np.zeros_like(lo)])
    return np.vstack([X[:10], near, extreme])


# --- equality with scikit-learn ---------------------------------------------------------------


@pytest.mark.parametrize("n_features", [1, 5])
def test_random_models_match_sklearn(kernel: str, n_features: int) -> None:
    for _ in range(3):
        cov = RNG.normal(size=(n_features, n_features))
        X = RNG.normal(size=(80, n_features)) @ cov * RNG.uniform(0.1, 100) + RNG.normal(0, 50, n_features)
        check_pipeline(make_pipeline(StandardScaler(), OneClassSVM(nu=RNG.uniform(0.02, 0.5))).fit(X), probe(X))


@pytest.mark.parametrize("gamma", [0.7, "scale", "auto"])
def test_sensor_models_match_sklearn(kernel: str, gamma: float | str) -> None:
    X = sensor(1440)
    pipe = make_pipeline(StandardScaler(), OneClassSVM(nu=0.05, gamma=gamma)).fit(X)
    params = check_pipeline(pipe, probe(X))
    if gamma == "scale":
        assert params.gamma[0] == pipe[-1]._gamma  # the resolved value, not the string


def test_one_support_vector(kernel: str) -> None:
    X = np.full((10, 1), 3.0)
    params = check_pipeline(make_pipeline(StandardScaler(), OneClassSVM(nu=0.1)).fit(X), probe(X))
    assert params.n_sv.tolist() == [1]


def test_constant_training_data(kernel: str) -> None:
    X = np.full((20, 2), 5.0)
    params = check_pipeline(make_pipeline(StandardScaler(), OneClassSVM(nu=0.05)).fit(X), probe(X))
    assert params.scale.tolist() == [[1.0, 1.0]]  # sklearn's zero-variance scale


def test_many_support_vectors(kernel: str) -> None:
    X = sensor(500)
    params = check_pipeline(make_pipeline(StandardScaler(), OneClassSVM(nu=0.9)).fit(X), probe(X))
    assert params.n_sv[0] >= 450


@pytest.mark.parametrize(
    "scaler",
    [
        StandardScaler(with_mean=False),
        StandardScaler(with_std=False),
        StandardScaler(with_mean=False, with_std=False),
        None,
    ],
)
def test_scaler_options_and_bare_svm(kernel: str, scaler: StandardScaler | None) -> None:
    X = RNG.normal(3, 2, size=(60, 2))
    svm = OneClassSVM(nu=0.1, gamma=0.5)
    pipe = svm.fit(X) if scaler is None else make_pipeline(scaler, svm).fit(X)
    check_pipeline(pipe, probe(X))


def test_shard_of_200_models_in_random_row_order(kernel: str) -> None:
    pipes = [make_pipeline(StandardScaler(), OneClassSVM(nu=0.05)).fit(sensor(60)) for _ in range(200)]
    params = OcsvmParams.concat([from_sklearn(p) for p in pipes])
    model_idx = np.repeat(np.arange(200), 25)
    X = np.vstack([probe(sensor(60))[:25] for _ in range(200)])
    want = np.concatenate([p.decision_function(X[model_idx == m]) for m, p in enumerate(pipes)])
    order = RNG.permutation(len(X))
    assert_matches(params, model_idx[order], X[order], want[order])


def test_numpy_kernel_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocsvm, "DEFAULT_KERNEL", "numpy")
    params = fit_many([sensor(60) for _ in range(30)]).params
    model_idx = RNG.integers(0, 30, 500)
    X = RNG.normal(10, 20, size=(500, 1))
    whole = decision_function(params, model_idx, X)
    monkeypatch.setattr(ocsvm, "_CHUNK_PAIRS", 7)
    np.testing.assert_array_equal(decision_function(params, model_idx, X), whole)


def test_models_without_support_vectors_score_their_intercept(kernel: str) -> None:
    X = sensor(60)
    pipe = make_pipeline(StandardScaler(), OneClassSVM()).fit(X)
    no_sv = {"sv_offsets": np.zeros(2, np.int64), "sv": np.empty((0, 1)), "dual_coef": np.empty(0)}
    bare = OcsvmParams(np.zeros((1, 1)), np.ones((1, 1)), np.ones(1), np.array([-0.25]), **no_sv)
    params = OcsvmParams.concat([bare, from_sklearn(pipe), bare])
    model_idx = np.array([0, 1, 2, 1, 0])
    Xt = probe(X)[:5]
    want = np.where(model_idx == 1, pipe.decision_function(Xt), -0.25)
    assert_matches(params, model_idx, Xt, want)


def test_zero_rows(kernel: str) -> None:
    params = fit_one(sensor(30))
    assert decision_function(params, np.zeros(0, np.int64), np.zeros((0, 1))).shape == (0,)


def test_predict_is_anomaly_matches_sklearn_predict(kernel: str) -> None:
    X = sensor(300)
    pipe = make_pipeline(StandardScaler(), OneClassSVM(nu=0.1)).fit(X)
    Xt = probe(X)
    scores = decision_function(from_sklearn(pipe), np.zeros(len(Xt), np.int64), Xt)
    np.testing.assert_array_equal(predict_is_anomaly(scores), pipe.predict(Xt) == -1)


# --- input validation of the scorer ----------------------------------------------------------


def test_non_finite_input_rejected(kernel: str) -> None:
    params = fit_one(sensor(30))
    X = np.zeros((30, 1))
    for bad in (np.nan, np.inf):
        X[17, 0] = bad
        with pytest.raises(InputError, match="input row 17 has a non-finite value"):
            decision_function(params, np.zeros(30, np.int64), X)


def test_bad_model_idx_and_shapes_rejected(kernel: str) -> None:
    params = fit_many([sensor(30), sensor(30)]).params
    X = np.zeros((3, 1))
    with pytest.raises(InputError, match=r"model_idx\[1\] = 2 is out of range"):
        decision_function(params, np.array([0, 2, 1]), X)
    with pytest.raises(InputError, match="out of range"):
        decision_function(params, np.array([0, -1, 1]), X)
    with pytest.raises(InputError, match="integer"):
        decision_function(params, np.array([0.0, 1.0, 1.0]), X)
    with pytest.raises(InputError, match="model_idx must have shape"):
        decision_function(params, np.array([0, 1]), X)
    with pytest.raises(InputError, match="2 features"):
        decision_function(params, np.array([0, 1, 1]), np.zeros((3, 2)))


def test_kernel_selection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    params = fit_one(sensor(30))
    args = (params, np.zeros(4, np.int64), np.ones((4, 1)))
    with pytest.raises(ConfigError, match="FLEETSCORE_KERNEL"):
        load_config(tmp_path, env={"FLEETSCORE_KERNEL": "cuda"})
    with pytest.raises(InputError, match="kernel must be"):
        decision_function(*args, kernel="cuda")
    assert load_config(tmp_path, env={"FLEETSCORE_KERNEL": " NumPy "}).executor.kernel == "numpy"
    monkeypatch.setattr(ocsvm, "_numba_kernel", lambda: None)  # as if numba were not installed
    with pytest.raises(ConfigError, match="numba cannot be imported"):
        decision_function(*args, kernel="numba")
    want = decision_function(*args, kernel="numpy")
    np.testing.assert_array_equal(decision_function(*args), want)  # falls back to numpy


def test_import_is_light() -> None:
    src = Path(ocsvm.__file__).parents[2]
    code = "import sys, fleetscore.core.ocsvm; print(sorted(m for m in ('numba', 'sklearn') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- OcsvmParams -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard() -> OcsvmParams:
    return fit_many([sensor(60), RNG.normal(size=(40, 1)), sensor(90)]).params


def test_round_trip_through_npz(shard: OcsvmParams) -> None:
    buf = io.BytesIO()
    np.savez(buf, **shard.to_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        loaded = OcsvmParams.from_arrays(npz)
    for name, array in shard.to_arrays().items():
        np.testing.assert_array_equal(loaded.to_arrays()[name], array)
        assert array.dtype.kind in "if"
    assert int(shard.to_arrays()["format_version"]) == FORMAT_VERSION
    X = RNG.normal(size=(20, 1))
    idx = RNG.integers(0, 3, 20)
    np.testing.assert_array_equal(decision_function(loaded, idx, X), decision_function(shard, idx, X))


Arrays = dict[str, np.ndarray]


def _set(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Arrays], None]:
    """A corruption that replaces ``arrays[name]`` by ``fn(copy)``."""

    def corrupt(arrays: Arrays) -> None:
        arrays[name] = fn(arrays[name].copy())

    return corrupt


def _with(index: tuple[int, ...], value: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a

    return fn


@pytest.mark.parametrize(
    ("corrupt", "field"),
    [
        (lambda a: a.pop("sv"), "sv"),
        (lambda a: a.pop("format_version"), "format_version"),
        (_set("format_version", lambda a: a + 1), "format_version"),
        (_set("scale", lambda a: a[:-1]), "scale"),
        (_set("mean", lambda a: a[:, 0]), "mean"),
        (_set("dual_coef", lambda a: a[:-1]), "dual_coef"),
        (_set("sv", lambda a: a.ravel()), "sv"),
        (_set("sv", _with((0, 0), np.nan)), "sv"),
        (_set("intercept", _with((1,), np.inf)), "intercept"),
        (_set("gamma", _with((2,), -0.5)), "gamma"),
        (_set("scale", _with((0, 0), 0.0)), "scale"),
        (_set("sv_offsets", lambda a: a[[0, 2, 1, 3]]), "sv_offsets"),
        (_set("sv_offsets", _with((-1,), 1)), "sv_offsets"),
        (_set("sv_offsets", _with((0,), 1)), "sv_offsets"),
        (_set("sv_offsets", lambda a: a.astype(np.float64)), "sv_offsets"),
        (_set("mean", lambda a: a.astype(np.int64)), "mean"),
    ],
)
def test_from_arrays_rejects_corruption(shard: OcsvmParams, corrupt: Callable[[Arrays], object], field: str) -> None:
    arrays = dict(shard.to_arrays())
    corrupt(arrays)
    with pytest.raises(ModelFormatError, match=field):
        OcsvmParams.from_arrays(arrays)


def test_arrays_are_read_only(shard: OcsvmParams) -> None:
    with pytest.raises(ValueError, match="read-only"):
        shard.sv_offsets[-1] = 10**9


def test_take_concat_empty(shard: OcsvmParams) -> None:
    X = RNG.normal(size=(50, 1))
    idx = RNG.integers(0, 3, 50)
    full = decision_function(shard, idx, X)
    order = np.array([2, 0, 0])
    taken = shard.take(order)
    assert taken.n_models == 3 and taken.n_sv.tolist() == shard.n_sv[order].tolist()
    sub = idx[idx != 1]
    np.testing.assert_array_equal(
        decision_function(taken, np.where(sub == 2, 0, 1), X[idx != 1]), full[idx != 1]
    )
    joined = OcsvmParams.concat([shard.take([0]), OcsvmParams.empty(1), shard.take([1, 2])])
    for name, array in shard.to_arrays().items():
        np.testing.assert_array_equal(joined.to_arrays()[name], array)
    empty = OcsvmParams.empty(4)
    assert (empty.n_models, empty.n_features, empty.n_sv.shape) == (0, 4, (0,))
    with pytest.raises(InputError, match="out of range"):
        shard.take([3])
    with pytest.raises(InputError, match="at least one"):
        OcsvmParams.concat([])
    with pytest.raises(InputError, match="different feature counts"):
        OcsvmParams.concat([shard, OcsvmParams.empty(2)])


# --- fitting and conversion ------------------------------------------------------------------


def test_fit_one_equals_sklearn_pipeline() -> None:
    X = sensor(200)
    got = fit_one(X, nu=0.1, gamma="auto")
    want = from_sklearn(make_pipeline(StandardScaler(), OneClassSVM(nu=0.1, gamma="auto")).fit(X))
    for name, array in want.to_arrays().items():
        np.testing.assert_array_equal(got.to_arrays()[name], array)


@pytest.mark.parametrize(
    ("X", "kwargs", "message"),
    [
        (np.ones((1, 1)), {}, "1 row"),
        (np.array([[1.0], [np.nan], [2.0]]), {}, "row 1 has a non-finite"),
        (np.arange(5.0), {}, "2-D"),
        (np.zeros((5, 0)), {}, "2-D"),
        ([["a"], ["b"]], {}, "not numeric"),
        (np.arange(6.0).reshape(3, 2), {"nu": 0.0}, "nu"),
        (np.arange(6.0).reshape(3, 2), {"nu": 1.5}, "nu"),
        (np.arange(6.0).reshape(3, 2), {"gamma": -1.0}, "gamma"),
        (np.arange(6.0).reshape(3, 2), {"gamma": "median"}, "gamma"),
        (np.array([[0.0], [1.0]]), {"nu": 1.0}, "scikit-learn could not fit"),
    ],
)
def test_fit_one_rejects_bad_input(X: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        fit_one(X, **kwargs)


def test_fit_many_reports_failures_and_fits_the_rest(kernel: str) -> None:
    good = [sensor(60), sensor(45)]
    with_nan = sensor(60)
    with_nan[7, 0] = np.nan
    result = fit_many([good[0], np.ones((1, 1)), with_nan, good[1]], nu=0.05)
    assert isinstance(result, FitResult)
    assert result.fitted_indices.tolist() == [0, 3]
    assert sorted(result.failures) == [1, 2]
    assert "at least 2" in result.failures[1] and "non-finite" in result.failures[2]
    probes = [probe(g) for g in good]
    idx = np.repeat([0, 1], [len(p) for p in probes])
    want = np.concatenate([decision_function(fit_one(g), np.zeros(len(p), np.int64), p) for g, p in zip(good, probes)])
    np.testing.assert_array_equal(decision_function(result.params, idx, np.vstack(probes)), want)
    nothing = fit_many([np.ones((1, 3))])
    assert (nothing.params.n_models, nothing.params.n_features, nothing.fitted_indices.size) == (0, 3, 0)
    with pytest.raises(InputError, match="nu"):
        fit_many(good, nu=2.0)


def test_from_sklearn_rejects_unsupported_models() -> None:
    X = RNG.normal(size=(40, 2))
    linear = make_pipeline(StandardScaler(), OneClassSVM(kernel="linear")).fit(X)
    with pytest.raises(ModelFormatError, match=re.escape("kernel 'linear' is not supported; only rbf")):
        from_sklearn(linear)
    with pytest.raises(ModelFormatError, match="not fitted"):
        from_sklearn(make_pipeline(StandardScaler(), OneClassSVM()))
    with pytest.raises(ModelFormatError, match="PCA"):
        from_sklearn(make_pipeline(StandardScaler(), PCA(1), OneClassSVM()).fit(X))
    with pytest.raises(ModelFormatError, match="got builtins.dict"):
        from_sklearn({"mean": [0.0]})
    with pytest.raises(ModelFormatError, match="OneClassSVM"):
        from_sklearn(StandardScaler().fit(X))


# attributes a fitted OneClassSVM of scikit-learn 1.9 has that old pickles may lack
_NEWER_SVM_ATTRS = (
    "_gamma", "_dual_coef_", "_intercept_", "_n_support", "n_features_in_", "offset_", "shape_fit_", "fit_status_",
    "n_iter_",
)


@pytest.mark.parametrize("gamma", [0.3, "auto"])
def test_from_sklearn_old_pickle_with_resolved_gamma(kernel: str, gamma: float | str) -> None:
    X = sensor(120)
    pipe = make_pipeline(StandardScaler(), OneClassSVM(nu=0.1, gamma=gamma)).fit(X)
    Xt = probe(X)
    want = pipe.decision_function(Xt)
    for attr in _NEWER_SVM_ATTRS:
        pipe[-1].__dict__.pop(attr, None)
    for attr in ("n_features_in_", "n_samples_seen_", "var_"):
        pipe[0].__dict__.pop(attr, None)
    pipe[0].__dict__["std_"] = pipe[0].__dict__.pop("scale_")  # scikit-learn < 0.17 naming
    assert_matches(from_sklearn(pipe), np.zeros(len(Xt), np.int64), Xt, want)


def test_from_sklearn_old_pickle_with_scale_gamma_is_a_clear_error() -> None:
    pipe = make_pipeline(StandardScaler(), OneClassSVM(gamma="scale")).fit(sensor(50))
    for attr in _NEWER_SVM_ATTRS:
        pipe[-1].__dict__.pop(attr, None)
    with pytest.raises(ModelFormatError, match="gamma='scale' but no resolved _gamma"):
        from_sklearn(pipe)
