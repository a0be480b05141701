"""Stream messages (Kafka, NATS) → one parsed batch per group, with each bad row traced to its message.

A message's value is one reading or a batch, as JSON (an object or an array of them), NDJSON, CSV or
an Arrow IPC stream: the parsers of HTTP ingest (:mod:`fleetscore.ingest.parse`). The format is the
message's ``content-type`` header, else the consumer's ``--format``. A reading without device or
sensor takes the message's defaults (headers ``device`` / ``sensor``, else the message key or the
subject, as each source decides); the reading's own fields always win.

A message that cannot be parsed, or is larger than ``max_body_bytes``, becomes one rejected row:
the group goes on, so a poison message never stalls a partition. Every rejected row's reason starts
with where its message was (``topic=T partition=P offset=O``), and ``row`` is its index within the
message, so the quarantine says exactly which message to look at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.ingest.parse import CONTENT_TYPES, BodyError, ParsedBody, from_objects, parse_body
from fleetscore.ingest.records import IngestBatch
from fleetscore.ingest.service import IngestService

#: ``--format`` choices, in the order the help lists them.
FORMATS = ("json", "ndjson", "csv", "arrow")
_SNIPPET = 200
_NO_ROWS = np.array([], dtype=np.int64)


@dataclass(frozen=True)
class StreamMessage:
    """One message of a stream: its value, format hint, default ids and position (``where``)."""

    value: bytes
    where: str
    content_type: str | None = None
    device: str | None = None
    sensor: str | None = None

    @classmethod
    def of(cls, value: bytes, where: str, headers: Iterable[tuple[str, str | bytes | None]],
           fallback: tuple[str | None, str | None]) -> StreamMessage:
        """A message whose ``content-type`` / ``device`` / ``sensor`` headers (any case) win over the
        ``fallback`` ids the source derives otherwise (a Kafka key, a NATS subject)."""
        found: dict[str, str] = {}
        for name, raw in headers:
            lowered = name.lower()
            if raw is not None and lowered in ("content-type", "device", "sensor"):
                found[lowered] = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        device = found.get("device", fallback[0])
        sensor = found.get("sensor", fallback[1])
        return cls(value, where, found.get("content-type"), device, sensor)


@dataclass
class ParsedGroup:
    """A group of messages parsed into one body; ``origins[i]`` = message of input row ``i``."""

    bodies: list[ParsedBody]  # one per run of same-format messages; input rows numbered across the group
    origins: np.ndarray
    firsts: np.ndarray  # first input row of each message
    wheres: list[str]

    @property
    def messages(self) -> int:
        return len(self.wheres)

    def admit(self, service: IngestService) -> IngestBatch:
        """One log record for the group: each body admitted (formats may differ in column types), then
        joined, every rejected row's reason prefixed by its message's position and ``row`` made its
        index within that message."""
        batches = [service.admit(body) for body in self.bodies] or [service.admit(from_objects([], _NO_ROWS, []))]
        first = batches[0]
        batch = replace(first, good=pa.concat_tables([b.good for b in batches]),
                        rejected=pa.concat_tables([b.rejected for b in batches]).sort_by("row"))
        rejected = batch.rejected
        if not rejected.num_rows:
            return batch
        rows = rejected.column("row").to_numpy()
        msg = self.origins[rows]
        reasons = [f"{self.wheres[m]}: {r}" for m, r in zip(msg.tolist(), rejected.column("reason").to_pylist())]
        rejected = rejected.set_column(0, "row", pa.array(rows - self.firsts[msg], pa.int64()))
        rejected = rejected.set_column(rejected.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
        return replace(batch, rejected=rejected)


def message_kind(content_type: str | None, default: str) -> str | None:
    """The parser for a message: its content-type if it names one we know, else ``default``; None if the
    header names a type we do not parse."""
    if not content_type:
        return default
    return CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())


def parse_group(messages: list[StreamMessage], default_kind: str, max_bytes: int, max_rows: int) -> ParsedGroup:
    """Parse every message of a group into one body; bad messages become rejected rows."""
    pieces: list[pa.Table] = []
    rows: list[np.ndarray] = []
    errors: list[tuple[int, str, str]] = []
    counts = np.zeros(len(messages), dtype=np.int64)
    json_items: list[object] = []
    json_rows: list[int] = []
    next_row = 0

    def flush_json() -> None:
        if json_items:
            parsed = from_objects(list(json_items), np.array(json_rows, dtype=np.int64), [])
            pieces.append(parsed.table)
            rows.append(parsed.rows if parsed.rows is not None else np.array(json_rows, dtype=np.int64))
            errors.extend(parsed.errors)
            json_items.clear()
            json_rows.clear()

    decoded = _decode_json_values(messages, default_kind, max_bytes)
    for i, message in enumerate(messages):
        kind = message_kind(message.content_type, default_kind)
        problem = _size_problem(message, kind, max_bytes)
        if problem is not None:
            errors.append((next_row, _snippet(message.value), problem))
            counts[i] = 1
            next_row += 1
            continue
        if kind == "json":
            items = decoded[i] if decoded is not None else _json_items(message.value)
            if isinstance(items, str):
                errors.append((next_row, _snippet(message.value), items))
                counts[i] = 1
                next_row += 1
                continue
            if len(items) > max_rows:
                errors.append((next_row, _snippet(message.value),
                               f"the message has {len(items)} readings; the limit is {max_rows}"))
                counts[i] = 1
                next_row += 1
                continue
            for item in items:
                if type(item) is dict:
                    if item.get("device") is None and message.device is not None:
                        item["device"] = message.device
                    if item.get("sensor") is None and message.sensor is not None:
                        item["sensor"] = message.sensor
                json_items.append(item)
                json_rows.append(next_row)
                next_row += 1
            counts[i] = len(items)
            continue
        flush_json()
        try:
            parsed = parse_body(message.value, kind, max_rows, optional=_optional(message))  # type: ignore[arg-type]
            table = _with_defaults(parsed.table, message)
        except BodyError as exc:
            errors.append((next_row, _snippet(message.value), str(exc)))
            counts[i] = 1
            next_row += 1
            continue
        local = parsed.rows if parsed.rows is not None else np.arange(table.num_rows, dtype=np.int64)
        pieces.append(table)
        rows.append(local + next_row)
        errors.extend((next_row + e[0], e[1], e[2]) for e in parsed.errors)
        counts[i] = parsed.total
        next_row += parsed.total
    flush_json()
    origins = np.repeat(np.arange(len(messages)), counts)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(messages) else counts
    runs: list[tuple[list[pa.Table], list[np.ndarray]]] = []  # consecutive pieces of one schema: admitted together
    for table, local in zip(pieces, rows):
        if runs and runs[-1][0][-1].schema.equals(table.schema):
            runs[-1][0].append(table)
            runs[-1][1].append(local)
        else:
            runs.append(([table], [local]))
    bodies = [ParsedBody(pa.concat_tables(tables), np.concatenate(locals_)) for tables, locals_ in runs]
    if errors:
        bodies.append(from_objects([], np.array([], dtype=np.int64), sorted(errors)))
    return ParsedGroup(bodies, origins, firsts, [m.where for m in messages])


def _size_problem(message: StreamMessage, kind: str | None, max_bytes: int) -> str | None:
    if kind is None:
        return (f"content-type {message.content_type[:80]!r} is not supported; use one of "  # type: ignore[index]
                f"{', '.join(CONTENT_TYPES)}")
    if len(message.value) > max_bytes:
        return f"the message is {len(message.value):,} bytes; the limit is {max_bytes:,} (ingest.max_body_bytes)"
    if not message.value.strip():
        return "the message is empty"
    return None


def _decode_json_values(messages: list[StreamMessage], default_kind: str, max_bytes: int) -> list[list[object]] | None:
    """Fast path: when every message is JSON, parse all values in one orjson call; None when that is
    not possible (other formats, an oversized or invalid message: then each is parsed alone)."""
    if not messages or any(message_kind(m.content_type, default_kind) != "json" or len(m.value) > max_bytes
                           or not m.value.strip() for m in messages):
        return None
    try:
        values = orjson.loads(b"[" + b",".join(m.value for m in messages) + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(values) != len(messages):
        return None
    return [v if isinstance(v, list) else [v] for v in values]


def _json_items(value: bytes) -> list[object] | str:
    """The readings of one JSON message, or the reason it has none."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return f"the message is not valid JSON: {exc}"
    return data if isinstance(data, list) else [data]


def _with_defaults(table: pa.Table, message: StreamMessage) -> pa.Table:
    """Fill a missing or null device / sensor column with the message's defaults."""
    for name, default in (("device", message.device), ("sensor", message.sensor)):
        if default is None:
            continue
        if name not in table.column_names:
            table = table.append_column(name, pa.array([default] * table.num_rows, pa.string()))
        elif table.column(name).null_count:
            col = table.column(name)
            if not pa.types.is_string(col.type):
                col = col.cast(pa.string())
            table = table.set_column(table.schema.get_field_index(name), name, pc.fill_null(col, default))
    return table


def _optional(message: StreamMessage) -> tuple[str, ...]:
    """Columns a CSV or Arrow message may leave out because the message supplies them."""
    return tuple(n for n, v in (("device", message.device), ("sensor", message.sensor)) if v is not None)


def _snippet(value: bytes) -> str:
    return value[:_SNIPPET].decode("utf-8", "replace")
