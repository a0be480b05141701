"""Run and task logs kept in storage under ``logs/run=<run>/``: JSON lines, plus captured stdout/stderr.

Object stores cannot append, so a run's log is a series of segments: :class:`RunLog` buffers lines
and writes a new segment object when it flushes (every ``flush_s`` seconds or ``flush_lines`` lines,
and when it closes); segment names start with the time, so listing them in name order reads the log
in order, also when a retry in another process adds to the same run later. A task attempt writes
its own files once, when it ends. Every string is redacted (:mod:`fleetscore.redact`) before it is
written, so secrets never reach storage.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fleetscore.clock import Clock, wall_clock
from fleetscore.core.times import compact_stamp, iso_us
from fleetscore.redact import redact, redact_fields, secret_values
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

FLUSH_S = 2.0
FLUSH_LINES = 500


def log_line(event: str, level: str = "info", *, clock: Clock = wall_clock, **fields: Any) -> dict[str, Any]:
    """One structured log line: time, level, event name and fields (durations and other floats to the µs)."""
    return {"ts": iso_us(clock()), "level": level, "event": event,
            **{k: round(v, 6) if isinstance(v, float) else v for k, v in fields.items()}}


def encode_lines(lines: list[dict[str, Any]]) -> bytes:
    """JSON lines, redacted."""
    secrets = secret_values()
    return "".join(json.dumps(redact_fields(line, secrets), default=str) + "\n" for line in lines).encode()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RunLog:
    """The run-level log of one run, written by the process that drives the run; thread-safe."""

    def __init__(self, storage: Storage, run_id: str, flush_s: float = FLUSH_S, flush_lines: int = FLUSH_LINES,
                 clock: Clock = wall_clock) -> None:
        self.storage = storage
        self.clock = clock
        self.run_id = layout.check_run_id(run_id)
        self.flush_s = flush_s
        self.flush_lines = flush_lines
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        with self._lock:
            self._lines.append(log_line(event, level, clock=self.clock, **({"run_id": self.run_id} | fields)))
            due = len(self._lines) >= self.flush_lines or time.monotonic() - self._last_flush >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            self._last_flush = time.monotonic()
            if not lines:
                return
            stamp = compact_stamp(self.clock()) + "-" + uuid.uuid4().hex[:8]
            self.storage.write_bytes(layout.run_log_key(self.run_id, stamp), encode_lines(lines), durable=False)

    def close(self) -> None:
        self.flush()


def write_task_log(storage: Storage, run_id: str, task: int, attempt: int, lines: list[dict[str, Any]],
                   stdout: str = "", stderr: str = "") -> None:
    """Write one task attempt's log lines and (when not empty) its captured stdout and stderr."""
    storage.write_bytes(layout.task_log_key(run_id, task, attempt), encode_lines(lines), durable=False)
    secrets = secret_values()
    for stream, text in (("stdout", stdout), ("stderr", stderr)):
        if text:
            storage.write_bytes(layout.task_log_key(run_id, task, attempt, stream), redact(text, secrets).encode(),
                                durable=False)


@dataclass(frozen=True)
class AttemptLog:
    """What one attempt of a task left in storage."""

    task: int
    attempt: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _parse_lines(data: bytes) -> list[dict[str, Any]]:
    out = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append({"level": "error", "event": "log.unreadable", "text": raw[:500]})
    return out


class LogStore:
    """Read the logs of runs: run-log segments in order, task attempts, and follow a live run."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def segments(self, run_id: str) -> list[str]:
        prefix = f"{layout.logs_dir(run_id)}/run-"
        return [k for k in self.storage.list(layout.logs_dir(run_id)) if k.startswith(prefix)]

    def run_lines(self, run_id: str) -> list[dict[str, Any]]:
        return [line for key in self.segments(run_id) for line in _parse_lines(self.storage.read_bytes(key))]

    def task_attempts(self, run_id: str, task: int) -> list[AttemptLog]:
        """Every attempt of ``task`` that wrote a log, oldest first."""
        folder = f"{layout.logs_dir(run_id)}/task-{int(task):05d}/"
        attempts = sorted({int(k[len(folder):].split(".")[0].removeprefix("attempt-"))
                           for k in self.storage.list(folder.rstrip("/")) if k.startswith(folder + "attempt-")})
        out = []
        for attempt in attempts:
            texts = {}
            for stream in ("stdout", "stderr"):
                try:
                    texts[stream] = self.storage.read_bytes(layout.task_log_key(run_id, task, attempt, stream)).decode(
                        "utf-8", errors="replace")
                except FileNotFoundError:
                    texts[stream] = ""
            try:
                lines = _parse_lines(self.storage.read_bytes(layout.task_log_key(run_id, task, attempt)))
            except FileNotFoundError:
                lines = []
            out.append(AttemptLog(task, attempt, lines, texts["stdout"], texts["stderr"]))
        return out

    def follow(self, run_id: str, finished: Callable[[], bool], poll_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """Yield the run's log lines as segments appear, until ``finished()`` and nothing new is left."""
        seen: set[str] = set()
        while True:
            done = finished()  # asked before listing, so the last segments written before the end are read
            new = [k for k in self.segments(run_id) if k not in seen]
            for key in new:
                seen.add(key)
                yield from _parse_lines(self.storage.read_bytes(key))
            if done:
                return
            time.sleep(poll_s)
