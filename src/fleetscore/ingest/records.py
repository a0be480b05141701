"""One ingest log record: an admitted batch, as it was answered.

Payload layout (inside a log frame): ``[u32 header length][header JSON][u64 length][good rows as an
Arrow IPC stream][rejected rows as an Arrow IPC stream, or nothing]``. The header holds the
source (``http``, ``mqtt``), the receive time (µs) and the Idempotency-Key, so the answer to a
re-sent batch can be rebuilt from the log alone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from fleetscore.core.schema import READING_SCHEMA, REJECT_SCHEMA
from fleetscore.errors import StorageError

_HEAD = struct.Struct("<I")
_BODY = struct.Struct("<Q")
#: At most this many per-row errors are returned in an answer (``rejected`` always has the total).
MAX_ERRORS = 1000


@dataclass(frozen=True)
class IngestBatch:
    """Good rows (:data:`READING_SCHEMA`) and rejected rows (:data:`REJECT_SCHEMA`) of one batch."""

    source: str
    received_at_us: int
    key: str | None
    good: pa.Table
    rejected: pa.Table
    digest: str | None = None  # of the body, binding ``key`` to it (fleetscore.ingest.service.body_digest)

    def reply(self) -> dict[str, Any]:
        """The answer to the batch: ``{"accepted", "rejected", "errors": [{"index", "error"}]}``."""
        head = self.rejected.slice(0, MAX_ERRORS)
        errors = [{"index": int(i), "error": str(e)} for i, e in
                  zip(head.column("row").to_pylist(), head.column("reason").to_pylist())]
        return {"accepted": self.good.num_rows, "rejected": self.rejected.num_rows, "errors": errors}

    def encode(self) -> bytes:
        fields = {"source": self.source, "received_at": self.received_at_us, "key": self.key}
        if self.digest is not None:
            fields["digest"] = self.digest
        header = json.dumps(fields, separators=(",", ":")).encode()
        good = _ipc(self.good.cast(READING_SCHEMA))
        rejected = _ipc(self.rejected.cast(REJECT_SCHEMA)) if self.rejected.num_rows else b""
        return b"".join([_HEAD.pack(len(header)), header, _BODY.pack(len(good)), good, rejected])


def decode_header(payload: bytes) -> dict[str, Any]:
    """Only the header of a record (cheap: for idempotency keys)."""
    (size,) = _HEAD.unpack_from(payload, 0)
    return json.loads(payload[_HEAD.size:_HEAD.size + size])


def decode(payload: bytes) -> IngestBatch:
    try:
        header = decode_header(payload)
        pos = _HEAD.size + _HEAD.unpack_from(payload, 0)[0]
        (size,) = _BODY.unpack_from(payload, pos)
        pos += _BODY.size
        good = pa.ipc.open_stream(pa.py_buffer(payload)[pos:pos + size]).read_all()
        rest = pa.py_buffer(payload)[pos + size:]
        rejected = pa.ipc.open_stream(rest).read_all() if rest.size else REJECT_SCHEMA.empty_table()
        return IngestBatch(header["source"], int(header["received_at"]), header.get("key"), good, rejected,
                           header.get("digest"))
    except (ValueError, KeyError, struct.error, pa.ArrowException) as exc:
        raise StorageError(f"ingest log record cannot be decoded: {exc}") from exc


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_file_bytes(table: pa.Table) -> bytes:
    """A table as an Arrow IPC file (the format of compaction's staged, state and key files)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_ipc_file(path: Path) -> pa.Table:
    try:
        return pa.ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
