"""Exclusive locks between processes that share an object store (S3, Azure Blob), from conditional writes.

A lock is a folder of generation objects ``gen-0000000001.json``. Whoever creates generation ``g + 1``
(one write with ``If-None-Match: *``: exactly one creator wins) while generation ``g`` is released
(deleted) or stale holds the lock; the holder rewrites its object every few seconds, and an object
not rewritten for ``ttl_s`` (by the store's own clock: its last-modified time) belongs to a process
that died, so the next taker may pass it. Two importers or compactors on different machines thus
never add parts to the same readings at once, so they never pick the same part number.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from fleetscore.clock import Clock, wall_clock
from fleetscore.errors import StorageError

#: A generation not rewritten for this long is a dead holder's; the holder rewrites it every HEARTBEAT_S.
LOCK_TTL_S = 60.0
HEARTBEAT_S = 10.0
#: How often a waiting taker looks again, and how long it waits before saying who holds the lock.
POLL_S = 0.2
WAIT_S = 600.0
_GEN_RE = re.compile(r"gen-(\d{10})\.json$")


class ObjectStoreLock:
    """The lock of ``folder`` (a path on ``fs``, an fsspec object store); use as a context manager."""

    def __init__(self, fs: Any, folder: str, *, ttl_s: float = LOCK_TTL_S, heartbeat_s: float = HEARTBEAT_S,
                 wait_s: float = WAIT_S, clock: Clock = wall_clock) -> None:
        self.fs, self.folder, self.clock = fs, folder.rstrip("/"), clock
        self.ttl_s, self.heartbeat_s, self.wait_s = ttl_s, heartbeat_s, wait_s
        self.owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}).encode()
        self._held: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> ObjectStoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Wait until this process holds the lock (StorageError naming the holder after ``wait_s``)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            gens = self._generations()
            top = max(gens) if gens else 0
            if not gens or self._stale(gens[top]):
                path = self._path(top + 1)
                try:
                    self.fs.pipe_file(path, self.owner, mode="create")
                except FileExistsError:
                    continue  # another taker created it first: look again
                self._held = path
                self._drop(g for g in gens if g <= top)
                self._start_heartbeat()
                return
            if time.monotonic() > deadline:
                raise StorageError(f"lock {self.folder} is still held after {self.wait_s:g} s "
                                   f"(by {self._holder(top)}); it frees itself {self.ttl_s:g} s after its holder dies")
            time.sleep(POLL_S)

    def release(self) -> None:
        """Stop the heartbeat and delete this holder's generation (the next taker creates the next one)."""
        if self._held is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        held, self._held = self._held, None
        try:
            self.fs.rm(held)
        except FileNotFoundError:
            pass  # a taker passed a generation it judged stale and cleaned it up

    def _generations(self) -> dict[int, datetime | None]:
        """Generation number → its last-modified time, of the objects in the folder."""
        try:
            entries = self.fs.ls(self.folder, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        found = {}
        for entry in entries:
            m = _GEN_RE.search(str(entry.get("name", "")))
            if m:
                found[int(m.group(1))] = _modified(entry)
        return found

    def _stale(self, modified: datetime | None) -> bool:
        return modified is not None and self.clock() / 1e6 - modified.timestamp() > self.ttl_s

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        held = self._held

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.fs.pipe_file(held, self.owner)  # a fresh last-modified time: still alive
                except Exception:  # noqa: BLE001 - a missed beat is retried; a long outage lets the lock go stale
                    continue

        self._beat = threading.Thread(target=beat, name=f"lock-heartbeat {self.folder}", daemon=True)
        self._beat.start()

    def _drop(self, gens: Any) -> None:
        """Delete passed generations (stale ones of dead holders), leaving only the one now held."""
        for g in gens:
            try:
                self.fs.rm(self._path(g))
            except FileNotFoundError:
                pass

    def _holder(self, gen: int) -> str:
        try:
            host = json.loads(self.fs.cat_file(self._path(gen))).get("host", "?")
            return f"{host}, generation {gen}"
        except (FileNotFoundError, ValueError, AttributeError):
            return f"generation {gen}"

    def _path(self, gen: int) -> str:
        return f"{self.folder}/gen-{gen:010d}.json"


def _modified(entry: dict[str, Any]) -> datetime | None:
    """The last-modified time of a listing entry (s3fs: ``LastModified``, adlfs: ``last_modified``)."""
    value = entry.get("LastModified") or entry.get("last_modified")
    return value if isinstance(value, datetime) else None
