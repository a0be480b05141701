"""The ``[ingest]`` section of fleetscore.toml as one value object with ``DEFAULT_*`` constants.

    [ingest]
    max_body_bytes = 67108864     # larger request bodies get 413
    max_batch_rows = 1000000      # longer batches get 413
    segment_bytes = 67108864      # log segment size before the next one starts
    compact_chunk_rows = 2000000  # rows per compaction step (bounds compaction's memory)
    compact_interval = "10s"      # how often `serve` compacts the log ("0s" or 0: never on its own)
    window = "1m"                 # stream window width
    allowed_lateness = "5m"       # per device: watermark = its max event time seen − this; older readings are late
    max_tracked_devices = 1000000  # devices whose watermark is kept (least recently seen forgotten first)
    max_future = "1h"             # readings further ahead of the receive time are rejected
    idempotency_ttl = "24h"       # how long an Idempotency-Key is remembered
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from fleetscore.config.values import Parser, positive_whole, whole_seconds

DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_MAX_BATCH_ROWS = 1_000_000
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_COMPACT_INTERVAL_S = 10
DEFAULT_WINDOW_S = 60
DEFAULT_LATENESS_S = 300
DEFAULT_MAX_FUTURE_S = 3600
DEFAULT_IDEMPOTENCY_TTL_S = 86_400
DEFAULT_COMPACT_CHUNK_ROWS = 2_000_000
DEFAULT_MAX_TRACKED_DEVICES = 1_000_000

_OFF_OR_SECONDS = whole_seconds(allow_zero=True)
_SECONDS = whole_seconds(allow_zero=False)


@dataclass(frozen=True, kw_only=True)
class IngestSettings:
    """Resolved ingest settings (``Config.ingest``)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    compact_chunk_rows: int = DEFAULT_COMPACT_CHUNK_ROWS
    compact_interval_s: int = DEFAULT_COMPACT_INTERVAL_S
    window_s: int = DEFAULT_WINDOW_S
    lateness_s: int = DEFAULT_LATENESS_S
    max_future_s: int = DEFAULT_MAX_FUTURE_S
    idempotency_ttl_s: int = DEFAULT_IDEMPOTENCY_TTL_S
    max_tracked_devices: int = DEFAULT_MAX_TRACKED_DEVICES

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "max_body_bytes": ("max_body_bytes", positive_whole), "max_batch_rows": ("max_batch_rows", positive_whole),
        "segment_bytes": ("segment_bytes", positive_whole), "compact_chunk_rows": ("compact_chunk_rows", positive_whole),
        "compact_interval": ("compact_interval_s", _OFF_OR_SECONDS), "window": ("window_s", _SECONDS),
        "allowed_lateness": ("lateness_s", _OFF_OR_SECONDS), "max_future": ("max_future_s", _OFF_OR_SECONDS),
        "idempotency_ttl": ("idempotency_ttl_s", _SECONDS),
        "max_tracked_devices": ("max_tracked_devices", positive_whole)}

    def with_overrides(self, **overrides: Any) -> IngestSettings:
        """A copy with the given non-None field values replaced (as CLI flags set them)."""
        names = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in names})

    def checked(self, where: str) -> IngestSettings:
        return self


def parse_interval(text: str, where: str) -> int:
    """A compaction interval given as a flag (``10s``; ``0`` = never), in whole seconds."""
    return int(_OFF_OR_SECONDS(text, where))
