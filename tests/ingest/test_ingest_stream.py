"""The incremental window engine: same aggregates as the batch path, watermark, late readings, state."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetscore.core.stream import StreamState, advance, flush, new_state
from fleetscore.core.windows import WINDOW_SCHEMA, tumbling_aggregate
from fleetscore.errors import InputError

ORDER = [("device", "ascending"), ("sensor", "ascending"), ("window_start", "ascending")]
T0 = 1_767_225_600_000_000  # 2026-01-01


def table(ts_us: np.ndarray, devices: list[str], sensors: list[str], values: np.ndarray) -> pa.Table:
    return pa.table({"ts": pa.array(ts_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                     "device": pa.array(devices, pa.string()), "sensor": pa.array(sensors, pa.string()),
                     "value": pa.array(values, pa.float64())})


def run_stream(readings: pa.Table, cuts: list[int], width_s: int, lateness_s: int) -> tuple[pa.Table, np.ndarray]:
    """Feed ``readings`` in batches cut at ``cuts``; returns every window (closed, then flushed) and late rows."""
    state = new_state(width_s, lateness_s)
    closed, late = [], []
    bounds = [0, *sorted(set(cuts)), readings.num_rows]
    for lo, hi in zip(bounds, bounds[1:]):
        step = advance(state, readings.slice(lo, hi - lo))
        state = StreamState.from_arrow(step.state.to_arrow())  # persisting between batches changes nothing
        closed.append(step.closed)
        late.extend((step.late + lo).tolist())
    state, rest = flush(state)
    assert state.open_windows == 0
    return pa.concat_tables([*closed, rest]).sort_by(ORDER), np.array(late, dtype=np.int64)


def assert_same_windows(got: pa.Table, expected: pa.Table, scale: float = 0.0) -> None:
    """Equal up to rounding: values near ``scale`` carry absolute errors of ~scale·1e-16 per operation."""
    assert got.schema == WINDOW_SCHEMA
    for name in ("device", "sensor", "window_start", "count"):
        assert got.column(name).equals(expected.column(name)), name
    for name in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(got.column(name).to_numpy(), expected.column(name).to_numpy(), rtol=1e-9,
                                   atol=1e-9 + scale * 1e-14)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    keys=st.integers(1, 6),
    width_s=st.sampled_from([1, 7, 60]),
    jitter_s=st.integers(0, 200),
    offset=st.sampled_from([0.0, 1e9]),
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_stream_equals_batch_aggregation(n, keys, width_s, jitter_s, offset, seed, cuts) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, 600_000_000, n)) + rng.integers(0, jitter_s * 1_000_000 + 1, n)
    k = rng.integers(0, keys, n)
    readings = table(ts, [f"d{i % 3}" for i in k], [f"s{i}" for i in k], offset + rng.normal(0, 5, n))
    got, late = run_stream(readings, [c for c in cuts if c < n], width_s, lateness_s=30)
    on_time = np.ones(n, dtype=bool)
    on_time[late] = False
    assert_same_windows(got, tumbling_aggregate(readings.filter(pa.array(on_time)), width_s), offset)


def test_late_readings_are_returned_and_closed_windows_never_change() -> None:
    state = new_state(60, 30)
    first = advance(state, table(np.array([T0, T0 + 10_000_000, T0 + 125_000_000]), ["d"] * 3, ["s"] * 3,
                                 np.array([1.0, 3.0, 5.0])))
    # watermark = 125 s − 30 s = 95 s: the window [0, 60) is closed, [60, 120) and [120, 180) are open
    assert first.state.watermark_us == T0 + 95_000_000
    assert first.closed.to_pylist()[0]["count"] == 2 and first.closed.num_rows == 1
    second = advance(first.state, table(np.array([T0 + 5_000_000, T0 + 100_000_000, T0 + 94_000_000]),
                                        ["d"] * 3, ["s"] * 3, np.array([9.0, 7.0, 8.0])))
    assert second.late.tolist() == [0, 2]  # before the watermark of the batch start
    assert second.closed.num_rows == 0  # nothing new closed: the maximum did not move
    _, rest = flush(second.state)
    counts = {r["window_start"].timestamp(): r["count"] for r in rest.to_pylist()}
    assert sorted(counts.values()) == [1, 1]  # 100 s in [60, 120); 125 s in [120, 180)


def test_readings_of_one_batch_never_make_each_other_late() -> None:
    state = new_state(10, 0)
    step = advance(state, table(np.array([T0 + 50_000_000, T0]), ["d", "d"], ["s", "s"], np.array([1.0, 2.0])))
    assert step.late_count == 0 and step.closed.num_rows == 1  # [0, 10) closed by the batch's own maximum


def test_state_roundtrip_keeps_keys_and_watermark() -> None:
    state = advance(new_state(60, 120), table(np.array([T0, T0 + 1]), ["a/../b", "ü"], ["<s>", "t"],
                                             np.array([1.0, 2.0]))).state
    again = StreamState.from_arrow(state.to_arrow())
    assert again.watermark_us == state.watermark_us and again.open_windows == 2
    assert flush(again)[1].equals(flush(state)[1])


@pytest.mark.parametrize("width,lateness", [(0, 1), (1, -1), (True, 1), (1.5, 1)])
def test_bad_parameters_are_input_errors(width, lateness) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError):
        new_state(width, lateness)


def test_empty_batch_changes_nothing() -> None:
    state = new_state(60, 0)
    step = advance(state, table(np.array([], dtype=np.int64), [], [], np.array([])))
    assert step.state is state and step.closed.num_rows == 0 and step.late_count == 0
