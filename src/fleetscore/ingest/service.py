"""Admit a parsed batch, append it to the durable log, answer once it is fsynced; HTTP and MQTT share it.

An answer (``{"accepted", "rejected", "errors"}``) is only produced after the batch's log record is
on disk, so an acknowledged reading survives any crash. Rejected rows travel in the same record
and reach the quarantine at compaction.

**Idempotency-Key**: the key is written in the record's header. A batch re-sent with a key seen
within the TTL is not appended again; it gets the first answer (``replayed``). Keys are rebuilt at
start from the key files of past compactions and from the records not yet compacted, so a retry
after a crash is recognised too. A second request with a key still in flight waits for the first.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow as pa

from fleetscore.core.admission import admit_readings
from fleetscore.errors import InputError
from fleetscore.ingest.checkpoint import IngestPaths, load_checkpoint
from fleetscore.ingest.log import SegmentLog, list_segments, read_frames, segment_name
from fleetscore.ingest.parse import ParsedBody
from fleetscore.ingest.records import IngestBatch, decode, decode_header, read_ipc_file
from fleetscore.clock import Clock, wall_clock
from fleetscore.config.ingest import IngestSettings

MAX_KEY_LENGTH = 200


def check_key(key: str | None) -> str | None:
    """An Idempotency-Key must be 1..200 printable ASCII characters."""
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InputError(f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable ASCII characters")
    return key


class KeyCache:
    """Answers by Idempotency-Key, for ``ttl_s`` seconds; thread-safe."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_us = ttl_s * 1_000_000
        self._done: dict[str, tuple[int, dict[str, Any]]] = {}
        self._inflight: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._done)

    def remember(self, key: str, received_at_us: int, reply: dict[str, Any]) -> None:
        with self._lock:
            self._done[key] = (received_at_us, reply)

    def claim(self, key: str) -> tuple[dict[str, Any] | None, "Future[dict[str, Any]] | None", bool]:
        """(answer if done, future if in flight, True if the caller now owns the key)."""
        with self._lock:
            if key in self._done:
                return self._done[key][1], None, False
            if key in self._inflight:
                return None, self._inflight[key], False
            self._inflight[key] = Future()
            return None, None, True

    def finish(self, key: str, received_at_us: int, reply: dict[str, Any] | None, error: BaseException | None) -> None:
        with self._lock:
            future = self._inflight.pop(key)
            if reply is not None:
                self._done[key] = (received_at_us, reply)
                if len(self._done) % 1024 == 0:  # forget keys past the TTL now and then
                    self._expire(received_at_us)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(reply)

    def _expire(self, now: int) -> None:
        """Called with the lock held."""
        old = [k for k, (t, _) in self._done.items() if t < now - self.ttl_us]
        for k in old:
            del self._done[k]


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

    def admit(self, parsed: ParsedBody, key: str | None = None, received_at_us: int | None = None) -> IngestBatch:
        """Validate a parsed body into a log record (good rows + every rejected row with its reason)."""
        received = self.clock() if received_at_us is None else received_at_us
        admitted = admit_readings(parsed.table, received, self.settings.max_future_s * 1_000_000)
        rejected = admitted.rejected
        if parsed.rows is not None and rejected.num_rows:
            rows = parsed.rows[rejected.column("row").to_numpy()]
            rejected = rejected.set_column(0, "row", pa.array(rows, pa.int64()))
        if parsed.errors:
            rejected = pa.concat_tables([rejected, parsed.unparsed()]).sort_by("row")
        return IngestBatch(self.source, received, key, admitted.good, rejected)

    def append(self, batch: IngestBatch) -> "Future[None]":
        """Start writing the record; the future resolves when it is durable."""
        payload = batch.encode()
        future = self.log.append(payload)
        future.add_done_callback(lambda f: self._count(batch, len(payload)) if f.exception() is None else None)
        return future

    async def submit_async(self, parsed: ParsedBody, key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Admit, append and await the fsync (without blocking the event loop); returns (answer, replayed)."""
        if key is None:
            batch = self.admit(parsed)
            await asyncio.wrap_future(self.append(batch))
            return batch.reply(), False
        reply, waiting, owner = self.keys.claim(key)
        if not owner:
            return self._replayed(reply if reply is not None else await asyncio.wrap_future(waiting))  # type: ignore[arg-type]
        try:
            batch = self.admit(parsed, key)
            await asyncio.wrap_future(self.append(batch))
        except BaseException as exc:
            self.keys.finish(key, 0, None, exc)
            raise
        self.keys.finish(key, batch.received_at_us, batch.reply(), None)
        return batch.reply(), False

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
                   log_pending_records=self.log.pending, idempotency_keys=len(self.keys))
        return out

    def close(self) -> None:
        self.log.close()

    def _load_keys(self) -> None:
        """Keys of compacted batches (key files) and of batches still in the log, within the TTL."""
        cutoff = self.clock() - self.keys.ttl_us
        for path in sorted(self.paths.keys_dir.glob("keys-*.arrow")):
            table = read_ipc_file(path)
            for key, at, reply in zip(*(table.column(c).to_pylist() for c in ("key", "received_at_us", "reply"))):
                if at >= cutoff:
                    self.keys.remember(key, at, json.loads(reply))
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
                        self.keys.remember(header["key"], batch.received_at_us, batch.reply())
