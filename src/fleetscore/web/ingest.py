"""HTTP ingest: ``POST /v1/readings``, and the runtime that ``create_app`` starts in its lifespan.

``POST /v1/readings`` takes a batch as a JSON array, NDJSON, CSV or an Arrow IPC stream (by
Content-Type) and answers **202** ``{"accepted": n, "rejected": m, "errors": [{"index": i,
"error": "..."}]}`` only once the batch's log record is fsynced (group commit). Valid rows are
kept when others are bad. 400: the body cannot be parsed at all; 401: token missing or wrong
(when one is configured); 413: body or batch over the limits; 415: unknown Content-Type; 503:
ingest is not running or the log failed. ``Idempotency-Key`` makes a re-sent batch count once
(the answer then carries the header ``Idempotent-Replayed: true``).

``app.state.ingest`` is an :class:`~fleetscore.ingest.runtime.IngestRuntime`; its API for other parts of the app:

    runtime.running -> bool                 True between lifespan start and stop
    runtime.stats() -> dict                 numbers for /metrics and the overview page:
        accepted_total, rejected_total, batches_total, replayed_total, bytes_total   (since start)
        fsyncs_total, log_pending_records, log_lag_bytes (not yet compacted), idempotency_keys
        last_batch_at_us, compactions_total, compaction_errors_total, last_compaction_at_us,
        open_windows, plus text: last_compaction_error, watermark (ISO time)
    runtime.compact_now() -> CompactResult | None   compact at once (also sealing the active segment)
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fleetscore.config import IngestSettings
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.ingest.parse import BodyError, BodyTooLarge, media_kind, parse_body
from fleetscore.ingest.runtime import IngestRuntime
from fleetscore.web.auth import require_token

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fleetscore.api import Fleet

SOURCE = "http"


class RowError(BaseModel):
    index: int
    error: str


class IngestReply(BaseModel):
    accepted: int
    rejected: int
    errors: list[RowError]


class ErrorReply(BaseModel):
    detail: str


def install(app: "FastAPI", fleet: "Fleet", settings: dict[str, Any]) -> None:
    """Add the ingest route and ``app.state.ingest`` (started by :func:`lifespan`)."""
    overrides = {k: v for k, v in settings.items() if k in IngestSettings.__dataclass_fields__}
    app.state.ingest = fleet.ingest_runtime(SOURCE, fleet.config.ingest.with_overrides(**overrides))
    app.include_router(router)


@asynccontextmanager
async def lifespan(app: "FastAPI") -> AsyncIterator[None]:
    """Start the log writer and compaction with the server; stop them (and compact) at shutdown."""
    runtime: IngestRuntime | None = getattr(app.state, "ingest", None)
    if runtime is None or not app.state.settings.get("ingest", True):
        yield
        return
    runtime.start()
    try:
        yield
    finally:
        await asyncio.get_running_loop().run_in_executor(None, runtime.stop)


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
               415: {"model": ErrorReply}, 503: {"model": ErrorReply}},
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
    try:
        from fleetscore.ingest.service import check_key

        key = check_key(idempotency_key)
        kind = media_kind(request.headers.get("content-type"))
        body = await _read_body(request, runtime.settings.max_body_bytes)
        parsed = parse_body(body, kind, runtime.settings.max_batch_rows)
        reply, replayed = await service.submit_async(parsed, key)
    except BodyError as exc:
        return _error(exc.status, str(exc))
    except InputError as exc:
        return _error(400, str(exc))
    except FleetscoreError as exc:
        return _error(503, f"the batch was not stored: {exc}")
    return JSONResponse(reply, status_code=202, headers={"Idempotent-Replayed": "true"} if replayed else None)


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

