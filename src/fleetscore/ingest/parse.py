"""Request bodies → Arrow tables, columnar: JSON array, NDJSON, CSV or Arrow IPC stream (by Content-Type).

Each parser returns a :class:`ParsedBody`: a table with columns ts, device, sensor, value in their
raw types (validation converts and checks them), the input index of each table row, and the rows
that could not even be split into fields (a non-object JSON element, a bad NDJSON line, a CSV row
with the wrong number of fields), each with a reason. A body that cannot be parsed at all raises
:class:`BodyError` (HTTP 400); too many rows :class:`BodyTooLarge` (413); an unknown Content-Type
:class:`UnsupportedMediaType` (415).

JSON goes through orjson into one list per column (no per-row objects or models); CSV through
``pyarrow.csv`` with every column read as text; Arrow IPC is read as it is and fully validated,
since a malformed IPC buffer must be rejected rather than trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa

from fleetscore.core.schema import REJECT_SCHEMA, REQUIRED_COLUMNS
from fleetscore.errors import InputError

ARROW_STREAM = "application/vnd.apache.arrow.stream"
CONTENT_TYPES = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "text/csv": "csv",
    ARROW_STREAM: "arrow",
}
_SNIPPET = 1024


class BodyError(InputError):
    """The request body cannot be parsed at all (HTTP 400)."""

    status = 400


class BodyTooLarge(BodyError):
    """The body or the batch exceeds a limit (HTTP 413)."""

    status = 413


class UnsupportedMediaType(BodyError):
    """The Content-Type is not one of :data:`CONTENT_TYPES` (HTTP 415)."""

    status = 415


@dataclass
class ParsedBody:
    """Columns ts, device, sensor, value (raw types); ``rows[i]`` = input index of table row ``i``."""

    table: pa.Table
    rows: np.ndarray | None = None  # None: table row i is input row i
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (input index, raw text, reason)

    @property
    def total(self) -> int:
        return self.table.num_rows + len(self.errors)

    def unparsed(self) -> pa.Table:
        """The unsplittable rows in the quarantine schema (raw text kept in ``ts``, as the importer does)."""
        return pa.table(
            {
                "row": pa.array([e[0] for e in self.errors], pa.int64()),
                "ts": pa.array([e[1][:_SNIPPET] for e in self.errors], pa.string()),
                "device": pa.nulls(len(self.errors), pa.string()),
                "sensor": pa.nulls(len(self.errors), pa.string()),
                "value": pa.nulls(len(self.errors), pa.string()),
                "reason": pa.array([e[2] for e in self.errors], pa.string()),
            },
            schema=REJECT_SCHEMA,
        )


def media_kind(content_type: str | None) -> str:
    """``json``, ``ndjson``, ``csv`` or ``arrow`` for a Content-Type header (parameters ignored)."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    kind = CONTENT_TYPES.get(base)
    if kind is None:
        shown = base[:80] or "none"
        raise UnsupportedMediaType(f"Content-Type {shown!r} is not supported; use one of {', '.join(CONTENT_TYPES)}")
    return kind


def parse_body(body: bytes, kind: str, max_rows: int, optional: tuple[str, ...] = ()) -> ParsedBody:
    """Parse a body of the given kind (see :func:`media_kind`); at most ``max_rows`` rows. A CSV or
    Arrow body may lack the ``optional`` columns (a stream message that names its device or sensor)."""
    if not body.strip():
        raise BodyError("the request body is empty; send a batch of readings")
    if kind in ("csv", "arrow"):
        parsed = (parse_csv if kind == "csv" else parse_arrow)(body, max_rows, optional)
    else:
        parsed = (parse_json if kind == "json" else parse_ndjson)(body, max_rows)
    if parsed.total > max_rows:
        raise BodyTooLarge(f"the batch has {parsed.total} rows; the limit is {max_rows} per request")
    return parsed


def parse_json(body: bytes, max_rows: int) -> ParsedBody:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise BodyError(f"expected a JSON array of readings like [{{\"ts\": ..., \"device\": ..., \"sensor\": ..., "
                        f"\"value\": ...}}], got a JSON {type(data).__name__}")
    _check_rows(len(data), max_rows)
    return from_objects(data, np.arange(len(data)), [])


def parse_ndjson(body: bytes, max_rows: int) -> ParsedBody:
    lines = [line for line in body.split(b"\n") if line.strip()]
    _check_rows(len(lines), max_rows)
    try:  # fast path: one parse of all lines as one array
        data = orjson.loads(b"[" + b",".join(lines) + b"]")
        if len(data) == len(lines):
            return from_objects(data, np.arange(len(data)), [])
    except orjson.JSONDecodeError:
        pass
    objects, rows, errors = [], [], []
    for n, line in enumerate(lines):
        try:
            objects.append(orjson.loads(line))
            rows.append(n)
        except orjson.JSONDecodeError as exc:
            errors.append((n, line.decode("utf-8", "replace"), f"line is not valid JSON: {exc}"))
    return from_objects(objects, np.array(rows, dtype=np.int64), errors)


def _check_rows(n: int, max_rows: int) -> None:
    if n > max_rows:
        raise BodyTooLarge(f"the batch has {n} rows; the limit is {max_rows} per request")


def from_objects(data: list, rows: np.ndarray, errors: list[tuple[int, str, str]]) -> ParsedBody:
    """One column per field from a list of JSON values; non-objects become per-row errors."""
    if not all(type(item) is dict for item in data):
        keep = [type(item) is dict for item in data]
        errors = errors + [(int(rows[i]), orjson.dumps(item).decode(), "reading is not a JSON object")
                           for i, item in enumerate(data) if not keep[i]]
        errors.sort()
        rows = rows[np.array(keep, dtype=bool)] if len(rows) else rows
        data = [item for item in data if type(item) is dict]
    table = pa.table({name: _column([item.get(name) for item in data], name == "ts") for name in REQUIRED_COLUMNS})
    return ParsedBody(table, rows, errors)


def _column(values: list, is_time: bool) -> pa.Array:
    """An Arrow array of scalars; mixed or nested values become text, which validation then judges."""
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        arr = None
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_integer(arr.type)
                            or pa.types.is_floating(arr.type) or pa.types.is_null(arr.type)
                            or pa.types.is_boolean(arr.type)):
        return arr
    return pa.array([_text(v, is_time) for v in values], pa.string())


def _text(value: object, is_time: bool) -> str | None:
    """Text of one value; epoch seconds become ISO 8601 when they share a ts column with text."""
    if value is None or isinstance(value, str):
        return value
    if is_time and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            pass
    return orjson.dumps(value).decode()[:_SNIPPET]


def parse_csv(body: bytes, max_rows: int, optional: tuple[str, ...] = ()) -> ParsedBody:
    import pyarrow.csv as pacsv

    from fleetscore.storage.files import resolve_columns

    header = body.split(b"\n", 1)[0] + b"\n"
    try:
        names = pacsv.read_csv(pa.py_buffer(header)).schema.names
        cols = resolve_columns(names, None, optional)
    except (pa.ArrowInvalid, UnicodeDecodeError, InputError):
        raise BodyError("the CSV header must name the columns ts, device, sensor, value (or TS,Device,Tag,Value); "
                        f"found {header[:200].decode('utf-8', 'replace')!r}") from None
    bad: list[tuple[int, str, str]] = []

    def on_bad_row(row: pacsv.InvalidRow) -> str:
        bad.append((int(row.number) - 2, row.text or "",
                    f"malformed CSV row: {row.actual_columns} fields, expected {row.expected_columns}"))
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(body),
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_bad_row, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 include_columns=list(cols.values()), strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise BodyError(f"the body is not readable CSV: {str(exc)[:300]}") from None
    table = pa.table({canonical: table.column(source) for canonical, source in cols.items()})
    _check_rows(table.num_rows + len(bad), max_rows)
    rows = None
    if bad:
        keep = np.ones(table.num_rows + len(bad), dtype=bool)
        keep[[b[0] for b in bad]] = False
        rows = np.flatnonzero(keep)
    return ParsedBody(table, rows, bad)


def parse_arrow(body: bytes, max_rows: int, optional: tuple[str, ...] = ()) -> ParsedBody:
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        batches, n = [], 0
        for batch in reader:
            n += batch.num_rows
            _check_rows(n, max_rows)
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
        table.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise BodyError(f"the body is not a valid Arrow IPC stream: {str(exc)[:300]}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names and c not in optional]
    if missing:
        raise BodyError(f"the Arrow stream lacks column(s) {', '.join(missing)}; "
                        f"it has {', '.join(table.column_names)[:200] or 'none'}")
    return ParsedBody(table.select([c for c in REQUIRED_COLUMNS if c in table.column_names]))
