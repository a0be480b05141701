"""The durable ingest log: segment files of framed records, written by one process, fsynced in groups.

Layout of one writer's directory (``<home>/ingest/log/<source>/``)::

    writer.lock              flock held by the writing process for its lifetime
    seg-000000000001.log     frames: [u32 length][u32 crc32][payload], little endian
    seg-000000000002.log     ...

**Group commit**: :meth:`SegmentLog.append` writes the frame (one ``write``) and returns a future;
one committer thread fsyncs the file and resolves, after each fsync, every future whose frame
was written before it. Many concurrent batches thus share one fsync, and an answer that waits for
its future is only sent once its batch is on disk.

**Segments**: a writer always starts a new segment (never appends after a possibly torn tail) and
starts the next one once the active one exceeds ``segment_bytes`` or on :meth:`rotate`. A
segment is *sealed* once a later one exists or no process holds ``writer.lock``. Readers
(:func:`read_frames`) stop at the first incomplete or corrupt frame: only the last frame of a
segment can be torn (writes are sequential), and such a frame was never acknowledged.

**Failures** (``open``/``write``/``fsync`` errors: EMFILE, ENOSPC, EIO, ...) never stop the committer.
A failed write fails its own record and ends the segment (it may hold a torn frame); a failed fsync
fails every record not yet durable and abandons the segment (after a failed fsync nothing in it is
trusted, so nothing in it is acknowledged; its frames may still be compacted, as after a crash).
The next segment gets a new number and is never written through an old descriptor. While
:attr:`SegmentLog.fault` holds the reason, a missing segment is retried with backoff (RETRY_FIRST_S
doubling to RETRY_MAX_S) and an idle committer probes the disk with a small fsynced write; the
fault clears once a group commit or that probe succeeds.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from fleetscore.errors import StorageError

FRAME = struct.Struct("<II")
#: No single record may exceed this (a request body is limited well below it).
MAX_FRAME_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 64 << 20
LOCK_NAME = "writer.lock"
#: The committer retries creating a segment after this long, doubling up to RETRY_MAX_S.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 5.0
PROBE_NAME = "probe.tmp"
PROBE_BYTES = b"\0" * 4096

log = logging.getLogger(__name__)


def segment_name(number: int) -> str:
    return f"seg-{number:012d}.log"


def list_segments(directory: Path) -> list[int]:
    """Numbers of the segment files in ``directory``, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.startswith("seg-") and name.endswith(".log") and name[4:-4].isdigit():
            out.append(int(name[4:-4]))
    return sorted(out)


def writer_active(directory: Path) -> bool:
    """True while some process holds the writer lock of ``directory``."""
    path = directory / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


@dataclass(frozen=True)
class Frame:
    offset: int  # where the frame starts
    end: int  # where the next frame starts
    payload: bytes


def read_frames(path: Path, offset: int = 0) -> tuple[list[Frame], int]:
    """The valid frames of a segment from ``offset``, and the offset where valid data ends."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    frames, pos = [], 0
    while pos + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, pos)
        start, end = pos + FRAME.size, pos + FRAME.size + length
        if length == 0 or length > MAX_FRAME_BYTES or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        frames.append(Frame(offset + pos, offset + end, payload))
        pos = end
    return frames, offset + pos


class SegmentLog:
    """The writing side of one log directory; see the module docstring for the protocol."""

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES, min_segment: int = 1) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock_fh = open(self.directory / LOCK_NAME, "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise StorageError(
                f"another process is writing the ingest log {self.directory} (is a `fleetscore serve` or "
                "`fleetscore ingest mqtt` already running on this home?)"
            ) from None
        existing = list_segments(self.directory)
        self.segment = max([min_segment - 1, *existing]) + 1
        try:
            self._fd: int | None = self._open_segment(self.segment)
        except OSError as exc:
            self._lock_fh.close()
            raise StorageError(f"cannot create log segment {self.directory / segment_name(self.segment)}: {exc}") from exc
        self._size = 0
        self._cond = threading.Condition()
        self._waiters: list[Future[None]] = []
        self._written = self._synced = 0  # frames written / frames resolved (durable or failed)
        self._rotate = False
        self._broken = False  # a write failed: the active segment takes no more frames
        self._closing = False
        #: Why the log cannot take records right now (None while healthy); set by any failure.
        self.fault: str | None = None
        self.failures = 0
        self.fsyncs = 0
        self._thread = threading.Thread(target=self._commit_loop, name=f"fleetscore-commit-{self.directory.name}",
                                        daemon=True)
        self._thread.start()

    def _open_segment(self, number: int) -> int:
        """A new segment file, its directory entry fsynced; raises OSError."""
        fd = os.open(self.directory / segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        return fd

    def append(self, payload: bytes) -> Future[None]:
        """Write one record; the future resolves once it is fsynced (or fails with StorageError)."""
        if not payload or len(payload) > MAX_FRAME_BYTES:
            raise StorageError(f"log record of {len(payload)} bytes: must be 1..{MAX_FRAME_BYTES}")
        frame = FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        future: Future[None] = Future()
        with self._cond:
            if self._closing:
                raise StorageError(f"ingest log {self.directory} is closed")
            if self._fd is None or self._broken:
                raise StorageError(f"ingest log {self.directory} cannot take records now: {self.fault}")
            try:
                _write_all(self._fd, frame)
            except OSError as exc:
                self._broken = True  # the segment may end in a torn frame: frames after it would be unreadable
                self._set_fault(f"cannot write log segment {segment_name(self.segment)}: {_reason(exc)}")
                self._cond.notify()
                raise StorageError(f"ingest log {self.directory}: {self.fault}") from exc
            self._size += len(frame)
            self._written += 1
            self._waiters.append(future)
            if self._size >= self.segment_bytes:
                self._rotate = True
            self._cond.notify()
        return future

    def rotate(self) -> None:
        """Seal the active segment (if it holds anything) so compaction can delete it when done."""
        with self._cond:
            if self._size:
                self._rotate = True
                self._cond.notify()

    @property
    def pending(self) -> int:
        """Records written but not yet fsynced."""
        return self._written - self._synced

    def close(self) -> None:
        """Fsync what was written, resolve the last futures, stop the committer, release the lock."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if self._fd is not None:
            _close_quietly(self._fd)
            self._fd = None
        fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        self._lock_fh.close()

    def _commit_loop(self) -> None:
        """Group commits until closed. No failure ends it: each fails the batches it holds, and while the
        log is faulted an idle committer retries (with backoff) a fresh segment and a probe write."""
        delay = RETRY_FIRST_S
        while True:
            with self._cond:
                ready = self._cond.wait_for(self._work, None if self.fault is None else delay)
                if self._closing and self._written == self._synced:
                    return
                if not ready:
                    delay = RETRY_FIRST_S if self._recover() else min(2 * delay, RETRY_MAX_S)
                    continue
            try:
                self._commit()
            except Exception as exc:  # noqa: BLE001 - the committer must outlive any failure, reporting it
                with self._cond:
                    self._give_up([], f"the log committer failed: {type(exc).__name__}: {exc}")

    def _work(self) -> bool:
        """Called with the condition held: the committer has records to fsync or a segment to seal."""
        return self._written != self._synced or self._rotate or self._broken or self._closing

    def _commit(self) -> None:
        """One group commit: fsync what was written, resolve its futures, then seal the segment if due."""
        with self._cond:
            fd, target, waiters, self._waiters = self._fd, self._written, self._waiters, []
        if fd is None:  # closing after a failure: nothing is held
            return
        try:
            if target != self._synced:
                os.fsync(fd)
                self.fsyncs += 1
        except OSError as exc:
            with self._cond:
                self._give_up(waiters, f"cannot fsync log segment {segment_name(self.segment)}: {_reason(exc)}")
            return
        with self._cond:
            self._synced = max(self._synced, target)
            if waiters and not self._broken:
                self.fault = None  # a commit succeeded
            if (self._rotate or self._broken) and not self._closing:
                waiters += self._seal()
        for future in waiters:
            future.set_result(None)

    def _seal(self) -> list[Future[None]]:
        """Called with the condition held: fsync the frames written since the group commit, close the
        segment and start the next (after a failed write, recovery does, with backoff); returns the
        futures now durable (failed ones are failed here)."""
        target, waiters, self._waiters, broken = self._written, self._waiters, [], self._broken
        try:
            if target != self._synced:
                os.fsync(self._fd)  # type: ignore[arg-type]
                self.fsyncs += 1
        except OSError as exc:
            self._give_up(waiters, f"cannot fsync log segment {segment_name(self.segment)}: {_reason(exc)}")
            return []
        self._synced = target
        self._end_segment()
        if not broken:
            self._start_segment()
        return waiters

    def _recover(self) -> bool:
        """Called with the condition held while faulted and idle: open a segment if none is, then probe
        the disk with a small fsynced write; True (and healthy again) when both worked."""
        if self._fd is None and not self._start_segment():
            return False
        path = self.directory / PROBE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, PROBE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
                path.unlink(missing_ok=True)
        except OSError as exc:
            self._set_fault(f"the disk of the ingest log still fails a probe write: {_reason(exc)}")
            return False
        self.fault = None
        return True

    def _start_segment(self) -> bool:
        """Called with the condition held: open the next segment; False (the reason in ``fault``) if that failed."""
        try:
            self._fd = self._open_segment(self.segment)
        except OSError as exc:
            self._set_fault(f"cannot create log segment {segment_name(self.segment)}: {_reason(exc)}")
            if (self.directory / segment_name(self.segment)).exists():
                self.segment += 1  # created but maybe not durable: never reuse the name
            return False
        return True

    def _end_segment(self) -> None:
        """Called with the condition held: close the active segment; the next one gets the next number."""
        if self._fd is not None:
            _close_quietly(self._fd)
        self._fd = None
        self.segment += 1
        self._size = 0
        self._rotate = self._broken = False

    def _give_up(self, held: list[Future[None]], reason: str) -> None:
        """Called with the condition held: fail the futures ``held`` and every later one, and abandon the
        active segment (after a failed fsync nothing in it can be trusted to be on disk)."""
        self._set_fault(reason)
        error = StorageError(f"ingest log {self.directory}: {reason}; the batch was not stored")
        for future in held + self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters = []
        self._synced = self._written
        self._end_segment()
        self._cond.notify_all()

    def _set_fault(self, reason: str) -> None:
        self.fault = reason
        self.failures += 1
        log.error("ingest log %s: %s", self.directory, reason)


def _write_all(fd: int, data: bytes) -> None:
    """One ``write`` of all of ``data``; a short write (a full disk, typically) is an error too."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")


def _reason(exc: OSError) -> str:
    """``EMFILE: Too many open files``: the error without the file name (faults are shown on /healthz)."""
    name = errno.errorcode.get(exc.errno or 0)
    return f"{name}: {exc.strerror}" if name and exc.strerror else str(exc)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
