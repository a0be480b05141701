"""Admit a parsed batch, append it to the durable log, answer once it is fsynced; HTTP and MQTT share it.

An answer (``{"accepted", "rejected", "errors"}``) is only produced after the batch's log record is
on disk, so an acknowledged reading survives any crash. Rejected rows travel in the same record
and reach the quarantine at compaction.

**Idempotency-Key**: the key and a digest of the body (:func:`body_digest`) are written in the
record's header. A batch re-sent with a key seen within the TTL is not appended again; it gets the
first answer (``replayed``). The same key with a different body is refused
(:class:`IdempotencyConflict`, HTTP 422): it is a client bug, and replaying would drop the new data.
Keys are rebuilt at start from the key files of past compactions and from the records not yet
compacted, so a retry after a crash is recognised too (keys stored before digests existed match any
body). A second request with a key still in flight waits for the first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pyarrow as pa

from fleetscore.clock import Clock, wall_clock
from fleetscore.config.ingest import IngestSettings
from fleetscore.core.admission import admit_readings
from fleetscore.errors import InputError
from fleetscore.ingest.checkpoint import IngestPaths, load_checkpoint
from fleetscore.ingest.log import SegmentLog, list_segments, read_frames, segment_name
from fleetscore.ingest.parse import ParsedBody
from fleetscore.ingest.records import IngestBatch, decode, decode_header, read_ipc_file

MAX_KEY_LENGTH = 200


class IdempotencyConflict(InputError):
    """An Idempotency-Key already used for a different body."""


def body_digest(body: bytes, kind: str) -> str:
    """What an Idempotency-Key is bound to: a blake2b digest of the body and its kind (``json``, ``csv``...)."""
    digest = hashlib.blake2b(kind.encode() + b"\0", digest_size=16)
    digest.update(body)
    return digest.hexdigest()


def check_key(key: str | None) -> str | None:
    """An Idempotency-Key must be 1..200 printable ASCII characters."""
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InputError(f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable ASCII characters")
    return key


class KeyCache:
    """Answers (and body digests) by Idempotency-Key, for ``ttl_s`` seconds; thread-safe."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_us = ttl_s * 1_000_000
        self._done: dict[str, tuple[int, str | None, dict[str, Any]]] = {}
        self._inflight: dict[str, tuple[str | None, Future[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._done)

    def remember(self, key: str, received_at_us: int, reply: dict[str, Any], digest: str | None = None) -> None:
        with self._lock:
            self._done[key] = (received_at_us, digest, reply)

    def claim(self, key: str, digest: str | None = None
              ) -> tuple[dict[str, Any] | None, Future[dict[str, Any]] | None, bool]:
        """(answer if done, future if in flight, True if the caller now owns the key); raises
        :class:`IdempotencyConflict` when the key was used for a body of another ``digest``."""
        with self._lock:
            if key in self._done:
                _, seen, reply = self._done[key]
                _check_same_body(key, seen, digest)
                return reply, None, False
            if key in self._inflight:
                seen, future = self._inflight[key]
                _check_same_body(key, seen, digest)
                return None, future, False
            self._inflight[key] = (digest, Future())
            return None, None, True

    def finish(self, key: str, received_at_us: int, reply: dict[str, Any] | None, error: BaseException | None) -> None:
        with self._lock:
            digest, future = self._inflight.pop(key)
            if reply is not None:
                self._done[key] = (received_at_us, digest, reply)
                if len(self._done) % 1024 == 0:  # forget keys past the TTL now and then
                    self._expire(received_at_us)
        if error is not None or reply is None:
            future.set_exception(error or RuntimeError("an idempotent batch ended with neither an answer nor an error"))
        else:
            future.set_result(reply)

    def _expire(self, now: int) -> None:
        """Called with the lock held."""
        old = [k for k, (t, _, _) in self._done.items() if t < now - self.ttl_us]
        for k in old:
            del self._done[k]


def _check_same_body(key: str, seen: str | None, digest: str | None) -> None:
    if seen is not None and digest is not None and seen != digest:
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used for a different body; a retry must send the same "
            "body, and a new batch needs a new key"
        )


class IngestService:
    """One writer of the durable log (``source`` = ``http`` or ``mqtt``) and its counters."""

    def __init__(self, home: Path, settings: IngestSettings, source: str, clock: Clock = wall_clock) -> None:
        self.paths = IngestPaths.of_home(home)
        self.clock = clock
        self.settings = settings
        self.source = source
        self.keys = KeyCache(settings.idempotency_ttl_s)
        self._load_keys()
        start = load_checkpoint(self.paths).position(source)
        self.log = SegmentLog(self.paths.log_dir(source), segment_bytes=settings.segment_bytes, min_segment=start[0])
        self._lock = threading.Lock()
        self.counters = {"batches": 0, "accepted": 0, "rejected": 0, "replayed": 0, "bytes": 0}
        self.last_batch_at_us: int | None = None

    def admit(self, parsed: ParsedBody, key: str | None = None, received_at_us: int | None = None,
              digest: str | None = None) -> IngestBatch:
        """Validate a parsed body into a log record (good rows + every rejected row with its reason)."""
        received = self.clock() if received_at_us is None else received_at_us
        admitted = admit_readings(parsed.table, received, self.settings.max_future_s * 1_000_000)
        rejected = admitted.rejected
        if parsed.rows is not None and rejected.num_rows:
            rows = parsed.rows[rejected.column("row").to_numpy()]
            rejected = rejected.set_column(0, "row", pa.array(rows, pa.int64()))
        if parsed.errors:
            rejected = pa.concat_tables([rejected, parsed.unparsed()]).sort_by("row")
        return IngestBatch(self.source, received, key, admitted.good, rejected, digest)

    def append(self, batch: IngestBatch) -> Future[None]:
        """Start writing the record; the future resolves when it is durable."""
        payload = batch.encode()
        future = self.log.append(payload)
        future.add_done_callback(lambda f: self._count(batch, len(payload)) if f.exception() is None else None)
        return future

    async def submit_async(self, parsed: ParsedBody | Callable[[], ParsedBody], key: str | None = None,
                           digest: str | None = None, executor: Executor | None = None) -> tuple[dict[str, Any], bool]:
        """Admit and append in ``executor`` (None: right here, on the event loop: cheaper for small
        batches), then await the fsync; returns (answer, replayed). ``parsed`` may be a function that
        parses the body, called in the same hop to the executor. ``digest`` binds ``key`` to the body
        (see module doc)."""
        if key is None:
            return (await self._write(parsed, None, None, executor)).reply(), False
        reply, waiting, owner = self.keys.claim(key, digest)
        if not owner:
            return self._replayed(reply if reply is not None else await asyncio.wrap_future(waiting))  # type: ignore[arg-type]
        try:
            batch = await self._write(parsed, key, digest, executor)
        except BaseException as exc:
            self.keys.finish(key, 0, None, exc)
            raise
        self.keys.finish(key, batch.received_at_us, batch.reply(), None)
        return batch.reply(), False

    async def _write(self, parsed: ParsedBody | Callable[[], ParsedBody], key: str | None, digest: str | None,
                     executor: Executor | None) -> IngestBatch:
        """The admitted batch, once durable."""
        def start() -> tuple[IngestBatch, Future[None]]:
            batch = self.admit(parsed if isinstance(parsed, ParsedBody) else parsed(), key, digest=digest)
            return batch, self.append(batch)

        if executor is None:
            batch, durable = start()
        else:
            batch, durable = await asyncio.get_running_loop().run_in_executor(executor, start)
        await asyncio.wrap_future(durable)
        return batch

    def _replayed(self, reply: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        with self._lock:
            self.counters["replayed"] += 1
        return reply, True

    def _count(self, batch: IngestBatch, size: int) -> None:
        with self._lock:
            self.counters["batches"] += 1
            self.counters["accepted"] += batch.good.num_rows
            self.counters["rejected"] += batch.rejected.num_rows
            self.counters["bytes"] += size
            self.last_batch_at_us = batch.received_at_us

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {f"{k}_total": v for k, v in self.counters.items()}
        out.update(last_batch_at_us=self.last_batch_at_us, fsyncs_total=self.log.fsyncs,
                   log_pending_records=self.log.pending, idempotency_keys=len(self.keys),
                   healthy=int(self.log.fault is None), log_failures_total=self.log.failures, log_fault=self.log.fault)
        return out

    def close(self) -> None:
        self.log.close()

    def _load_keys(self) -> None:
        """Keys of compacted batches (key files) and of batches still in the log, within the TTL."""
        cutoff = self.clock() - self.keys.ttl_us
        for path in sorted(self.paths.keys_dir.glob("keys-*.arrow")):
            table = read_ipc_file(path)
            digests = table.column("digest").to_pylist() if "digest" in table.column_names else [None] * len(table)
            columns = (table.column(c).to_pylist() for c in ("key", "received_at_us", "reply"))
            for key, at, reply, digest in zip(*columns, digests):
                if at >= cutoff:
                    self.keys.remember(key, at, json.loads(reply), digest)
        checkpoint = load_checkpoint(self.paths)
        for source in self.paths.sources():
            directory = self.paths.log_dir(source)
            seg0, off0 = checkpoint.position(source)
            for seg in list_segments(directory):
                if seg < seg0:
                    continue
                frames, _ = read_frames(directory / segment_name(seg), off0 if seg == seg0 else 0)
                for frame in frames:
                    header = decode_header(frame.payload)
                    if header.get("key") and header["received_at"] >= cutoff:
                        batch = decode(frame.payload)
                        self.keys.remember(header["key"], batch.received_at_us, batch.reply(), batch.digest)
