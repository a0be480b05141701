"""Arrow schemas of readings and predictions, and columnar validation of incoming readings.

Validation is pure: it takes an Arrow table and returns the valid rows in the canonical schema plus
the rejected rows with a reason each, so that no input row is ever dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.times import parse_time_us
from fleetscore.errors import InputError

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
MAX_TS_US = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)

REQUIRED_COLUMNS = ("ts", "device", "sensor", "value")


@dataclass(frozen=True)
class Validated:
    """Result of validating a batch: canonical good rows and rejected rows with reasons."""

    good: pa.Table
    rejected: pa.Table

    @property
    def accepted(self) -> int:
        return int(self.good.num_rows)


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def validate_readings(table: pa.Table, row_offset: int = 0) -> Validated:
    """Check and convert a table with columns ts, device, sensor, value into the canonical schema.

    ``ts`` may be a timestamp or date of any unit (naive means UTC; finer than µs is truncated), an
    ISO 8601 string (no zone means UTC) or epoch seconds (a number or numeric text); ``value`` a
    number of any type (integers beyond 2**53 lose precision as float64) or numeric text. Rows with
    an unparseable time, a non-finite or non-numeric value, or an empty, overlong, non-UTF-8,
    control- or invisible-character id are returned in ``rejected`` with a reason; ``row`` there is
    the row's index in the input plus ``row_offset``. A column of a compound type (struct, list,
    map, union) raises :class:`~fleetscore.errors.InputError` naming the column and its type.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(table.column_names) or 'none'}"
        )
    check_column_types(table.schema)
    reasons = _Reasons(table.num_rows)
    # in this order: a row failing several checks gets the reason of the first
    ts_us = _parse_ts(table.column("ts"), reasons)
    device = _check_ids(table.column("device"), "device", reasons)
    sensor = _check_ids(table.column("sensor"), "sensor", reasons)
    value = _parse_value(table.column("value"), reasons)
    bad = reasons.bad
    if not bad.any():  # the common case: no filtering, no reasons to collect
        return Validated(pa.table({"ts": pa.array(ts_us, type=pa.int64()).cast(TS_TYPE), "device": device,
                                   "sensor": sensor, "value": pa.array(value, type=pa.float64())},
                                  schema=READING_SCHEMA), empty_rejects())
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
    at = pa.array(idx)
    rejected = pa.table(
        {
            "row": pa.array(idx + row_offset, type=pa.int64()),
            **{name: _as_text(_plain(table.column(name)).take(at)) for name in REQUIRED_COLUMNS},
            "reason": pa.array(list(reasons.text[idx]), type=pa.string()),
        },
        schema=REJECT_SCHEMA,
    )
    return Validated(good, rejected)


class _Reasons:
    """Why each row of a batch is rejected: the first reason a row is given stays; ``bad`` marks the
    rows that have one (a boolean mask, so checks never compare object arrays row by row)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.bad = np.zeros(n, dtype=bool)
        self.text = np.full(n, None, dtype=object)

    def add(self, rows: np.ndarray, reason: str | np.ndarray) -> None:
        """Give ``reason`` (one text, or one per row) to the rows in the mask ``rows`` that have none yet."""
        new = rows & ~self.bad
        if new.any():
            self.text[new] = reason if isinstance(reason, str) else reason[new]
            self.bad |= new

    def add_all(self, reason: str) -> None:
        self.add(np.ones(self.n, dtype=bool), reason)


def check_column_types(schema: pa.Schema) -> None:
    """Refuse a reading column of a compound type (struct, list, map, union): no row of it can be one
    reading, so it is a sender error (InputError naming the column and its type), not a row to quarantine."""
    for name in REQUIRED_COLUMNS:
        if name in schema.names and _is_compound(schema.field(name).type):
            raise InputError(f"column {name!r} has type {str(schema.field(name).type)[:200]}; "
                             f"expected {_EXPECTED[name]}")


_EXPECTED = {"ts": "a timestamp, ISO 8601 text or epoch seconds", "device": "text", "sensor": "text",
             "value": "a number or numeric text"}


def _is_compound(t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        return _is_compound(t.storage_type)
    if pa.types.is_dictionary(t):
        return _is_compound(t.value_type)
    return bool(pa.types.is_nested(t) or pa.types.is_union(t) or pa.types.is_run_end_encoded(t))


def _as_text(col: pa.ChunkedArray) -> pa.Array:
    """Raw values as text for the quarantine (ids truncated so a hostile 10 MB id stays small)."""
    arr = _plain(col)
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    try:
        text = _render(arr)
    except pa.ArrowException:  # a type with no text form: the reason says what was wrong
        text = pa.nulls(len(arr), pa.string())
    return pc.utf8_slice_codeunits(text, 0, 1024)


def _render(arr: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(arr.type):
        try:
            return pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")
        except pa.ArrowException:  # beyond what strftime handles, or an unknown zone: the raw number
            return pc.cast(arr.cast(pa.int64()), pa.string())
    if _is_text(arr.type):
        return _as_string(arr, _Reasons(len(arr)), "")
    return pc.cast(arr, pa.string())


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous, dictionary-decoded array."""
    chunks = [_decoded(c) for c in (col.chunks if isinstance(col, pa.ChunkedArray) else [col])]
    if not chunks:
        arr = _unviewed(pa.array([], _value_type(col.type)))
    else:
        arr = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
    return arr


def _decoded(arr: pa.Array) -> pa.Array:
    """An extension array's storage, a dictionary array's values."""
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if not pa.types.is_dictionary(arr.type):
        return _unviewed(arr)
    return _unviewed(arr.dictionary).take(arr.indices)


def _unviewed(arr: pa.Array) -> pa.Array:
    """A string or binary view array as plain string or binary (take and filter have no view kernels)."""
    if pa.types.is_string_view(arr.type):
        return arr.cast(pa.string())
    return arr.cast(pa.binary()) if pa.types.is_binary_view(arr.type) else arr


def _value_type(t: pa.DataType) -> pa.DataType:
    """The type :func:`_decoded` turns an array of type ``t`` into."""
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    """String or binary (views are already plain, see :func:`_unviewed`); binary must then be UTF-8."""
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))


def _as_string(arr: pa.Array, reasons: _Reasons, what: str) -> pa.Array:
    """A text-like array as ``string``; values that are not valid UTF-8 are decoded with replacement
    characters and get the reason ``<what> is not valid UTF-8`` (only then is each distinct value
    looked at in Python)."""
    if pa.types.is_string(arr.type):
        return arr
    try:
        return pc.cast(arr, pa.string())
    except pa.ArrowInvalid:
        pass
    encoded = pc.dictionary_encode(pc.cast(arr, pa.binary()))
    raw = encoded.dictionary.to_pylist()
    valid = np.array([_is_utf8(b) for b in raw], dtype=bool)
    at = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
    invalid = ~valid[at] & ~arr.is_null().to_numpy(zero_copy_only=False)
    reasons.add(invalid, f"{what} is not valid UTF-8")
    texts = pa.array([b.decode("utf-8", "replace") for b in raw], pa.string())
    return texts.take(encoded.indices)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_ts(col: pa.ChunkedArray, reasons: _Reasons) -> np.ndarray:
    arr = _plain(col)
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        us = _timestamp_us(arr)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        us = _seconds_us(_floats(arr), reasons)
    elif _is_text(t):
        us = _parse_ts_text(_as_string(arr, reasons, "timestamp"), reasons)
    else:
        reasons.add_all("timestamp is missing" if pa.types.is_null(t) else f"timestamp has unsupported type {t}")
        return np.zeros(len(arr), dtype="int64")
    _add_missing(arr, reasons, "timestamp is missing")
    reasons.add((us < MIN_TS_US) | (us >= MAX_TS_US), "timestamp is outside 1970..2200")
    return us


#: µs per unit of a timestamp or date; None: nanoseconds, divided (truncated) instead.
_UNIT_US: dict[str, int | None] = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}


def _timestamp_us(arr: pa.Array) -> np.ndarray:
    """Timestamps (any unit; zoned ones are stored as UTC) or dates as µs since the epoch: finer
    units truncated, values far outside 1970..2200 clipped so nothing overflows (the range check
    then rejects them)."""
    if pa.types.is_date32(arr.type):
        per: int | None = 86_400_000_000
        raw = arr.cast(pa.int32())
    else:
        per = 1_000 if pa.types.is_date64(arr.type) else _UNIT_US[arr.type.unit]
        raw = arr.cast(pa.int64())
    ints: np.ndarray = raw.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return ints // 1_000 if per is None else np.clip(ints, -1, MAX_TS_US // per + 1) * per


def _floats(arr: pa.Array) -> np.ndarray:
    """Any numeric array as float64 (integers of any size and decimals rounded to the nearest float); nulls as 0."""
    values: np.ndarray = pc.cast(arr, pa.float64(), safe=False).fill_null(0.0).to_numpy(zero_copy_only=False)
    return values


def _seconds_us(secs: np.ndarray, reasons: _Reasons) -> np.ndarray:
    """Epoch seconds → µs, rounded; non-finite ones get a reason, huge ones are clipped (then rejected by range)."""
    finite = np.isfinite(secs)
    reasons.add(~finite, "timestamp is not finite (NaN or inf)")
    clipped = np.clip(np.where(finite, secs, 0.0), -1.0, MAX_TS_US / 1_000_000 + 1)
    us: np.ndarray = np.round(clipped * 1_000_000).astype(np.int64)
    return us


def _add_missing(arr: pa.Array, reasons: _Reasons, reason: str) -> None:
    """Give ``reason`` to the null rows of ``arr``, if any."""
    if arr.null_count:
        reasons.add(arr.is_null().to_numpy(zero_copy_only=False), reason)


def _parse_ts_text(arr: pa.Array, reasons: _Reasons) -> np.ndarray:
    """Vectorised ISO 8601, then epoch-seconds parse of a whole column; one by one only when the
    column mixes forms or holds bad values."""
    for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            parsed = pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        us: np.ndarray = parsed.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return us
    try:
        secs = pc.cast(pc.utf8_trim_whitespace(arr), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _parse_ts_rows(arr.to_pylist(), reasons)
    return _seconds_us(secs.fill_null(0.0).to_numpy(zero_copy_only=False), reasons)


_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|nan|inf(?:inity)?)\s*",
                     re.IGNORECASE)


def _parse_ts_rows(values: list[str | None], reasons: _Reasons) -> np.ndarray:
    """One by one: plain decimal numbers are epoch seconds, anything else must be ISO 8601."""
    us = np.zeros(len(values), dtype=np.int64)
    secs = np.zeros(len(values))  # 0 (finite) where not numeric
    numeric = np.zeros(len(values), dtype=bool)
    invalid = np.zeros(len(values), dtype=bool)
    for i, text in enumerate(values):
        if text is None:
            continue
        if _NUMBER.fullmatch(text):
            numeric[i], secs[i] = True, float(text)
            continue
        parsed = parse_time_us(text)
        if parsed is None:
            invalid[i] = True
        else:
            us[i] = parsed
    reasons.add(invalid, "timestamp is not a valid ISO 8601 time")
    return np.where(numeric, _seconds_us(secs, reasons), us) if numeric.any() else us


def _parse_value(col: pa.ChunkedArray, reasons: _Reasons) -> np.ndarray:
    arr = _plain(col)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = _floats(arr)
    elif _is_text(t):
        values = _parse_numbers(pc.utf8_trim_whitespace(_as_string(arr, reasons, "value")), reasons)
    else:
        reasons.add_all("value is a boolean, not a number" if pa.types.is_boolean(t) else
                        "value is missing" if pa.types.is_null(t) else f"value has unsupported type {t}")
        return np.zeros(len(arr))
    _add_missing(arr, reasons, "value is missing")
    reasons.add(~np.isfinite(values), "value is not finite (NaN or inf)")
    return values


def _parse_numbers(text: pa.Array, reasons: _Reasons) -> np.ndarray:
    """Numeric text as float64 (nulls 0), vectorised; one by one only when some value is not a number."""
    try:
        return _floats(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = np.array([_float_or_text(v) for v in text.to_pylist()], dtype=object)
    words = np.array([isinstance(v, str) for v in values], dtype=bool)
    reasons.add(words, "value is not a number")
    return np.where(words, 0.0, values).astype("float64")


def _float_or_text(v: str | None) -> float | str:
    if v is None:
        return 0.0
    try:
        return float(v)
    except ValueError:
        return v


#: C0, DEL and C1 controls (Unicode Cc).
_CONTROL = r"\p{Cc}"
#: Invisible or direction-changing characters: format characters (Cf: bidi overrides and isolates,
#: zero-width space and joiners, BOM, soft hyphen), line and paragraph separators (Zl, Zp), and the
#: Hangul fillers, which are letters that render as nothing.
_INVISIBLE = r"[\p{Cf}\p{Zl}\p{Zp}\x{115F}\x{1160}\x{3164}\x{FFA0}]"


def _check_ids(col: pa.ChunkedArray, what: str, reasons: _Reasons) -> pa.Array:
    """The ids as ``string`` (nulls as ""), each bad one given its reason."""
    arr = _plain(col)
    if pa.types.is_null(arr.type):
        reasons.add_all(f"{what} id is missing")
        return pa.nulls(len(arr), pa.string())
    if _is_text(arr.type):
        arr = _as_string(arr, reasons, f"{what} id")
    else:
        try:
            arr = pc.cast(arr, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            reasons.add_all(f"{what} id has unsupported type {arr.type}")
            return pa.nulls(len(arr), pa.string())
    _add_missing(arr, reasons, f"{what} id is missing")
    filled = arr.fill_null("") if arr.null_count else arr
    # ids repeat a lot within a batch: check each distinct id once, then spread the answers by index
    encoded = pc.dictionary_encode(filled)
    distinct = _id_reasons(encoded.dictionary, what)
    if distinct.bad.any():
        at = encoded.indices.to_numpy(zero_copy_only=False)
        reasons.add(distinct.bad[at], distinct.text[at])
    return filled


def _id_reasons(ids: pa.Array, what: str) -> _Reasons:
    """The reason each of the (distinct, non-null) ``ids`` is refused, if any."""
    out = _Reasons(len(ids))
    checks = [(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), f"{what} id is empty"),
              (pc.greater(pc.utf8_length(ids), MAX_ID_LENGTH), f"{what} id is longer than {MAX_ID_LENGTH} characters"),
              (pc.match_substring_regex(ids, _CONTROL), f"{what} id contains control characters")]
    if not pc.all(pc.string_is_ascii(ids)).as_py():  # every invisible character lies beyond ASCII
        checks.append((pc.match_substring_regex(ids, _INVISIBLE),
                       f"{what} id contains invisible or direction-changing characters "
                       "(Unicode Cf, Zl or Zp, e.g. U+200B, U+202E, U+2028, U+FEFF)"))
    for found, reason in checks:
        out.add(found.to_numpy(zero_copy_only=False), reason)
    return out
