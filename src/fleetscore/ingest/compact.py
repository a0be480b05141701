"""Compaction: the durable log → hourly Parquet readings, closed stream windows, and the quarantine.

Compaction runs in steps; each step takes the records after the checkpoint (all logs, a bounded
number of rows) and goes through three phases:

1. **decide** — drop readings already seen (earlier in the step, or already stored: a re-sent
   batch, an MQTT redelivery), quarantine the readings late for their own device (see
   :mod:`~fleetscore.ingest.lateness`), feed the rest to the stream engine, and write everything
   the step will change: rows to land, quarantine rows, closed windows, Idempotency-Keys to
   ``staged/``, the new stream state and device clock to ``state/``; ``staged/step.json`` last,
   atomically. From then on the step is decided and no longer depends on what storage holds.
2. **apply** — land the rows (idempotent by key), write quarantine and window files under names
   derived from the step number (a re-apply overwrites them with the same content), file the keys.
3. **commit** — replace the checkpoint atomically; then delete ``staged/``, the previous state
   files (stream state, device clock) and the log segments wholly behind the checkpoint.

A crash before ``step.json`` exists redoes the step from the log; a crash after it re-applies
the staged step: nothing is lost and nothing is stored twice. One compaction runs at a time per
home (``compact.lock``), whether in ``fleetscore serve`` or ``fleetscore compact``.

Stream windows close by the fleet's clock (max event time seen − allowed lateness), so a window
closes once; a reading on time for its device but behind that clock (a backlog after an outage)
lands in the readings without entering a stream window, counted as ``unwindowed``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fleetscore.clock import Clock, wall_clock
from fleetscore.config.ingest import IngestSettings
from fleetscore.core.admission import as_rejects, later_duplicates
from fleetscore.core.schema import READING_SCHEMA, REJECT_SCHEMA
from fleetscore.core.stream import StreamState, advance, flush, new_state
from fleetscore.core.times import day_text, iso, parse_time
from fleetscore.errors import StorageError
from fleetscore.ingest.checkpoint import (
    Checkpoint,
    IngestPaths,
    Position,
    compaction_lock,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from fleetscore.ingest.lateness import advance_clock, device_watermarks, empty_clock, late_reasons
from fleetscore.ingest.log import list_segments, read_frames, segment_name, writer_active
from fleetscore.ingest.records import IngestBatch, decode, ipc_file_bytes, read_ipc_file
from fleetscore.storage.fs import Storage
from fleetscore.storage.quarantine import QuarantineStore
from fleetscore.storage.readings import ReadingStore
from fleetscore.storage.windows import WindowStore

DUPLICATE_STORED = "duplicate: a reading with this device, sensor and ts is already stored"
DUPLICATE_EARLIER = "duplicate: same device, sensor and ts earlier in the stream"
LATE_SOURCE = "late"


@dataclass
class CompactResult:
    """What a compaction did (summed over its steps) and where the stream stands after it."""

    steps: int = 0
    records: int = 0
    landed: int = 0
    duplicates: int = 0
    late: int = 0
    quarantined: int = 0
    windows: int = 0
    segments_deleted: int = 0
    open_windows: int = 0
    watermark: str | None = None
    late_total: int | None = None  # readings quarantined as late, over the home's whole history
    counts: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, counts: dict[str, int]) -> None:
        self.steps += 1
        for name in ("records", "landed", "duplicates", "late", "quarantined", "windows"):
            setattr(self, name, getattr(self, name) + counts.get(name, 0))

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "counts"}


@dataclass(frozen=True)
class _Chunk:
    batches: list[IngestBatch]
    positions: dict[str, Position]


class Compactor:
    """Compacts the ingest log of ``home`` into ``storage``; :meth:`run` until caught up."""

    #: Test seam: called with "decided" and "landed" inside a step; raising there simulates a crash.
    crash_hook: Callable[[str], None] | None = None

    def __init__(self, home: Path, storage: Storage, settings: IngestSettings, clock: Clock = wall_clock) -> None:
        self.paths = IngestPaths.of_home(home)
        self.clock = clock
        self.storage = storage
        self.settings = settings
        self.chunk_rows = settings.compact_chunk_rows

    def run(self) -> CompactResult:
        """Compact every record written so far (apply a staged step first, if a crash left one)."""
        result = CompactResult()
        with compaction_lock(self.paths):
            checkpoint = load_checkpoint(self.paths)
            staged = self._staged()
            if staged is not None:
                checkpoint = self._apply(checkpoint, staged, result)
            while (chunk := self._read(checkpoint)) is not None:
                staged = self._decide(checkpoint, chunk)
                self._hook("decided")
                checkpoint = self._apply(checkpoint, staged, result)
            result.segments_deleted = self._delete_consumed(checkpoint)
            result.late_total = checkpoint.totals.get("late", 0)
            state = self._load_state(checkpoint)
        result.open_windows = state.open_windows
        result.watermark = None if state.watermark_us is None else iso(state.watermark_us)
        return result

    def _hook(self, point: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(point)

    # --- read ----------------------------------------------------------------------------------
    def _read(self, checkpoint: Checkpoint) -> _Chunk | None:
        """Records after the checkpoint, up to ``chunk_rows`` rows; None when there is nothing new."""
        batches: list[IngestBatch] = []
        positions = dict(checkpoint.positions)
        rows = 0
        for source in self.paths.sources():
            if rows >= self.chunk_rows:
                break
            directory = self.paths.log_dir(source)
            segments = list_segments(directory)
            active = writer_active(directory)
            pos = checkpoint.position(source)
            for i, seg in enumerate(segments):
                if seg < pos[0]:
                    continue
                offset = pos[1] if seg == pos[0] else 0
                frames, end = read_frames(directory / segment_name(seg), offset)
                taken = 0
                for frame in frames:
                    if rows >= self.chunk_rows:
                        break
                    batch = decode(frame.payload)
                    batches.append(batch)
                    rows += batch.good.num_rows + batch.rejected.num_rows
                    taken += 1
                if taken < len(frames):
                    pos = (seg, frames[taken - 1].end if taken else offset)
                    break
                sealed = i + 1 < len(segments) or not active
                if not sealed:
                    pos = (seg, end)
                    break
                pos = (segments[i + 1] if i + 1 < len(segments) else seg + 1, 0)
            positions[source] = pos
        if not batches and positions == checkpoint.positions:
            return None
        return _Chunk(batches, positions)

    # --- decide --------------------------------------------------------------------------------
    def _decide(self, checkpoint: Checkpoint, chunk: _Chunk) -> dict[str, Any]:
        seq = checkpoint.seq + 1
        staged = self.paths.staged
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        quarantine: dict[str, list[pa.Table]] = {}
        for batch in chunk.batches:
            if batch.rejected.num_rows:
                quarantine.setdefault(batch.source, []).append(batch.rejected.cast(REJECT_SCHEMA))
        goods = [batch.good.cast(READING_SCHEMA) for batch in chunk.batches]
        good = pa.concat_tables(goods) if goods else READING_SCHEMA.empty_table()
        fresh, counts = good, {"records": len(chunk.batches), "duplicates": 0, "late": 0}
        if good.num_rows:
            ts_us = good.column("ts").cast(pa.int64()).to_numpy()
            earlier = later_duplicates(good, ts_us)
            stored = self._stored(good) & ~earlier
            dup = earlier | stored
            if dup.any():
                reasons = np.where(earlier, DUPLICATE_EARLIER, DUPLICATE_STORED)
                names = sorted({b.source for b in chunk.batches})
                src = np.repeat([names.index(b.source) for b in chunk.batches], [t.num_rows for t in goods])
                for code in np.unique(src[dup]):
                    pick = dup & (src == code)
                    quarantine.setdefault(names[code], []).append(
                        as_rejects(good.filter(pa.array(pick)), reasons[pick].tolist()))
                fresh = good.filter(pa.array(~dup))
            counts["duplicates"] = int(dup.sum())

        state = self._load_state(checkpoint)
        windows: dict[int, pa.Table] = {}
        if state.width_s != self.settings.window_s:  # the window width changed: close the old windows
            state, windows[state.width_s] = flush(state)
            state = new_state(self.settings.window_s, self.settings.lateness_s)
        state = replace(state, lateness_s=self.settings.lateness_s)
        fresh, clock = self._judge_lateness(checkpoint, fresh, seq, quarantine, counts)
        step = advance(state, fresh)
        counts["unwindowed"] = step.late_count  # on time for their device, behind the fleet's closed windows
        windows[self.settings.window_s] = step.closed

        files: dict[str, Any] = {"land": "land.arrow", "quarantine": {}, "windows": {}}
        write_atomic(staged / "land.arrow", ipc_file_bytes(fresh))
        for source, parts in quarantine.items():
            name = f"quarantine-{source}.arrow"
            write_atomic(staged / name, ipc_file_bytes(pa.concat_tables(parts)))
            files["quarantine"][source] = name
        for width, closed in windows.items():
            if closed.num_rows:
                name = f"windows-{width}s.arrow"
                write_atomic(staged / name, ipc_file_bytes(closed))
                files["windows"][str(width)] = name
        keyed = [b for b in chunk.batches if b.key]
        if keyed:
            write_atomic(staged / "keys.arrow", ipc_file_bytes(_keys_table(keyed)))
            files["keys"] = "keys.arrow"
        state_name, devices_name = f"state-{seq:012d}.arrow", f"devices-{seq:012d}.arrow"
        write_atomic(self.paths.state_dir / state_name, ipc_file_bytes(step.state.to_arrow()))
        write_atomic(self.paths.state_dir / devices_name, ipc_file_bytes(clock))
        counts.update(landed=fresh.num_rows, windows=sum(t.num_rows for t in windows.values()),
                      quarantined=sum(sum(t.num_rows for t in parts) for parts in quarantine.values()))
        manifest = {"seq": seq, "positions": {k: list(v) for k, v in chunk.positions.items()}, "state": state_name,
                    "devices": devices_name, "day": day_text(self.clock()), "files": files, "counts": counts}
        write_atomic(staged / "step.json", json.dumps(manifest).encode())
        return manifest

    def _judge_lateness(self, checkpoint: Checkpoint, fresh: pa.Table, seq: int,
                        quarantine: dict[str, list[pa.Table]], counts: dict[str, int]) -> tuple[pa.Table, pa.Table]:
        """Quarantine the readings late for their own device; the on-time rest and the advanced device clock."""
        lateness_s = self.settings.lateness_s
        clock = self._load_clock(checkpoint)
        late, watermark = device_watermarks(clock, fresh, lateness_s)
        counts["late"] = int(late.sum())
        clock = advance_clock(clock, fresh, seq, self.settings.max_tracked_devices)  # late rows count as seen
        if counts["late"]:
            reasons = late_reasons(watermark[late], lateness_s)
            quarantine.setdefault(LATE_SOURCE, []).append(as_rejects(fresh.filter(pa.array(late)), reasons))
            fresh = fresh.filter(pa.array(~late))
        return fresh, clock

    def _load_clock(self, checkpoint: Checkpoint) -> pa.Table:
        if checkpoint.devices is None:
            return empty_clock()
        return read_ipc_file(self.paths.state_dir / checkpoint.devices)

    def _stored(self, good: pa.Table) -> np.ndarray:
        """True for rows whose (device, sensor, ts) is already in the landed readings."""
        return ReadingStore(self.storage).stored_mask(good)

    # --- apply and commit ----------------------------------------------------------------------
    def _apply(self, checkpoint: Checkpoint, manifest: dict[str, Any], result: CompactResult) -> Checkpoint:
        seq, files, staged = int(manifest["seq"]), manifest["files"], self.paths.staged
        ReadingStore(self.storage).land(read_ipc_file(staged / files["land"]))
        self._hook("landed")
        day = parse_time(f"{manifest['day']}T00:00:00Z")
        for source, name in files["quarantine"].items():
            QuarantineStore(self.storage).write(read_ipc_file(staged / name), source, day, batch=f"{seq:016x}")
        for width, name in files["windows"].items():
            WindowStore(self.storage).write(int(width), read_ipc_file(staged / name), part=seq)
        if "keys" in files and (staged / files["keys"]).exists():
            self.paths.keys_dir.mkdir(parents=True, exist_ok=True)
            os.replace(staged / files["keys"], self.paths.keys_dir / f"keys-{seq:012d}.arrow")
        totals = dict(checkpoint.totals)
        for name, value in manifest["counts"].items():
            totals[name] = totals.get(name, 0) + int(value)
        new = Checkpoint(seq=seq, positions={k: (int(v[0]), int(v[1])) for k, v in manifest["positions"].items()},
                         state=manifest["state"], devices=manifest.get("devices"), compacted_at_us=self.clock(), totals=totals)
        save_checkpoint(self.paths, new)
        shutil.rmtree(staged, ignore_errors=True)
        for old, now in ((checkpoint.state, new.state), (checkpoint.devices, new.devices)):
            if old and old != now:
                (self.paths.state_dir / old).unlink(missing_ok=True)
        result.add(manifest["counts"])
        return new

    def _staged(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.paths.staged / "step.json").read_bytes())
        except FileNotFoundError:
            shutil.rmtree(self.paths.staged, ignore_errors=True)  # an undecided step: redo it from the log
            return None
        except ValueError as exc:
            raise StorageError(f"staged compaction step {self.paths.staged} is unreadable: {exc}") from exc

    def _load_state(self, checkpoint: Checkpoint) -> StreamState:
        if checkpoint.state is None:
            return new_state(self.settings.window_s, self.settings.lateness_s)
        return StreamState.from_arrow(read_ipc_file(self.paths.state_dir / checkpoint.state))

    def _delete_consumed(self, checkpoint: Checkpoint) -> int:
        """Delete segments wholly behind the checkpoint, and key files past the TTL."""
        deleted = 0
        for source in self.paths.sources():
            directory = self.paths.log_dir(source)
            first = checkpoint.position(source)[0]
            for seg in list_segments(directory):
                if seg < first:
                    (directory / segment_name(seg)).unlink(missing_ok=True)
                    deleted += 1
        cutoff = self.clock() / 1e6 - self.settings.idempotency_ttl_s
        for path in self.paths.keys_dir.glob("keys-*.arrow"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
        return deleted


def log_lag_bytes(paths: IngestPaths) -> int:
    """Bytes of the logs not yet compacted (0 when compaction is caught up)."""
    checkpoint = load_checkpoint(paths)
    lag = 0
    for source in paths.sources():
        directory = paths.log_dir(source)
        seg0, off0 = checkpoint.position(source)
        for seg in list_segments(directory):
            if seg >= seg0:
                try:
                    lag += (directory / segment_name(seg)).stat().st_size - (off0 if seg == seg0 else 0)
                except FileNotFoundError:
                    continue
    return max(lag, 0)


class CompactionLoop:
    """Background thread of ``serve``: every ``interval_s`` seal the active segment and compact."""

    def __init__(self, compactor: Compactor, interval_s: float, before: Callable[[], None] | None = None) -> None:
        self.compactor = compactor
        self.interval_s = interval_s
        self.before = before
        self.last: CompactResult | None = None
        self.last_at_us: int | None = None
        self.last_error: str | None = None
        self.runs = self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleetscore-compact", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def run_now(self) -> CompactResult | None:
        """One compaction (sealing first); errors are recorded, not raised."""
        try:
            if self.before is not None:
                self.before()
            self.last = self.compactor.run()
            self.last_at_us, self.last_error = self.compactor.clock(), None
        except Exception as exc:  # noqa: BLE001 — the loop must survive and report it
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        self.runs += 1
        return self.last

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_now()

    def stats(self) -> dict[str, Any]:
        last = self.last.as_dict() if self.last else {}
        return {"compactions_total": self.runs, "compaction_errors_total": self.errors,
                "last_compaction_at_us": self.last_at_us, "last_compaction_error": self.last_error,
                "open_windows": last.get("open_windows"), "watermark": last.get("watermark"),
                "late_total": last.get("late_total")}


def _keys_table(batches: list[IngestBatch]) -> pa.Table:
    return pa.table({
        "key": pa.array([b.key for b in batches], pa.string()),
        "received_at_us": pa.array([b.received_at_us for b in batches], pa.int64()),
        "reply": pa.array([json.dumps(b.reply()) for b in batches], pa.string()),
        "digest": pa.array([b.digest for b in batches], pa.string()),
    })
