"""Tests of the fleet simulator: schema, ids, timestamps, determinism, chunking, anomalies, args."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetscore.core.schema import READING_SCHEMA
from fleetscore.core.simulate import (
    ANOMALY_KINDS,
    SIMULATION_SCHEMA,
    device_name,
    iter_simulate,
    sensor_names,
    simulate_fleet,
)
from fleetscore.errors import InputError

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def big() -> pa.Table:
    """A fleet large enough for rate and kind statistics (~380k rows, well under a second)."""
    return simulate_fleet(400, 8, START, 2.0, anomaly_rate=0.02, seed=7)


def _series(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns as numpy arrays, rows reshaped to (series, readings) (simulator order)."""
    n_series = len(set(zip(table["device"].to_pylist(), table["sensor"].to_pylist())))
    n = table.num_rows // n_series
    return {
        "value": table["value"].to_numpy().reshape(n_series, n),
        "label": table["label"].to_numpy().reshape(n_series, n),
        "kind": np.asarray(table["anomaly_kind"].to_pylist(), dtype=object).reshape(n_series, n),
    }


def test_schema_and_column_order() -> None:
    t = simulate_fleet(2, 3, START, 0.5, anomaly_rate=0.1)
    assert t.column_names == ["ts", "device", "sensor", "value", "label", "anomaly_kind"]
    assert t.schema.equals(SIMULATION_SCHEMA)
    assert t.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("label").type == pa.int8()
    assert t.schema.field("anomaly_kind").type == pa.string()
    # the first four columns are exactly the canonical readings
    assert t.select(["ts", "device", "sensor", "value"]).schema.equals(READING_SCHEMA)
    assert all(t.column(c).null_count == 0 for c in t.column_names)
    assert t.num_rows == 2 * 3 * 30


def test_ids_and_row_order() -> None:
    t = simulate_fleet(3, 10, START, 1 / 60)  # one reading per series
    assert t["device"].to_pylist()[:: 10] == ["dev-00001", "dev-00002", "dev-00003"]
    assert t["sensor"].to_pylist()[:10] == [
        "temperature", "vibration", "pressure", "humidity", "current",
        "voltage", "flow", "rpm", "sensor-09", "sensor-10",
    ]
    assert sensor_names(12)[-1] == "sensor-12"
    assert device_name(0) == "dev-00001"
    assert device_name(123_455) == "dev-123456"


def test_timestamps_start_plus_k_interval() -> None:
    t = simulate_fleet(1, 1, START, 1.0, interval_s=90.0)
    expected = [START + timedelta(seconds=90 * k) for k in range(40)]  # floor(3600 / 90)
    assert t["ts"].to_pylist() == expected
    # naive start means UTC; other zones are converted
    naive = simulate_fleet(1, 1, START.replace(tzinfo=None), 1.0, interval_s=90.0)
    assert naive["ts"].equals(t["ts"])
    plus2 = timezone(timedelta(hours=2))
    shifted = simulate_fleet(1, 1, datetime(2026, 1, 1, 2, tzinfo=plus2), 1.0, interval_s=90.0)
    assert shifted["ts"].equals(t["ts"])
    sub = simulate_fleet(1, 1, START, 1 / 3600, interval_s=0.25)
    assert sub["ts"].cast(pa.int64()).to_pylist()[:3] == [
        int(START.timestamp()) * 10**6 + d for d in (0, 250_000, 500_000)
    ]


def test_deterministic_per_seed() -> None:
    a = simulate_fleet(5, 4, START, 1.0, anomaly_rate=0.1, seed=3)
    b = simulate_fleet(5, 4, START, 1.0, anomaly_rate=0.1, seed=3)
    c = simulate_fleet(5, 4, START, 1.0, anomaly_rate=0.1, seed=4)
    assert a.equals(b)
    assert not np.array_equal(a["value"].to_numpy(), c["value"].to_numpy())
    assert not np.array_equal(a["label"].to_numpy(), c["label"].to_numpy())


@pytest.mark.parametrize("per_chunk", [1, 3, 7, 1000])
def test_chunks_equal_whole(per_chunk: int) -> None:
    whole = simulate_fleet(11, 3, START, 1.5, anomaly_rate=0.05, seed=5)
    chunks = list(iter_simulate(11, 3, START, 1.5, anomaly_rate=0.05, seed=5, devices_per_chunk=per_chunk))
    assert len(chunks) == math.ceil(11 / per_chunk)
    assert all(c.num_rows == min(per_chunk, 11 - i * per_chunk) * 3 * 90 for i, c in enumerate(chunks))
    assert all(c.schema.equals(SIMULATION_SCHEMA) for c in chunks)
    assert pa.concat_tables(chunks).equals(whole)


def test_device_data_independent_of_fleet_shape() -> None:
    """A device's series depend only on (seed, device, sensor), not on fleet size or chunking."""
    small = simulate_fleet(2, 2, START, 1.0, anomaly_rate=0.05, seed=9)
    large = simulate_fleet(50, 3, START, 1.0, anomaly_rate=0.05, seed=9)
    mask = pc.and_(pc.is_in(large["device"], pa.array(["dev-00001", "dev-00002"])),
                   pc.is_in(large["sensor"], pa.array(["temperature", "vibration"])))
    assert large.filter(mask).equals(small)


def test_anomaly_rate_and_all_kinds(big: pa.Table) -> None:
    labels = big["label"].to_numpy()
    assert set(np.unique(labels)) == {0, 1}
    assert labels.mean() == pytest.approx(0.02, rel=0.15)
    kinds = big["anomaly_kind"].to_numpy(zero_copy_only=False)
    assert set(kinds) == {"", *ANOMALY_KINDS}
    # label is 1 exactly where a kind is set; normal rows carry "" (never null)
    assert np.array_equal(labels == 1, kinds != "")


@pytest.mark.parametrize("rate", [0.002, 0.3, 0.5])
def test_anomaly_rate_other_values(rate: float) -> None:
    t = simulate_fleet(150, 4, START, 110 / 60, interval_s=60, anomaly_rate=rate, seed=1)
    assert t["label"].to_numpy().mean() == pytest.approx(rate, rel=0.2 if rate < 0.01 else 0.06)


def test_anomaly_rate_zero_means_no_anomalies() -> None:
    t = simulate_fleet(50, 8, START, 1.0, anomaly_rate=0.0)
    assert pc.sum(t["label"]).as_py() == 0
    assert set(t["anomaly_kind"].to_pylist()) == {""}


def test_anomaly_shapes(big: pa.Table) -> None:
    s = _series(big)
    v, kind = s["value"], s["kind"]
    normal = kind == ""
    # per-series noise sigma from first differences of neighbouring normal readings
    d = np.diff(v, axis=1)
    both = normal[:, 1:] & normal[:, :-1]
    sigma = np.array([np.std(d[i][both[i]]) / math.sqrt(2) for i in range(len(v))])

    # stuck: consecutive stuck readings inside a segment are exactly equal, segments >= 4 long
    stuck_pairs = (kind[:, 1:] == "stuck") & (kind[:, :-1] == "stuck")
    assert np.mean(d[stuck_pairs] == 0.0) > 0.9
    # spikes: one reading, far from the mean of its normal neighbours
    rows, cols = np.nonzero(kind == "spike")
    inner = (cols > 0) & (cols < v.shape[1] - 1)
    rows, cols = rows[inner], cols[inner]
    ok = normal[rows, cols - 1] & normal[rows, cols + 1]
    rows, cols = rows[ok], cols[ok]
    jump = np.abs(v[rows, cols] - (v[rows, cols - 1] + v[rows, cols + 1]) / 2) / sigma[rows]
    assert len(jump) > 50 and np.median(jump) > 6 and np.mean(jump > 4) > 0.95
    # noise bursts: differences inside bursts are several times the normal noise
    burst = (kind[:, 1:] == "noise") & (kind[:, :-1] == "noise")
    ratio = np.abs(d[burst]) / sigma[np.nonzero(burst)[0]]
    assert np.sqrt(np.mean(ratio**2)) / math.sqrt(2) > 4
    # drift: by its last reading a drift is several sigmas away from the reading before it
    ends = (kind[:, :-1] == "drift") & (kind[:, 1:] != "drift")
    starts = (kind[:, 1:] == "drift") & (kind[:, :-1] == "")
    assert ends.sum() > 50
    shifts = []
    for i in range(len(v)):
        for b, e in zip(np.flatnonzero(starts[i]), np.flatnonzero(ends[i])):
            if e > b:
                shifts.append(abs(v[i, e] - v[i, b]) / sigma[i])
    assert np.median(shifts) > 3


def test_sensors_have_very_different_scales() -> None:
    t = simulate_fleet(30, 8, START, 1.0, anomaly_rate=0.0)
    s = _series(t)["value"].reshape(30, 8, -1)
    level = np.median(s, axis=(0, 2))  # per sensor
    names = sensor_names(8)
    by = dict(zip(names, level))
    assert by["temperature"] == pytest.approx(60, abs=5)
    assert by["pressure"] == pytest.approx(1013, abs=10)
    assert by["vibration"] == pytest.approx(0.5, abs=0.1)
    assert by["rpm"] == pytest.approx(1500, abs=50)
    assert by["pressure"] / by["vibration"] > 1000
    noise = np.median(np.std(np.diff(s, axis=2), axis=2), axis=0)
    assert noise.max() / noise.min() > 100
    # per-(device, sensor) level offsets: devices differ for the same sensor
    assert np.std(np.mean(s[:, 2, :], axis=1)) > 3


def test_daily_cycle_amplitude_varies() -> None:
    t = simulate_fleet(40, 1, START, 24.0, interval_s=600, anomaly_rate=0.0, seed=2)
    v = t["value"].to_numpy().reshape(40, -1)
    swing = v.max(axis=1) - v.min(axis=1)
    assert swing.max() > 4 * swing.min()  # some pairs cycle strongly, some barely


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"devices": 0}, "devices"),
        ({"devices": 1.5}, "devices"),
        ({"devices": True}, "devices"),
        ({"sensors": 0}, "sensors"),
        ({"hours": 0}, "hours"),
        ({"hours": -1.0}, "hours"),
        ({"hours": float("nan")}, "hours"),
        ({"hours": 0.001}, "hours"),  # shorter than one interval: no reading
        ({"hours": 1e300}, "hours"),  # absurd number of readings per series
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": -60}, "interval_s"),
        ({"anomaly_rate": -0.1}, "anomaly_rate"),
        ({"anomaly_rate": 0.6}, "anomaly_rate"),
        ({"anomaly_rate": "0.1"}, "anomaly_rate"),
        ({"start": "2026-01-01"}, "start"),
        ({"start": datetime(1969, 12, 31, 23, tzinfo=UTC)}, "start"),
        ({"start": datetime(2199, 12, 31, 23, 30), "hours": 1.0}, "outside 1970..2200"),
        ({"seed": -1}, "seed"),
        ({"devices_per_chunk": 0}, "devices_per_chunk"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    args = {"devices": 2, "sensors": 2, "start": START, "hours": 1.0} | kwargs
    with pytest.raises(InputError, match=name):
        iter_simulate(**args)  # raises on the call, before the first chunk
    if "devices_per_chunk" not in kwargs:
        with pytest.raises(InputError, match=name):
            simulate_fleet(**args)
