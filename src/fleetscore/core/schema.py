"""Arrow schemas of readings and predictions, and columnar validation of incoming readings.

Validation is pure: it takes an Arrow table and returns the valid rows in the canonical schema plus
the rejected rows with a reason each, so that no input row is ever dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.times import parse_time_us

TS_TYPE = pa.timestamp("us", tz="UTC")

READING_SCHEMA = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("sensor", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)

#: Rejected rows keep their raw text so the user can see and fix exactly what was sent.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),
        pa.field("ts", pa.string()),
        pa.field("device", pa.string()),
        pa.field("sensor", pa.string()),
        pa.field("value", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

PREDICTION_COLUMNS = ("ts", "device", "sensor", "value", "score", "is_anomaly", "model_version", "run_id")
WINDOW_COLUMNS = ("window_start", "count", "mean", "std", "min", "max")

#: Longest device or sensor id accepted; longer ids are rejected, never truncated.
MAX_ID_LENGTH = 256
#: Readings must fall in [1970, 2200): anything else is a clock or unit error on the device.
MIN_TS_US = 0
MAX_TS_US = int(datetime(2200, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)

REQUIRED_COLUMNS = ("ts", "device", "sensor", "value")


@dataclass(frozen=True)
class Validated:
    """Result of validating a batch: canonical good rows and rejected rows with reasons."""

    good: pa.Table
    rejected: pa.Table

    @property
    def accepted(self) -> int:
        return self.good.num_rows


def empty_readings() -> pa.Table:
    return READING_SCHEMA.empty_table()


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def validate_readings(table: pa.Table, row_offset: int = 0) -> Validated:
    """Check and convert a table with columns ts, device, sensor, value into the canonical schema.

    ``ts`` may be a timestamp (naive means UTC), an ISO 8601 string (no zone means UTC) or a number
    of seconds since the epoch; ``value`` a number or numeric text. Rows with an unparseable time,
    a non-finite or non-numeric value, or an empty, overlong or control-character id are returned in
    ``rejected`` with a reason; ``row`` there is the row's index in the input plus ``row_offset``.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        from fleetscore.errors import InputError

        raise InputError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(table.column_names) or 'none'}"
        )
    n = table.num_rows
    ts_us, ts_reason = _parse_ts(table.column("ts"))
    value, value_reason = _parse_value(table.column("value"))
    device, device_reason = _check_ids(table.column("device"), "device")
    sensor, sensor_reason = _check_ids(table.column("sensor"), "sensor")

    checks = (ts_reason, device_reason, sensor_reason, value_reason)
    failed = [reason != None for reason in checks]  # noqa: E711 (element-wise on object arrays)
    bad = np.logical_or.reduce(failed)
    if not bad.any():  # the common case: no filtering, no reasons to collect
        return Validated(pa.table({"ts": pa.array(ts_us, type=pa.int64()).cast(TS_TYPE), "device": device,
                                   "sensor": sensor, "value": pa.array(value, type=pa.float64())},
                                  schema=READING_SCHEMA), empty_rejects())
    reasons = np.full(n, None, dtype=object)
    # the first failing check names the reason; later ones only fill rows still valid
    for reason, fails in zip(checks, failed):
        fill = (reasons == None) & fails  # noqa: E711
        reasons[fill] = reason[fill]
    good_mask = ~bad
    good = pa.table(
        {
            "ts": pa.array(ts_us[good_mask], type=pa.int64()).cast(TS_TYPE),
            "device": device.filter(pa.array(good_mask)),
            "sensor": sensor.filter(pa.array(good_mask)),
            "value": pa.array(value[good_mask], type=pa.float64()),
        },
        schema=READING_SCHEMA,
    )
    idx = np.flatnonzero(bad)
    raw = table.take(pa.array(idx))
    rejected = pa.table(
        {
            "row": pa.array(idx + row_offset, type=pa.int64()),
            "ts": _as_text(raw.column("ts")),
            "device": _as_text(raw.column("device")),
            "sensor": _as_text(raw.column("sensor")),
            "value": _as_text(raw.column("value")),
            "reason": pa.array(list(reasons[idx]), type=pa.string()),
        },
        schema=REJECT_SCHEMA,
    )
    return Validated(good, rejected)


def _as_text(col: pa.ChunkedArray) -> pa.Array:
    """Raw values as text for the quarantine (ids truncated so a hostile 10 MB id stays small)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_timestamp(arr.type):
        text = pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")
    else:
        text = pc.cast(arr, pa.string())
    return pc.utf8_slice_codeunits(text, 0, 1024)


def _plain(col: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, int, np.ndarray]:
    """One contiguous, dictionary-decoded array, its length, and an empty reason per row."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr, len(arr), np.full(len(arr), None, dtype=object)


def _parse_ts(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr, n, reason = _plain(col)
    t = arr.type
    if pa.types.is_timestamp(t):
        us = pc.cast(arr, pa.timestamp("us", tz=t.tz)).cast(pa.int64())
    elif pa.types.is_date(t):
        us = pc.cast(pc.cast(arr, pa.timestamp("us")), pa.int64())
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        secs = arr.to_numpy(zero_copy_only=False).astype("float64")
        ok = np.isfinite(secs)
        out = np.zeros(n, dtype="int64")
        out[ok] = np.round(secs[ok] * 1_000_000).astype("int64")
        reason[~ok] = "timestamp is missing or not finite"
        return _range_check(out, reason, arr.is_null().to_numpy(zero_copy_only=False))
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        us = _parse_ts_strings(arr, reason)
    elif pa.types.is_null(t):
        reason[:] = "timestamp is missing"
        return np.zeros(n, dtype="int64"), reason
    else:
        reason[:] = f"timestamp has unsupported type {t}"
        return np.zeros(n, dtype="int64"), reason
    nulls = us.is_null().to_numpy(zero_copy_only=False)
    values = us.fill_null(0).to_numpy(zero_copy_only=False).astype("int64")
    return _range_check(values, reason, nulls)


def _range_check(us: np.ndarray, reason: np.ndarray, nulls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fill = (reason == None) & nulls  # noqa: E711
    reason[fill] = "timestamp is missing"
    out_of_range = (reason == None) & ((us < MIN_TS_US) | (us >= MAX_TS_US))  # noqa: E711
    reason[out_of_range] = "timestamp is outside 1970..2200"
    return us, reason


def _parse_ts_strings(arr: pa.Array, reason: np.ndarray) -> pa.Array:
    """Vectorised ISO 8601 parse; falls back to one-by-one only when formats are mixed or bad."""
    for target, tz in ((pa.timestamp("us", tz="UTC"), True), (pa.timestamp("us"), False)):
        try:
            parsed = pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return parsed.cast(pa.int64()) if tz else pc.cast(parsed, pa.int64())
    values = arr.to_pylist()
    out: list[int | None] = []
    for i, text in enumerate(values):
        us = parse_time_us(text) if text is not None else None
        if us is None:
            reason[i] = "timestamp is missing" if text is None else "timestamp is not a valid ISO 8601 time"
        out.append(us)
    return pa.array(out, type=pa.int64())


def _parse_value(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr, n, reason = _plain(col)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = pc.cast(arr, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        stripped = pc.utf8_trim_whitespace(arr)
        try:
            values = pc.cast(stripped, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = np.array([_float_or_text(v) for v in stripped.to_pylist()], dtype=object)
            text = np.array([isinstance(v, str) for v in values])
            reason[text] = "value is not a number"
            values = np.where(text, np.nan, values).astype("float64")
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
    elif pa.types.is_boolean(t):
        reason[:] = "value is a boolean, not a number"
        return np.zeros(n), reason
    elif pa.types.is_null(t):
        reason[:] = "value is missing"
        return np.zeros(n), reason
    else:
        reason[:] = f"value has unsupported type {t}"
        return np.zeros(n), reason
    fill = (reason == None) & nulls  # noqa: E711
    reason[fill] = "value is missing"
    nonfinite = (reason == None) & ~np.isfinite(values)  # noqa: E711
    reason[nonfinite] = "value is not finite (NaN or inf)"
    return values, reason


def _float_or_text(v: str | None) -> float | str:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except ValueError:
        return v


def _check_ids(col: pa.ChunkedArray, what: str) -> tuple[pa.Array, np.ndarray]:
    arr, n, reason = _plain(col)
    if pa.types.is_null(arr.type):
        reason[:] = f"{what} id is missing"
        return pa.nulls(n, pa.string()), reason
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if not pa.types.is_string(arr.type):
        try:
            arr = pc.cast(arr, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            reason[:] = f"{what} id has unsupported type {arr.type}"
            return pa.nulls(n, pa.string()), reason
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    filled = arr.fill_null("")
    # ids repeat a lot within a batch: check each distinct id once, then spread the answers by index
    encoded = pc.dictionary_encode(filled)
    uniq, at = encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(uniq)), 0).to_numpy(zero_copy_only=False)[at]
    too_long = pc.greater(pc.utf8_length(uniq), MAX_ID_LENGTH).to_numpy(zero_copy_only=False)[at]
    control = pc.match_substring_regex(uniq, r"[\x00-\x1f\x7f]").to_numpy(zero_copy_only=False)[at]
    reason[nulls] = f"{what} id is missing"
    reason[(reason == None) & empty] = f"{what} id is empty"  # noqa: E711
    reason[(reason == None) & too_long] = f"{what} id is longer than {MAX_ID_LENGTH} characters"  # noqa: E711
    reason[(reason == None) & control] = f"{what} id contains control characters"  # noqa: E711
    return filled, reason
