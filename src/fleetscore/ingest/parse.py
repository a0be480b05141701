"""Request bodies → Arrow tables, columnar: JSON array, NDJSON, CSV or Arrow IPC stream (by Content-Type).

Each parser returns a :class:`ParsedBody`: a table with columns ts, device, sensor, value in their
raw types (validation converts and checks them), the input index of each table row, and the rows
that could not even be split into fields (a non-object JSON element, a bad NDJSON line, a CSV row
with the wrong number of fields), each with a reason. A body that cannot be parsed at all raises
:class:`BodyError` (HTTP 400); too many rows :class:`BodyTooLarge` (413); an unknown Content-Type
:class:`UnsupportedMediaType` (415).

JSON goes through orjson into one list per column (no per-row objects or models); a field whose
value is a JSON array or object (however deeply nested) makes its row an error. CSV goes through
``pyarrow.csv`` with every column read as text. Arrow IPC is read as it is and fully validated,
since a malformed IPC buffer must be rejected rather than trusted; its decompressed size is checked
from the message headers first (``max_decompressed_bytes``), so a small compressed stream cannot
inflate to gigabytes, and a column of a compound type (struct, list, ...) is a :class:`BodyError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa

from fleetscore.config.server import DEFAULT_MAX_DECOMPRESSED_BYTES
from fleetscore.core.schema import REJECT_SCHEMA, REQUIRED_COLUMNS, check_column_types
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


def parse_body(body: bytes, kind: str, max_rows: int, optional: tuple[str, ...] = (),
               max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> ParsedBody:
    """Parse a body of the given kind (see :func:`media_kind`); at most ``max_rows`` rows, and an Arrow
    stream at most ``max_decompressed_bytes`` once decompressed. A CSV or Arrow body may lack the
    ``optional`` columns (a stream message that names its device or sensor)."""
    if not body.strip():
        raise BodyError("the request body is empty; send a batch of readings")
    if kind == "arrow":
        parsed = parse_arrow(body, max_rows, optional, max_decompressed_bytes)
    elif kind == "csv":
        parsed = parse_csv(body, max_rows, optional)
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
    """One column per field from a list of JSON values; non-objects, and objects with an array or
    object as a field's value, become per-row errors."""
    if not all(type(item) is dict for item in data):
        keep = [type(item) is dict for item in data]
        errors = errors + [(int(rows[i]), _dump(item), "reading is not a JSON object")
                           for i, item in enumerate(data) if not keep[i]]
        errors.sort()
        rows = rows[np.array(keep, dtype=bool)] if len(rows) else rows
        data = [item for item in data if type(item) is dict]
    columns = {name: _column([item.get(name) for item in data], name) for name in REQUIRED_COLUMNS}
    table = pa.table({name: arr for name, (arr, _) in columns.items()})
    compound = [problems for _, problems in columns.values() if problems is not None]
    if not compound:
        return ParsedBody(table, rows, errors)
    reasons = [next((p[i] for p in compound if p[i] is not None), None) or "" for i in range(len(data))]
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    errors = sorted(errors + [(int(rows[i]), _dump(data[i]), reasons[i]) for i in np.flatnonzero(bad)])
    return ParsedBody(table.filter(pa.array(~bad)), rows[~bad], errors)


def _column(values: list, name: str) -> tuple[pa.Array, list[str | None] | None]:
    """An Arrow array of scalars; mixed values become text, which validation then judges. Arrays and
    objects cannot be one field's value: their rows get a reason (the second item), their cell null."""
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        arr = None
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_integer(arr.type)
                            or pa.types.is_floating(arr.type) or pa.types.is_null(arr.type)
                            or pa.types.is_boolean(arr.type)):
        return arr, None
    problems: list[str | None] = [
        f"{name} is a JSON {'object' if type(v) is dict else 'array'}, not a single value"
        if type(v) in (dict, list) else None for v in values]
    texts = [None if p is not None else _text(v) for v, p in zip(values, problems)]
    return pa.array(texts, pa.string()), problems if any(p is not None for p in problems) else None


def _text(value: object) -> str | None:
    """Text of one scalar (numbers as they were written: in ``ts`` they are epoch seconds)."""
    if value is None or isinstance(value, str):
        return value
    return _dump(value)


def _dump(value: object) -> str:
    """JSON text of a value, at most :data:`_SNIPPET` characters; never fails on deep nesting."""
    try:
        return orjson.dumps(value).decode()[:_SNIPPET]
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return f"(a JSON {type(value).__name__} nested too deeply to show)"


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


def parse_arrow(body: bytes, max_rows: int, optional: tuple[str, ...] = (),
                max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> ParsedBody:
    """An Arrow IPC stream; its decompressed size is checked against ``max_decompressed_bytes`` from
    the message headers before any buffer is decompressed (:class:`BodyTooLarge`)."""
    buffer = pa.py_buffer(body)
    try:
        check_decompressed_size(buffer, max_decompressed_bytes)
        reader = pa.ipc.open_stream(buffer)
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
    try:
        check_column_types(table.schema)
    except InputError as exc:
        raise BodyError(str(exc)) from None
    return ParsedBody(table.select([c for c in REQUIRED_COLUMNS if c in table.column_names]))


def check_decompressed_size(stream: pa.Buffer, limit: int) -> None:
    """Refuse an Arrow IPC stream whose buffers add up to more than ``limit`` bytes once decompressed.

    Reads only the message headers (FlatBuffers) and the 8-byte length that prefixes each compressed
    buffer, so a small stream that would inflate to gigabytes is refused without inflating it.
    """
    total = 0
    try:
        for message in pa.ipc.MessageReader.open_stream(stream):
            if message.type not in ("record batch", "dictionary") or message.body is None:
                continue
            total += _message_size(memoryview(message.metadata), memoryview(message.body))
            if total > limit:
                raise BodyTooLarge(f"the Arrow stream decompresses to more than {limit:,} bytes "
                                   "(the limit is server.max_decompressed_bytes)")
    except (struct.error, IndexError):
        raise BodyError("the body is not a valid Arrow IPC stream: a message header is malformed") from None
    except (pa.ArrowException, OSError) as exc:  # e.g. "negative continuation token": Arrow's OSError
        raise BodyError(f"the body is not a valid Arrow IPC stream: {str(exc)[:200]}") from None


_RECORD_BATCH, _DICTIONARY_BATCH = 3, 2  # MessageHeader union tags (Arrow's Message.fbs)


def _message_size(meta: memoryview, body: memoryview) -> int:
    """Decompressed bytes of one record or dictionary batch message: the sum of its buffers."""
    message = _u32(meta, 0)
    kind, header = _field(meta, message, 1), _ref(meta, message, 2)
    if kind is None or header is None:
        return 0
    batch: int | None = header
    if meta[kind] == _DICTIONARY_BATCH:
        batch = _ref(meta, header, 1)
    elif meta[kind] != _RECORD_BATCH:
        return 0
    if batch is None:
        return 0
    buffers = _ref(meta, batch, 2)
    if buffers is None:
        return 0
    compressed = _field(meta, batch, 3) is not None
    count = _u32(meta, buffers)
    if buffers + 4 + 16 * count > len(meta):
        raise struct.error("the buffer list overruns the message header")
    size = 0
    for i in range(count):
        offset, length = struct.unpack_from("<qq", meta, buffers + 4 + 16 * i)
        if compressed and length >= 8:  # a compressed buffer starts with its decompressed length (-1: stored raw)
            (raw,) = struct.unpack_from("<q", body, offset)
            length = length - 8 if raw == -1 else raw
        size += max(length, 0)
    return size


def _u32(buf: memoryview, pos: int) -> int:
    value: int = struct.unpack_from("<I", buf, pos)[0]
    return value


def _field(buf: memoryview, table: int, index: int) -> int | None:
    """Position of field ``index`` of the FlatBuffers table at ``table``, or None when it is absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > vtable_size:
        return None
    offset: int = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _ref(buf: memoryview, table: int, index: int) -> int | None:
    """Where the table or vector that field ``index`` points to starts, or None when absent."""
    at = _field(buf, table, index)
    return None if at is None else at + _u32(buf, at)
