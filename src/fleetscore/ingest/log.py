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
"""

from __future__ import annotations

import fcntl
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
        self._fd = self._open_segment(self.segment)
        self._size = 0
        self._cond = threading.Condition()
        self._waiters: list[Future[None]] = []
        self._written = self._synced = 0  # frames written / frames known to be on disk
        self._rotate = False
        self._closing = False
        self._error: BaseException | None = None
        self.fsyncs = 0
        self._thread = threading.Thread(target=self._commit_loop, name=f"fleetscore-commit-{self.directory.name}",
                                        daemon=True)
        self._thread.start()

    def _open_segment(self, number: int) -> int:
        path = self.directory / segment_name(number)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            _fsync_dir(self.directory)
        except OSError as exc:
            raise StorageError(f"cannot create log segment {path}: {exc}") from exc
        return fd

    def append(self, payload: bytes) -> Future[None]:
        """Write one record; the future resolves once it is fsynced (or fails with StorageError)."""
        if not payload or len(payload) > MAX_FRAME_BYTES:
            raise StorageError(f"log record of {len(payload)} bytes: must be 1..{MAX_FRAME_BYTES}")
        frame = FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        future: Future[None] = Future()
        with self._cond:
            if self._error is not None or self._closing:
                raise StorageError(f"ingest log {self.directory} is closed or failed: {self._error}")
            try:
                os.write(self._fd, frame)
            except OSError as exc:
                self._fail(exc)
                raise StorageError(f"cannot write ingest log {self.directory}: {exc}") from exc
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
        try:
            os.close(self._fd)
        except OSError:
            pass
        fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        self._lock_fh.close()

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                while self._written == self._synced and not self._rotate and not self._closing:
                    self._cond.wait()
                if self._error is not None:
                    return
                fd, target, waiters, self._waiters = self._fd, self._written, self._waiters, []
                rotate, closing = self._rotate, self._closing
            try:
                if target != self._synced:
                    os.fsync(fd)
                    self.fsyncs += 1
                if rotate:
                    self._seal_and_start_next()
            except OSError as exc:
                with self._cond:
                    self._fail(exc, waiters)
                return
            with self._cond:
                self._synced = max(self._synced, target)
            for future in waiters:
                future.set_result(None)
            if closing:
                with self._cond:
                    if self._written == self._synced:
                        return

    def _seal_and_start_next(self) -> None:
        with self._cond:
            os.fsync(self._fd)  # frames written since the group fsync
            target, waiters, self._waiters = self._written, self._waiters, []
            os.close(self._fd)
            self.segment += 1
            self._fd = self._open_segment(self.segment)
            self._size = 0
            self._rotate = False
            self._synced = target
        for future in waiters:
            future.set_result(None)

    def _fail(self, exc: BaseException, extra: list[Future[None]] | None = None) -> None:
        """Called with the condition held: the log is unusable; every waiter gets the error."""
        self._error = exc
        error = StorageError(f"ingest log {self.directory} failed: {exc}")
        for future in (extra or []) + self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters = []
        self._cond.notify_all()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
