"""Columnar validation of readings: canonical output, one reason per rejected row, nothing dropped."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.core.schema import READING_SCHEMA, validate_readings
from fleetscore.errors import InputError


def check(table: pa.Table):  # type: ignore[no-untyped-def]
    v = validate_readings(table)
    assert v.good.num_rows + v.rejected.num_rows == table.num_rows  # nothing dropped
    assert v.good.schema == READING_SCHEMA
    return v


def test_string_times_with_and_without_zone_mixed() -> None:
    v = check(pa.table({
        "ts": ["2026-01-01T00:00:00Z", "2026-01-01 01:00:00", "2026-01-01T03:00:00+02:00", "2026-01-01T00:00:00.5"],
        "device": ["d"] * 4, "sensor": ["s"] * 4, "value": ["1", " 2.5 ", "-3e2", "4"],
    }))
    assert v.rejected.num_rows == 0
    hours = [t.hour for t in v.good.column("ts").to_pylist()]
    assert hours == [0, 1, 1, 0]
    assert v.good.column("value").to_pylist() == [1.0, 2.5, -300.0, 4.0]


def test_typed_inputs() -> None:
    naive = pa.array([datetime(2026, 1, 1, 5)], pa.timestamp("ms"))
    v = check(pa.table({"ts": naive, "device": ["d"], "sensor": ["s"], "value": pa.array([3], pa.int32())}))
    assert v.good.column("ts")[0].as_py() == datetime(2026, 1, 1, 5, tzinfo=UTC)
    epoch = check(pa.table({"ts": [1767225600.25], "device": ["d"], "sensor": ["s"], "value": [1.0]}))
    assert epoch.good.column("ts")[0].as_py() == datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize("row,reason", [
    ({"ts": None}, "timestamp is missing"),
    ({"ts": "2026-02-30T00:00:00Z"}, "timestamp is not a valid ISO 8601 time"),
    ({"ts": "1969-12-31T23:59:59Z"}, "timestamp is outside 1970..2200"),
    ({"value": "nan"}, "value is not finite (NaN or inf)"),
    ({"value": "-inf"}, "value is not finite (NaN or inf)"),
    ({"value": "12 degrees"}, "value is not a number"),
    ({"value": None}, "value is missing"),
    ({"device": ""}, "device id is empty"),
    ({"device": "   "}, "device id is empty"),
    ({"sensor": None}, "sensor id is missing"),
    ({"sensor": "a\nb"}, "sensor id contains control characters"),
    ({"device": "é" * 257}, "device id is longer than 256 characters"),
])
def test_each_bad_field_has_its_reason(row, reason) -> None:  # type: ignore[no-untyped-def]
    base = {"ts": "2026-01-01T00:00:00Z", "device": "d", "sensor": "s", "value": "1"}
    good = dict(base)
    bad = base | row
    table = pa.table({k: pa.array([good[k], bad[k]], pa.string()) for k in base})
    v = check(table)
    assert v.good.num_rows == 1
    assert v.rejected.column("reason").to_pylist() == [reason]
    assert v.rejected.column("row").to_pylist() == [1]


def test_hostile_ids_are_truncated_in_quarantine_and_path_ids_are_data() -> None:
    table = pa.table({"ts": ["2026-01-01T00:00:00Z"] * 2, "device": ["x" * 1_000_000, "../../etc"],
                      "sensor": ["s", "s"], "value": [1.0, 2.0]})
    v = check(table)
    assert v.good.column("device").to_pylist() == ["../../etc"]
    assert len(v.rejected.column("device")[0].as_py()) == 1024


def test_missing_columns_are_an_input_error() -> None:
    with pytest.raises(InputError, match="missing column"):
        validate_readings(pa.table({"ts": ["x"], "device": ["d"]}))


def test_row_offset_and_large_batch() -> None:
    n = 200_000
    rng = np.random.default_rng(0)
    values = rng.normal(size=n)
    values[::1000] = np.nan
    table = pa.table({"ts": pa.array(np.arange(n) * 1_000_000 + 1_767_225_600_000_000, pa.int64()).cast(pa.timestamp("us")),
                      "device": ["d"] * n, "sensor": ["s"] * n, "value": values})
    v = validate_readings(table, row_offset=10)
    assert v.rejected.num_rows == n // 1000
    assert v.rejected.column("row").to_pylist()[:2] == [10, 1010]
