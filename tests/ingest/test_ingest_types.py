"""Every Arrow type in every reading column, through every input path: rows or an InputError, nothing else.

A property-based test builds tables whose ts, device, sensor and value columns each get a random
Arrow type (integers of every width, floats, decimals, text and binary of every layout, dictionaries,
timestamps of every unit and zone, dates, durations, nulls, structs, lists) and random values of it,
and feeds them to validation (the import path), to the Arrow IPC parser (HTTP and stream ingest,
plain and compressed) and through Parquet. Each must give accepted plus rejected rows that add up,
every rejection with a reason, or raise :class:`~fleetscore.errors.InputError`: never another exception.

``FLEETSCORE_FUZZ_EXAMPLES`` sets the number of examples per property (default 150; thousands for a soak run).
"""

from __future__ import annotations

import io
import os
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetscore.core.admission import admit_readings
from fleetscore.core.schema import READING_SCHEMA, REJECT_SCHEMA, REQUIRED_COLUMNS, Validated, validate_readings
from fleetscore.errors import InputError
from fleetscore.ingest.parse import parse_body

NOW = 1_767_225_600_000_000  # 2026-01-01
HOUR = 3_600_000_000
EXAMPLES = int(os.environ.get("FLEETSCORE_FUZZ_EXAMPLES", "150"))
ROWS = st.integers(0, 6)
I64 = (-(2**63), 2**63 - 1)
ZONES = [None, "UTC", "+05:30", "-23:59", "America/New_York", "Europe/Berlin"]
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123456789Z", "2026-01-01 00:00:00", "1767225600",
                     "1767225600.5", " 17 ", "1e400", "nan", "-inf", "", " ", "d\u202e", "d\u0085", "\ufeffx", "x\u2028",
                     "9223372036854775808", "-9223372036854775809", "2026-13-45T99:00:00Z"]),
)


def _ints(lo: int, hi: int, t: pa.DataType) -> st.SearchStrategy[pa.Array]:
    return st.lists(st.one_of(st.none(), st.integers(lo, hi), st.sampled_from([lo, hi, 0])), max_size=6).map(
        lambda v: pa.array(v, t))


def _decimals(precision: int, scale: int, t: pa.DataType) -> st.SearchStrategy[pa.Array]:
    bound = 10 ** (precision - 1)
    return st.lists(st.one_of(st.none(), st.integers(-bound, bound)), max_size=6).map(
        lambda v: pa.array([None if i is None else Decimal(i).scaleb(-scale) for i in v], t))


def _floats(width: int, t: pa.DataType) -> st.SearchStrategy[pa.Array]:
    dtype = {16: np.float16, 32: np.float32, 64: np.float64}[width]
    return st.lists(st.floats(width=width), max_size=6).map(lambda v: pa.array(np.array(v, dtype=dtype), t))


def _scalar_arrays() -> st.SearchStrategy[pa.Array]:
    ints = [_ints(-(2 ** (b - 1)), 2 ** (b - 1) - 1, getattr(pa, f"int{b}")()) for b in (8, 16, 32, 64)]
    uints = [_ints(0, 2**b - 1, getattr(pa, f"uint{b}")()) for b in (8, 16, 32, 64)]
    stamps = [_ints(*I64, pa.timestamp(unit, tz)) for unit in ("s", "ms", "us", "ns") for tz in ZONES]
    return st.one_of(
        *ints, *uints, *stamps,
        _floats(16, pa.float16()), _floats(32, pa.float32()), _floats(64, pa.float64()),
        _decimals(38, 3, pa.decimal128(38, 3)), _decimals(76, 0, pa.decimal256(76, 0)),
        *(st.lists(st.one_of(st.none(), TEXT), max_size=6).map(lambda v, t=t: pa.array(v, t))
          for t in (pa.string(), pa.large_string(), pa.string_view())),
        *(st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=6).map(lambda v, t=t: pa.array(v, t))
          for t in (pa.binary(), pa.large_binary())),
        st.lists(st.binary(min_size=4, max_size=4), max_size=6).map(lambda v: pa.array(v, pa.binary(4))),
        st.lists(st.one_of(st.none(), st.booleans()), max_size=6).map(lambda v: pa.array(v, pa.bool_())),
        st.integers(0, 6).map(pa.nulls),
        _ints(-(2**31), 2**31 - 1, pa.date32()),
        st.lists(st.integers(-(2**36), 2**36), max_size=6).map(lambda v: pa.array([d * 86_400_000 for d in v], pa.date64())),
        _ints(*I64, pa.duration("ns")), _ints(0, 86_399, pa.time32("s")),
    )


def _arrays() -> st.SearchStrategy[pa.Array]:
    scalar = _scalar_arrays()
    return st.one_of(
        scalar,
        scalar.map(lambda a: a.dictionary_encode() if not pa.types.is_null(a.type) else a),
        scalar.map(lambda a: pa.StructArray.from_arrays([a], ["x"])),
        scalar.map(lambda a: pa.ListArray.from_arrays(pa.array(range(len(a) + 1), pa.int32()), a)),
    )


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """Four columns of random types, cut or padded with nulls to one length."""
    n = draw(ROWS)
    columns = {}
    for name in REQUIRED_COLUMNS:
        arr = draw(_arrays())
        if len(arr) < n:
            arr = pa.concat_arrays([arr, pa.nulls(n - len(arr), arr.type)])
        columns[name] = arr.slice(0, n)
    return pa.table(columns)


def check_outcome(run, rows: int) -> None:  # type: ignore[no-untyped-def]
    """``run()`` gives validated rows that add up to ``rows``, or raises InputError with a message."""
    try:
        out: Validated = run()
    except InputError as exc:
        assert str(exc).strip()
        return
    assert out.good.schema == READING_SCHEMA and out.rejected.schema == REJECT_SCHEMA
    assert out.good.num_rows + out.rejected.num_rows == rows
    assert all(out.rejected.column("reason").to_pylist())
    ts = out.good.column("ts").cast(pa.int64()).to_numpy()
    assert ((ts >= 0) & (ts < 7_258_118_400_000_000)).all()
    assert np.isfinite(out.good.column("value").to_numpy()).all()


def ipc(table: pa.Table, compression: str | None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(table=tables(), compression=st.sampled_from([None, "zstd", "lz4"]))
def test_any_arrow_types_give_rows_or_an_input_error(table: pa.Table, compression: str | None) -> None:
    check_outcome(lambda: validate_readings(table), table.num_rows)
    check_outcome(lambda: admit_readings(table, NOW, HOUR), table.num_rows)

    def over_ipc() -> Validated:
        return admit_readings(parse_body(ipc(table, compression), "arrow", 1000).table, NOW, HOUR)

    check_outcome(over_ipc, table.num_rows)
    sink = io.BytesIO()
    try:
        pq.write_table(table, sink)
    except pa.ArrowException:
        return  # a type Parquet cannot store: nothing to import
    check_outcome(lambda: validate_readings(pq.read_table(io.BytesIO(sink.getvalue()))), table.num_rows)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(items=st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={name: json_values for name in REQUIRED_COLUMNS}), json_values), max_size=6),
    depth=st.sampled_from([0, 0, 300, 600]))
def test_any_json_gives_rows_or_an_input_error(items: list, depth: int) -> None:
    import json

    body = json.dumps(items).encode()
    if depth:  # a value nested deeper than the encoders go, in a field and as an element
        deep = b"[" * depth + b"]" * depth
        body = body[:-1] + (b"," if items else b"") + b'{"ts": 1767225600, "device": "d", "sensor": "s", "value": ' \
            + deep + b"}, " + deep + b"]"
    try:
        parsed = parse_body(body, "json", 1000)
    except InputError as exc:
        assert str(exc).strip()
        return
    check_outcome(lambda: admit_readings(parsed.table, NOW, HOUR), parsed.table.num_rows)
    assert parsed.total == len(items) + (2 if depth else 0)
    assert all(reason for _, _, reason in parsed.errors)


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_compound_columns_are_refused_naming_column_and_type(column: str) -> None:
    base = {"ts": ["2026-01-01T00:00:00Z"], "device": ["d"], "sensor": ["s"], "value": [1.0]}
    table = pa.table(base | {column: pa.array([{"a": 1}])})
    with pytest.raises(InputError, match=rf"column '{column}' has type struct<a: int64>"):
        validate_readings(table)
    listed = pa.table(base | {column: pa.array([[1.0]])})
    from fleetscore.ingest.parse import BodyError

    with pytest.raises(BodyError, match=rf"column '{column}' has type list<item: double>") as err:
        parse_body(ipc(listed, None), "arrow", 10)
    assert err.value.status == 400
