"""HTTP ingest: ``POST /v1/readings``, and the runtime that ``create_app`` starts in its lifespan.

``POST /v1/readings`` takes a batch as a JSON array, NDJSON, CSV or an Arrow IPC stream (by
Content-Type) and answers **202** ``{"accepted": n, "rejected": m, "errors": [{"index": i,
"error": "..."}]}`` only once the batch's log record is fsynced (group commit). Valid rows are
kept when others are bad. 400: the body cannot be parsed at all; 401: token missing or wrong
(when one is configured); 413: body or batch over the limits (an Arrow stream also once
decompressed: ``server.max_decompressed_bytes``); 415: unknown Content-Type, or a Content-Encoding
other than identity; 422: the Idempotency-Key was used for a different body; 503: ingest is not running or the log failed (the
batch was not stored; retry). ``Idempotency-Key`` makes a re-sent batch count once (the answer then
carries the header ``Idempotent-Replayed: true``).

A body larger than ``server.inline_parse_bytes`` (1 MiB) is parsed and admitted in a bounded pool
of :data:`WORKERS` threads, never on the event loop, so ``/healthz`` and other requests are answered
while a heavy body parses. Smaller bodies are parsed on the event loop (some tens of milliseconds
at most, for 1 MiB of JSON), which spares them the thread hop and the GIL hand-offs between the
loop and the pool.

``app.state.ingest`` is an :class:`~fleetscore.ingest.runtime.IngestRuntime`; its API for other parts of the app:

    runtime.running -> bool                 True between lifespan start and stop
    runtime.stats() -> dict                 numbers for /metrics and the overview page:
        accepted_total, rejected_total, batches_total, replayed_total, bytes_total   (since start)
        fsyncs_total, log_pending_records, log_lag_bytes (not yet compacted), idempotency_keys,
        healthy (1, or 0 while the log is faulted), log_failures_total, log_fault (text or None)
        last_batch_at_us, compactions_total, compaction_errors_total, last_compaction_at_us,
        open_windows, plus text: last_compaction_error, watermark (ISO time)
    runtime.compact_now() -> CompactResult | None   compact at once (also sealing the active segment)
    runtime.fault -> str | None             why the log cannot take batches now (``/healthz`` answers 503)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from fleetscore.config import IngestSettings
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.ingest.parse import (
    BodyError,
    BodyTooLarge,
    UnsupportedMediaType,
    check_decompressed_size,
    media_kind,
    parse_body,
)
from fleetscore.ingest.runtime import IngestRuntime
from fleetscore.ingest.service import IdempotencyConflict, body_digest, check_key
from fleetscore.web.auth import require_token

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fleetscore.api import Fleet

SOURCE = "http"
T = TypeVar("T")
#: Threads that parse and admit request bodies (at most this many bodies are worked on at once).
WORKERS = min(8, max(2, os.cpu_count() or 2))


class RowError(BaseModel):
    index: int
    error: str


class IngestReply(BaseModel):
    accepted: int
    rejected: int
    errors: list[RowError]


class ErrorReply(BaseModel):
    detail: str


def install(app: FastAPI, fleet: Fleet, settings: dict[str, Any]) -> None:
    """Add the ingest route and ``app.state.ingest`` (started by :func:`lifespan`)."""
    overrides = {k: v for k, v in settings.items() if k in IngestSettings.__dataclass_fields__}
    app.state.ingest = fleet.ingest_runtime(SOURCE, fleet.config.ingest.with_overrides(**overrides))
    app.include_router(router)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run ingest (:func:`_ingest_lifespan`) and, when receivers are configured, alert delivery with the server."""
    delivery = app.state.fleet.alert_delivery_thread() if app.state.settings.get("alerts", True) else None
    try:
        async with _ingest_lifespan(app):
            yield
    finally:
        if delivery is not None:
            await asyncio.get_running_loop().run_in_executor(None, delivery.stop)


@asynccontextmanager
async def _ingest_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the log writer and compaction with the server; stop them (and compact) at shutdown."""
    runtime: IngestRuntime | None = getattr(app.state, "ingest", None)
    if runtime is None or not app.state.settings.get("ingest", True):
        yield
        return
    runtime.start()
    app.state.ingest_workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="fleetscore-parse")
    try:
        yield
    finally:
        app.state.ingest_workers.shutdown()
        await asyncio.get_running_loop().run_in_executor(None, runtime.stop)


def ingest_fault(app: FastAPI) -> str | None:
    """Why this app's ingest cannot take batches right now (for ``/healthz``); None when it can or is off."""
    runtime: IngestRuntime | None = getattr(app.state, "ingest", None)
    return runtime.fault if runtime is not None else None


router = APIRouter(tags=["ingest"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "A batch of readings with fields ts (ISO 8601 or epoch seconds), device, sensor, value.",
        "content": {
            "application/json": {"schema": {"type": "array", "items": {
                "type": "object", "required": ["ts", "device", "sensor", "value"],
                "properties": {"ts": {"type": ["string", "number"]}, "device": {"type": "string"},
                               "sensor": {"type": "string"}, "value": {"type": ["number", "string"]}}}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/v1/readings",
    status_code=202,
    response_model=IngestReply,
    dependencies=[Depends(require_token)],
    openapi_extra=_BODY_DOC,
    responses={400: {"model": ErrorReply}, 401: {"model": ErrorReply}, 413: {"model": ErrorReply},
               415: {"model": ErrorReply}, 422: {"model": ErrorReply}, 503: {"model": ErrorReply}},
    summary="Ingest a batch of readings",
)
async def post_readings(
    request: Request,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=1024),
) -> JSONResponse:
    """Accept a batch (JSON array, NDJSON, CSV or Arrow IPC stream); 202 once it is durable."""
    runtime: IngestRuntime | None = getattr(request.app.state, "ingest", None)
    if runtime is None or runtime.service is None:
        return _error(503, "ingest is not running on this server")
    service = runtime.service
    workers: ThreadPoolExecutor | None = getattr(request.app.state, "ingest_workers", None)
    try:
        key = check_key(idempotency_key)
        kind = media_kind(request.headers.get("content-type"))
        _check_encoding(request.headers.get("content-encoding"))
        body = await _read_body(request, runtime.settings.max_body_bytes)
        server = request.app.state.fleet.config.server
        pool = None if _inline(body, kind, server.inline_parse_bytes) else workers
        digest = None if key is None else await _run(pool, body_digest, body, kind)
        parse = partial(parse_body, body, kind, runtime.settings.max_batch_rows,
                        max_decompressed_bytes=server.max_decompressed_bytes)
        reply, replayed = await service.submit_async(parse, key, digest, pool)
    except BodyError as exc:
        return _error(exc.status, str(exc))
    except ClientDisconnect:  # never sent: it only ends the request without a logged traceback
        return _error(400, "the client closed the connection before the body was complete")
    except IdempotencyConflict as exc:
        return _error(422, str(exc))
    except InputError as exc:
        return _error(400, str(exc))
    except FleetscoreError as exc:
        return _error(503, f"the batch was not stored: {exc}")
    return JSONResponse(reply, status_code=202, headers={"Idempotent-Replayed": "true"} if replayed else None)


def _inline(body: bytes, kind: str, limit: int) -> bool:
    """Light enough to parse on the event loop: at most ``limit`` bytes, and an Arrow stream (whose buffers may
    be compressed) at most that once inflated, by its message headers; a malformed one goes to the pool."""
    if len(body) > limit:
        return False
    if kind != "arrow":
        return True
    import pyarrow as pa

    try:
        check_decompressed_size(pa.py_buffer(body), limit)
    except BodyError:
        return False
    return True


async def _run(pool: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in ``pool``, or right here when there is none."""
    return fn(*args) if pool is None else await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _check_encoding(encoding: str | None) -> None:
    """Bodies travel uncompressed (an Arrow IPC stream may compress its own buffers, checked when parsed)."""
    name = (encoding or "").strip().lower()
    if name not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {name[:40]!r} is not supported; send the body uncompressed "
                                   "(an Arrow IPC stream may compress its own buffers with lz4 or zstd)")


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"the body has {length} bytes; the limit is {limit} bytes per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes per request")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)

