"""A running front door of ingest: one writer of the durable log and the background compaction.

``serve`` (HTTP) and ``ingest mqtt`` each run one: :meth:`IngestRuntime.start` opens the log writer
of its source and starts compacting every ``compact_interval``; :meth:`IngestRuntime.stop` closes the
log (fsyncing the last records) and compacts what it holds, so nothing acknowledged stays behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetscore.clock import Clock, wall_clock
from fleetscore.config import IngestSettings
from fleetscore.ingest.checkpoint import IngestPaths
from fleetscore.ingest.compact import CompactionLoop, Compactor, CompactResult, log_lag_bytes
from fleetscore.ingest.service import IngestService
from fleetscore.storage.fs import Storage


class IngestRuntime:
    """The log writer of ``source`` in ``home`` and the compaction of that home into ``storage``."""

    def __init__(self, home: Path, storage: Storage, settings: IngestSettings, source: str,
                 clock: Clock = wall_clock) -> None:
        self.home = home
        self.storage = storage
        self.settings = settings
        self.source = source
        self.clock = clock
        self.service: IngestService | None = None
        self.loop: CompactionLoop | None = None

    @property
    def running(self) -> bool:
        return self.service is not None

    @property
    def fault(self) -> str | None:
        """Why the log writer cannot take batches right now (None while it can, or when stopped)."""
        return self.service.log.fault if self.service is not None else None

    def start(self) -> IngestService:
        """Open the log writer and start background compaction; the service that takes batches."""
        self.service = IngestService(self.home, self.settings, self.source, self.clock)
        compactor = Compactor(self.home, self.storage, self.settings, self.clock)
        self.loop = CompactionLoop(compactor, self.settings.compact_interval_s, before=self.service.log.rotate)
        self.loop.start()
        return self.service

    def stop(self, compact: bool | None = None) -> None:
        """Stop compaction, close the log, then compact what it holds (``compact``; default: when
        compaction runs on its own, ``compact_interval`` > 0)."""
        if self.loop is not None:
            self.loop.stop()
        if self.service is not None:
            self.service.close()
            self.service = None
            if self.loop is not None and (self.settings.compact_interval_s > 0 if compact is None else compact):
                self.loop.before = None
                self.loop.run_now()

    def compact_now(self) -> CompactResult | None:
        return self.loop.run_now() if self.loop is not None else None

    def stats(self) -> dict[str, Any]:
        """Counters of the writer and the compaction, and the log bytes not yet compacted."""
        out: dict[str, Any] = {"running": self.running}
        if self.service is not None:
            out.update(self.service.stats())
        if self.loop is not None:
            out.update(self.loop.stats())
        out["log_lag_bytes"] = log_lag_bytes(IngestPaths.of_home(self.home))
        return out
