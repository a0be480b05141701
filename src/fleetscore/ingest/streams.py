"""What Kafka and NATS consumers share after the broker: a group of messages → one durable log
record, and the status file where ``serve`` and ``ingest status`` read the consumer's lag.

:meth:`StreamSink.write` parses a group (:mod:`fleetscore.ingest.messages`), admits it and starts
appending it to the consumer's own log; the consumer acknowledges to the broker (commits offsets,
acks messages) only once the returned future resolves, i.e. after the fsync. A crash before that
makes the broker deliver the group again, and compaction's (device, sensor, ts) dedup keeps one copy.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fleetscore.clock import Clock
from fleetscore.core.times import iso
from fleetscore.errors import InputError
from fleetscore.ingest.checkpoint import IngestPaths, write_atomic
from fleetscore.ingest.messages import ParsedGroup, StreamMessage, parse_group
from fleetscore.ingest.service import IngestService
from fleetscore.storage.layout import SOURCE_RE

#: How often a consumer rewrites its status file, in µs.
STATUS_EVERY_US = 1_000_000


def source_name(kind: str, name: str, member: str) -> str:
    """``kafka:<group>:<member>`` or ``nats:<durable>:<member>``; InputError names a bad part."""
    source = f"{kind}:{name}:{member}"
    if not SOURCE_RE.match(source):
        raise InputError(f"{kind} {'group' if kind == 'kafka' else 'durable'} {name[:80]!r} and member {member[:80]!r} "
                         "must each be 1..64 characters of letters, digits, '.', '_' or '-'")
    return source


@dataclass
class SourceStatus:
    """A consumer's lag per partition (``partition`` ``"-"`` for NATS) and its last message / commit."""

    source: str
    lag: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic or stream, partition) -> messages behind
    last_message_at_us: int | None = None
    last_commit_at_us: int | None = None
    updated_at_us: int | None = None
    pid: int = field(default_factory=os.getpid)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``ingest status --json``: times in ISO 8601, lag summed and per partition."""
        return {"source": self.source, "lag": sum(self.lag.values()) if self.lag else None,
                "partitions": [{"topic": t, "partition": p, "lag": n} for (t, p), n in sorted(self.lag.items())],
                "last_message_at": _iso(self.last_message_at_us), "last_commit_at": _iso(self.last_commit_at_us),
                "updated_at": _iso(self.updated_at_us), "pid": self.pid}

    def encode(self) -> bytes:
        return json.dumps({"source": self.source, "lag": [[t, p, n] for (t, p), n in sorted(self.lag.items())],
                           "last_message_at_us": self.last_message_at_us, "last_commit_at_us": self.last_commit_at_us,
                           "updated_at_us": self.updated_at_us, "pid": self.pid}).encode()

    @classmethod
    def decode(cls, data: bytes) -> SourceStatus:
        raw = json.loads(data)
        return cls(source=str(raw["source"]), lag={(str(t), str(p)): int(n) for t, p, n in raw["lag"]},
                   last_message_at_us=raw.get("last_message_at_us"), last_commit_at_us=raw.get("last_commit_at_us"),
                   updated_at_us=raw.get("updated_at_us"), pid=int(raw.get("pid", 0)))


def _iso(us: int | None) -> str | None:
    return None if us is None else iso(us)


def read_statuses(paths: IngestPaths) -> list[SourceStatus]:
    """Every stream consumer's last status in the home (an unreadable file is skipped: it is being replaced)."""
    out = []
    for path in sorted(paths.status_dir.glob("*.json")):
        try:
            out.append(SourceStatus.decode(path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


class StreamSink:
    """The log writer of one consumer and its status; not thread-safe (one consumer loop drives it)."""

    def __init__(self, service: IngestService, default_kind: str, clock: Clock) -> None:
        self.service = service
        self.default_kind = default_kind
        self.clock = clock
        self.status = SourceStatus(service.source)
        self.paths = service.paths
        self.messages = 0
        self.groups = 0
        self._status_at = 0

    def write(self, messages: list[StreamMessage]) -> Future[None]:
        """Parse, admit and start appending ``messages`` as one record; resolves once it is durable."""
        settings = self.service.settings
        group: ParsedGroup = parse_group(messages, self.default_kind, settings.max_body_bytes, settings.max_batch_rows)
        batch = group.admit(self.service)
        self.messages += len(messages)
        self.groups += 1
        self.status.last_message_at_us = batch.received_at_us
        return self.service.append(batch)

    def committed(self) -> None:
        """The broker has been told (offsets committed / messages acked) up to the last durable group."""
        self.status.last_commit_at_us = self.clock()

    def report(self, lag: dict[tuple[str, str], int] | None, force: bool = False) -> None:
        """Rewrite the status file (at most once a second unless ``force``) with the lag given."""
        now = self.clock()
        if not force and now - self._status_at < STATUS_EVERY_US:
            return
        if lag is not None:
            self.status.lag = lag
        self.status.updated_at_us = self._status_at = now
        self.paths.status_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.paths.status_dir / f"{self.status.source}.json", self.status.encode())

    def due(self) -> bool:
        return self.clock() - self._status_at >= STATUS_EVERY_US

    def stats(self) -> dict[str, Any]:
        return {"messages_total": self.messages, "groups_total": self.groups,
                "lag": sum(self.status.lag.values()) if self.status.lag else 0}
