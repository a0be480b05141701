"""Tests of fleetscore.core.device: per-device robust PCA models, their arrays and the fused scorer."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from fleetscore.core import device
from fleetscore.core.calibrate import DEFAULT_ALARM_RATE
from fleetscore.core.device import (
    HISTORY,
    N_FEATURES,
    DeviceParams,
    decision_function,
    device_features,
    fit_many,
    fit_one,
    score,
)
from fleetscore.core.kinds import KINDS, ModelKind
from fleetscore.core.severity import severity_from_tail
from fleetscore.errors import InputError, ModelFormatError

RNG = np.random.default_rng(20261201)


def machine(rows: int, sensors: int = 4, rng: np.random.Generator = RNG, mix: float = 0.8) -> np.ndarray:
    """Readings of sensors that move together: a shared load plus each sensor's noise, on different scales."""
    load = np.convolve(rng.standard_normal(rows + 9), np.ones(10) / np.sqrt(10), "valid")
    noise = rng.standard_normal((rows, sensors))
    scales = 10.0 ** np.arange(sensors) % 997 + 1.0
    return (mix * load[:, None] + noise) * scales + 50.0 * np.arange(sensors)


def score_values(params: DeviceParams, values: np.ndarray, m: int = 0) -> device.DeviceScores:
    """Scores of one device's rows (features over the whole span)."""
    return score(params, np.full(len(values), m, dtype=np.int64), device_features(values))


# ------------------------------------------------------------------------------------- reference scorer

def reference(params: DeviceParams, m: int, x: np.ndarray) -> tuple[float, float, list[int]]:
    """(decision, severity, top sensors) of one device-time, straight from the module docstring (scipy's chi2)."""
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    lo, hi = params.sensor_offsets[m], params.sensor_offsets[m + 1]
    p = hi - lo
    z = ((x[:p] - params.center[lo:hi]) / params.scale[lo:hi]).ravel()
    seen = ~np.isnan(z) & params.used[lo:hi].ravel()
    z = np.clip(z, -1e150, 1e150)
    df = int(seen.sum())
    v = None  # nothing observed: p = 1
    contrib = {}
    if df:
        prec = np.linalg.inv(params.covariance(m)[np.ix_(seen, seen)])
        g = prec @ z[seen]
        d2 = min(float(z[seen] @ g), 1e300)

        def log10_sf(x: float, k: int) -> float:
            if k == 1:  # 2 Phi(-sqrt x), in logs (chi2.logsf underflows far out)
                return float(math.log(2.0) + special.log_ndtr(-math.sqrt(x))) / math.log(10)
            if k == 2:
                return -x / 2.0 / math.log(10)
            a = 2.0 / (9.0 * k)
            return float(stats.norm.logsf(((x / k) ** (1 / 3) - (1 - a)) / math.sqrt(a))) / math.log(10)

        sensor_of = np.repeat(np.arange(p), N_FEATURES)[seen]
        for s in range(p):
            mine = sensor_of == s
            if mine.any():
                contrib[s] = float(g[mine] @ np.linalg.solve(prec[np.ix_(mine, mine)], g[mine]))
        per_sensor = min(log10_sf(c, int(np.sum(sensor_of == s))) for s, c in contrib.items()) + math.log10(len(contrib))
        v = -min(0.0, math.log10(2.0) + min(log10_sf(d2, df), per_sensor))
    decades = 0.0
    if v is not None:
        t = (v - params.tail_center[m]) / params.tail_scale[m]
        k = params.tail_shape[m]
        if t >= 0:  # P = exp(-t^k) / 2
            decades = (t ** k + math.log(2.0)) / math.log(10.0)
        else:  # P = 1 - exp(-(-t)^k) / 2
            decades = -math.log10(1.0 - 0.5 * math.exp(-((-t) ** k)))
    decision = params.intercept[m] - decades
    severity = float(severity_from_tail(np.array([10.0 ** -decades]))[0])
    top = [s for s, c in sorted(contrib.items(), key=lambda kv: -kv[1]) if c > 1e-12 * max(1.0, max(contrib.values()))]
    return decision, severity, top[:3]


@pytest.fixture(scope="module")
def fleet() -> tuple[DeviceParams, list[np.ndarray]]:
    """Four devices with 1, 3, 5 and 3 sensors."""
    rng = np.random.default_rng(7)
    groups = [machine(300, p, rng) for p in (1, 3, 5, 3)]
    params, fitted, failures = fit_many(groups)
    assert failures == {} and fitted.tolist() == [0, 1, 2, 3]
    return params, groups


# ---------------------------------------------------------------------------------------- the arrays

def test_round_trip_through_npz_without_pickle(fleet: tuple[DeviceParams, list[np.ndarray]]) -> None:
    params, groups = fleet
    buf = io.BytesIO()
    np.savez(buf, **params.to_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        loaded = DeviceParams.from_arrays(dict(f))
    for name in ("sensor_offsets", "center", "scale", "used", "cov", "n_components", "tail_center", "intercept"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(params, name))
    x = device_features(groups[2] + 3.0)
    np.testing.assert_array_equal(score(loaded, np.full(len(x), 2), x).decision, score(params, np.full(len(x), 2), x).decision)


def _mutations() -> list[tuple[str, object]]:
    def drop(key):
        return lambda a: {k: v for k, v in a.items() if k != key}

    def put(key, fn):
        return lambda a: a | {key: fn(a[key])}

    def asym(cov):
        cov = cov.copy()
        cov[1] += 0.5  # first device has one sensor: entries 0..3 are its 2x2 block
        return cov

    def indefinite(cov):
        cov = cov.copy()
        cov[1] = cov[2] = 5.0
        return cov

    return [
        ("missing cov", drop("cov")),
        ("missing format_version", drop("format_version")),
        ("format_version from the future", put("format_version", lambda v: np.array(99))),
        ("format_version not integer", put("format_version", lambda v: np.array(1.0))),
        ("history of another feature window", put("history", lambda v: np.array(HISTORY + 1))),
        ("object array", put("center", lambda v: v.astype(object))),
        ("center as strings", put("center", lambda v: v.astype(str))),
        ("NaN in scale", put("scale", lambda v: np.where(np.arange(v.size).reshape(v.shape) == 0, np.nan, v))),
        ("zero scale", put("scale", lambda v: v * 0)),
        ("used not bool", put("used", lambda v: v.astype(np.int8))),
        ("offsets not starting at 0", put("sensor_offsets", lambda v: v + 1)),
        ("device without sensors", put("sensor_offsets", lambda v: np.concatenate([[0], v]))),
        ("offsets as floats", put("sensor_offsets", lambda v: v.astype(float))),
        ("cov too short", put("cov", lambda v: v[:-1])),
        ("cov not symmetric", put("cov", asym)),
        ("cov not positive definite", put("cov", indefinite)),
        ("inf in cov", put("cov", lambda v: np.where(np.arange(v.size) == 0, np.inf, v))),
        ("n_components too large", put("n_components", lambda v: v + 100)),
        ("tail_scale zero", put("tail_scale", lambda v: v * 0)),
        ("intercept of the wrong length", put("intercept", lambda v: v[:-1])),
        ("center of the wrong width", put("center", lambda v: v[:, :1])),
    ]


@pytest.mark.parametrize("name, mutate", _mutations(), ids=[n for n, _ in _mutations()])
def test_bad_arrays_are_rejected(fleet: tuple[DeviceParams, list[np.ndarray]], name: str, mutate) -> None:
    arrays = fleet[0].to_arrays()
    with pytest.raises(ModelFormatError):
        DeviceParams.from_arrays(mutate(arrays))


def test_take_concat_empty_and_intercept(fleet: tuple[DeviceParams, list[np.ndarray]]) -> None:
    params, groups = fleet
    x = device_features(groups[2])
    want = score(params, np.full(len(x), 2), x).decision
    picked = params.take([2, 0, 2])
    assert picked.n_sensors.tolist() == [5, 1, 5]
    np.testing.assert_array_equal(score(picked, np.full(len(x), 2), x).decision, want)
    joined = DeviceParams.concat([DeviceParams.empty(), params.take([3]), params.take([2])])
    np.testing.assert_array_equal(score(joined, np.full(len(x), 1), x).decision, want)
    assert DeviceParams.empty().n_models == 0 and params.take([]).n_models == 0
    shifted = params.with_intercept(params.intercept - 1.0)
    np.testing.assert_allclose(score(shifted, np.full(len(x), 2), x).decision, want - 1.0)
    with pytest.raises(InputError):
        DeviceParams.concat([])
    with pytest.raises(InputError):
        params.take([4])
    with pytest.raises(InputError):
        DeviceParams.empty(3)


def test_fits_the_model_kind_contract(fleet: tuple[DeviceParams, list[np.ndarray]]) -> None:
    """The registered kind (`fleetscore.core.kinds.KINDS`): arrays, empty shard, shifted intercepts, severity."""
    params, groups = fleet
    kind = KINDS["device"]
    assert isinstance(kind, ModelKind) and kind.per_device and kind.decision_function is decision_function
    x = device_features(groups[1])
    idx = np.full(len(x), 1)
    assert kind.from_arrays(params.to_arrays()).n_models == params.n_models
    assert kind.empty(N_FEATURES).n_models == 0
    shifted = kind.shift(params, np.full(params.n_models, 0.5))
    np.testing.assert_allclose(kind.decision_function(shifted, idx, x.reshape(len(x), -1), None),
                               score(params, idx, x).decision - 0.5)
    assert kind.size_of(params).tolist() == [4, 36, 100, 36]
    np.testing.assert_array_equal(kind.severity(params, idx, x.reshape(len(x), -1), None, None),
                                  score(params, idx, x).severity)


# ------------------------------------------------------------------------------------- the fused scorer

def test_fused_scorer_equals_a_per_device_reference(fleet: tuple[DeviceParams, list[np.ndarray]]) -> None:
    params, groups = fleet
    rng = np.random.default_rng(3)
    feats, idx = [], []
    for m, g in enumerate(groups):
        values = machine(120, g.shape[1], rng) + rng.choice([0.0, 0.0, 30.0], size=(120, 1)) * rng.standard_normal(g.shape[1])
        values[rng.random(values.shape) < 0.15] = np.nan  # missing readings, so some rows score on a subset
        values[5, :] = np.nan  # a device-time with no reading at all
        f = device_features(values)
        f = np.concatenate([f, np.full((len(f), 5 - g.shape[1], N_FEATURES), np.nan)], axis=1)  # pad to 5 sensors
        feats.append(f)
        idx.append(np.full(len(f), m))
    order = rng.permutation(sum(len(f) for f in feats))
    X, idx = np.concatenate(feats)[order], np.concatenate(idx)[order]
    got = score(params, idx, X)
    assert np.mean(got.is_anomaly) > 0.1  # the shifted rows are flagged: contributions get tested too
    for r in range(len(X)):
        decision, severity, top = reference(params, int(idx[r]), X[r])
        # the module's erfc is within 1.2e-7 (relative) of scipy's: equal to 1e-6 in decades
        assert got.decision[r] == pytest.approx(decision, rel=1e-6, abs=1e-6)
        assert got.severity[r] == pytest.approx(severity, rel=1e-6, abs=1e-6)
        if decision < 0:
            assert got.top_sensors[r][: len(top)].tolist() == top
            assert (got.top_sensors[r][len(top):] == -1).all()
        else:
            assert (got.top_sensors[r] == -1).all()
    np.testing.assert_array_equal(decision_function(params, idx, X.reshape(len(X), -1)), got.decision)


def test_scorer_checks_its_input(fleet: tuple[DeviceParams, list[np.ndarray]]) -> None:
    params, groups = fleet
    x = device_features(groups[2])
    with pytest.raises(InputError):
        score(params, np.full(len(x), 2), x[:, :4])  # device 2 has 5 sensors
    with pytest.raises(InputError):
        score(params, np.full(len(x) - 1, 2), x)
    with pytest.raises(InputError):
        score(params, np.full(len(x), 9), x)
    empty = score(params, np.zeros(0, dtype=np.int64), np.zeros((0, 5, N_FEATURES)))
    assert empty.decision.shape == (0,) and empty.top_sensors.shape == (0, 3)
    absurd = x.copy()
    absurd[0, 2, :], absurd[1, 2, 0], absurd[2, 2, 0] = 1e308, -np.inf, np.inf
    out = score(params, np.full(len(x), 2), absurd)
    assert np.isfinite(out.decision).all() and out.is_anomaly[:3].all() and (out.top_sensors[:3, 0] == 2).all()


# ------------------------------------------------------------------------------------ model properties

def test_calibrated_to_the_alarm_rate_on_normal_data() -> None:
    rng = np.random.default_rng(11)
    params = fit_one(machine(4000, 6, rng))
    flagged = score_values(params, machine(100_000, 6, rng)).is_anomaly
    assert flagged.mean() <= 10 * DEFAULT_ALARM_RATE


def test_calibration_holds_with_a_few_percent_of_anomalies_in_training() -> None:
    rng = np.random.default_rng(12)
    train = machine(3000, 5, rng)
    bad = rng.random(len(train)) < 0.03
    train[bad, 3] += 40.0 * np.std(train[:, 3])
    params = fit_one(train)
    clean = machine(50_000, 5, rng)
    assert score_values(params, clean).is_anomaly.mean() <= 10 * DEFAULT_ALARM_RATE
    faulty = clean[:2000].copy()
    faulty[1000:, 3] += 8.0 * np.std(clean[:, 3])
    assert score_values(params, faulty).is_anomaly[1000 + HISTORY:].mean() > 0.99


def test_top_sensors_point_at_the_faulty_sensor() -> None:
    rng = np.random.default_rng(13)
    params = fit_one(machine(2000, 6, rng, mix=2.0))
    for sensor in range(6):
        values = machine(600, 6, rng, mix=2.0)
        sd = np.std(values[:, sensor])
        values[300:, sensor] += 5.0 * sd  # a level fault on one sensor
        out = score_values(params, values)
        rows = np.arange(300 + HISTORY, 600)
        assert out.is_anomaly[rows].mean() > 0.95
        assert (out.top_sensors[rows[out.is_anomaly[rows]], 0] == sensor).mean() > 0.95
    values = machine(600, 6, rng, mix=2.0)
    values[300:, 4] -= 2.0 * (values[300:, 4] - np.median(values[:, 4]))  # breaks its co-movement only
    out = score_values(params, values)
    assert (out.top_sensors[out.is_anomaly, 0] == 4).mean() > 0.9


def test_severity_in_range_and_monotone_in_the_distance() -> None:
    rng = np.random.default_rng(14)
    params = fit_one(machine(2000, 4, rng))
    base = device_features(machine(200, 4, rng))[-1]
    direction = rng.standard_normal((4, N_FEATURES))
    steps = np.linspace(0, 400, 801)
    x = base[None] + steps[:, None, None] * direction[None] * params.scale[None]
    out = score(params, np.zeros(len(x), dtype=np.int64), x)
    assert ((out.severity >= 0) & (out.severity <= 100)).all()
    far = steps > 2
    assert np.all(np.diff(out.severity[far]) >= -1e-9) and np.all(np.diff(out.decision[far]) <= 1e-9)
    assert out.severity[-1] > 99
    # decision < 0 exactly where the tail probability is below the alarm rate: severity above the rate's
    at_rate = float(severity_from_tail(np.array([DEFAULT_ALARM_RATE]))[0])
    clear = np.abs(out.decision) > 1e-9
    np.testing.assert_array_equal((out.decision < 0)[clear], (out.severity > at_rate)[clear])


def test_constant_sensor_must_stay_constant() -> None:
    rng = np.random.default_rng(15)
    train = machine(500, 4, rng)
    train[:, 2] = 7.25  # a set point
    params = fit_one(train)
    values = machine(300, 4, rng)
    values[:, 2] = 7.25
    assert not score_values(params, values).is_anomaly.any()
    values[150:, 2] = 7.5
    out = score_values(params, values)
    assert out.is_anomaly[150:].all() and (out.top_sensors[150:, 0] == 2).all()
    assert not out.is_anomaly[:150].any()


def test_a_sensor_missing_from_some_rows() -> None:
    rng = np.random.default_rng(16)
    train = machine(2000, 5, rng)
    train[rng.random(len(train)) < 0.2, 1] = np.nan  # sensor 1 reports in 80% of the device-times
    params = fit_one(train)
    values = machine(40_000, 5, rng)
    gone = rng.random(len(values)) < 0.5
    values[gone, 1] = np.nan
    out = score_values(params, values)
    assert out.is_anomaly.mean() <= 10 * DEFAULT_ALARM_RATE
    assert out.is_anomaly[gone].mean() <= 10 * DEFAULT_ALARM_RATE  # scored on the present sensors, right df
    faulty = values[:1000].copy()
    faulty[500:, 3] += 6.0 * np.std(values[:, 3])
    out = score_values(params, faulty)
    rows = np.arange(500 + HISTORY, 1000)
    assert out.is_anomaly[rows].mean() > 0.95
    assert (out.top_sensors[rows, 0] == 3).mean() > 0.95
    silent = np.isnan(device_features(faulty)[:, 1]).all(axis=1)  # neither a reading nor a recent level
    assert silent.sum() > 20 and not (out.top_sensors[silent] == 1).any()  # a sensor with nothing is never named


def test_nan_gaps_in_training_and_scoring() -> None:
    rng = np.random.default_rng(17)
    train = machine(3000, 4, rng)
    train[rng.random(train.shape) < 0.05] = np.nan
    train[1000:1400] = np.nan  # the device was offline
    params = fit_one(train)
    values = machine(30_000, 4, rng)
    values[rng.random(values.shape) < 0.05] = np.nan
    values[5000:5100] = np.nan
    out = score_values(params, values)
    assert np.isfinite(out.decision).all()
    nothing = np.isnan(device_features(values)).all(axis=(1, 2))
    assert nothing[5000 + device.WINDOW - device.MIN_RECENT + 1:5100].all()
    assert not out.is_anomaly[nothing].any() and (out.severity[nothing] == 0).all()  # nothing to score: normal
    assert out.is_anomaly.mean() <= 10 * DEFAULT_ALARM_RATE


def test_one_sensor_is_a_univariate_robust_model() -> None:
    rng = np.random.default_rng(18)
    train = rng.normal(20.0, 2.0, size=(1000, 1))
    params = fit_one(train)
    assert params.n_sensors.tolist() == [1]
    normal = rng.normal(20.0, 2.0, size=(20_000, 1))
    assert score_values(params, normal).is_anomaly.mean() <= 10 * DEFAULT_ALARM_RATE
    spike = normal[:100].copy()
    spike[50] = 20.0 + 2.0 * 12
    out = score_values(params, spike)
    assert out.is_anomaly[50] and out.top_sensors[50].tolist() == [0, -1, -1]
    shift = normal[:200].copy()
    shift[100:] += 2.0 * 3.0  # 3 sigma: hidden in single readings, plain in the recent level
    assert score_values(params, shift).is_anomaly[100 + HISTORY:].mean() > 0.9


def test_a_spike_flags_its_own_reading_only() -> None:
    rng = np.random.default_rng(19)
    params = fit_one(machine(2000, 4, rng))
    values = machine(300, 4, rng)
    values[150, 1] += 50 * np.std(values[:, 1])
    out = score_values(params, values)
    assert out.is_anomaly[150] and out.top_sensors[150, 0] == 1
    assert not out.is_anomaly[151:151 + HISTORY + 5].any()  # the trimmed recent level does not carry it on


def test_fewer_training_rows_than_sensors() -> None:
    rng = np.random.default_rng(20)
    train = machine(5, 8, rng)
    params = fit_one(train)
    assert params.n_sensors.tolist() == [8]
    assert not params.used[:, 1].any()  # 5 readings: too few for the recent level
    values = machine(2000, 8, rng)
    out = score_values(params, values)
    assert np.isfinite(out.decision).all() and out.is_anomaly.mean() < 0.01
    values[1000:, 6] += 1e3 * np.std(train[:, 6])
    assert score_values(params, values).is_anomaly[1000:].all()
    with pytest.raises(InputError):
        fit_one(train[:2])


def test_unusable_devices_are_reported_not_fitted() -> None:
    good = machine(100, 3)
    params, fitted, failures = fit_many([good, np.full((50, 2), np.nan), good[:, :2], np.zeros((10, 0))])
    assert fitted.tolist() == [0, 2] and sorted(failures) == [1, 3]
    assert params.n_sensors.tolist() == [3, 2]
    with pytest.raises(InputError):
        fit_one(good, alarm_rate=0.7)


# -------------------------------------------------------------------------------------------- features

def test_features_need_only_their_history() -> None:
    """Scoring a window with HISTORY device-times before it gives the features of the whole span."""
    rng = np.random.default_rng(21)
    values = machine(500, 3, rng)
    values[rng.random(values.shape) < 0.1] = np.nan
    span = device_features(values)
    for start in (HISTORY, 100, 250, 499):
        window = device_features(values[start - HISTORY:])[HISTORY:]
        np.testing.assert_array_equal(window, span[start:])
    two = device_features(np.vstack([values[:200], values[200:]]), [0, 200])  # two devices: no leaking across
    np.testing.assert_array_equal(two[200:], device_features(values[200:]))
    first = span[:HISTORY]
    assert np.isnan(first[:device.MIN_RECENT - 1, :, 1]).all()  # the recent level needs MIN_RECENT readings


def test_recent_level_is_a_trimmed_mean() -> None:
    values = np.arange(40, dtype=float)[:, None]
    values[20] = 1e6
    got = device_features(values)[:, 0, 1]
    for t in range(device.WINDOW - 1, 40):
        window = np.sort(values[t - device.WINDOW + 1:t + 1, 0])
        assert got[t] == pytest.approx(window[device.TRIM:device.WINDOW - device.TRIM].mean())


def test_t_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 4, 7, 30, 399, 5000):
        for tail in (0.2, 1e-3, 6e-6, 1e-9):
            assert device.t_quantile(tail, dof) == pytest.approx(stats.t.isf(tail, dof), rel=2e-4)


def test_slow_sensors_are_widened_white_noise_ones_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(22)
    white = rng.standard_normal(400)
    slow = np.cumsum(rng.standard_normal(400))
    assert device.autocorrelation_time(white) < 2
    assert device.autocorrelation_time(slow) > 20
    train = np.column_stack([white, slow])
    widened = fit_one(train)
    monkeypatch.setattr(device, "widening", lambda n_eff, tail: 1.0)
    plain = fit_one(train)
    ratio = widened.scale / plain.scale  # (sensor, (level, recent))
    assert np.all(ratio[0] < 1.1)  # white noise: as trained
    assert ratio[1, 1] > 1.5  # the slow sensor's recent level: it will wander beyond its training window
    assert ratio[1, 0] < ratio[1, 1]  # ... its readings less so: their departures from it stay sharp


def test_log_erfc_and_chi2_tail() -> None:
    special = pytest.importorskip("scipy.special")
    stats = pytest.importorskip("scipy.stats")
    x = np.linspace(-5, 30, 701)
    np.testing.assert_allclose(device._log_erfc(x), special.log_ndtr(-x * np.sqrt(2)) + np.log(2), rtol=2e-7, atol=2e-7)
    d2 = np.array([0.0, 0.5, 3.0, 40.0, 400.0])
    for df in (1, 2):
        np.testing.assert_allclose(device.chi2_log10_sf(d2, np.full(5, df)), stats.chi2.logsf(d2, df) / np.log(10),
                                   rtol=1e-6, atol=1e-6)
    far = device.chi2_log10_sf(np.array([5000.0, 1e300]), np.array([1, 1]))
    assert np.isfinite(far).all() and far[0] == pytest.approx(-1087.68, rel=1e-4)  # no underflow
    approx = device.chi2_log10_sf(np.array([30.0, 60.0]), np.array([16, 16]))
    np.testing.assert_allclose(approx, stats.chi2.logsf([30.0, 60.0], 16) / np.log(10), rtol=0.05)


# ------------------------------------------------------------------------------------------ co-movement

def test_co_movement_tells_sensors_that_move_together_from_independent_ones() -> None:
    rng = np.random.default_rng(5)
    together = machine(600, 4, rng, mix=2.0)
    assert device.co_movement(together).together
    day = np.sin(2 * np.pi * np.arange(1440) / 1440)[:, None]  # a shared daily cycle is not co-movement
    independent = 10 * day + rng.standard_normal((1440, 4))
    cm = device.co_movement(independent)
    assert not cm.together and cm.rows == 1439 and cm.sensors == 4
    assert not device.co_movement(together[:100]).together  # too few device-times to decide
    assert not device.co_movement(together[:, :1]).together  # one sensor
    with_constant = np.hstack([together, np.full((600, 1), 3.0)])
    assert device.co_movement(with_constant).sensors == 4  # a sensor that never changes is left out
    gappy = together.copy()
    gappy[rng.random(gappy.shape) < 0.05] = np.nan
    assert device.co_movement(gappy).together
