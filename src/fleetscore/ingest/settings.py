"""The ``[ingest]`` section of fleetscore.toml as one value object with ``DEFAULT_*`` constants.

    [ingest]
    max_body_bytes = 67108864     # larger request bodies get 413
    max_batch_rows = 1000000      # longer batches get 413
    segment_bytes = 67108864      # log segment size before the next one starts
    compact_chunk_rows = 2000000  # rows per compaction step (bounds compaction's memory)
    compact_interval = "10s"      # how often `serve` compacts the log ("0s" or 0: never on its own)
    window = "1m"                 # stream window width
    allowed_lateness = "5m"       # watermark = max event time seen − this; older readings are late
    max_future = "1h"             # readings further ahead of the receive time are rejected
    idempotency_ttl = "24h"       # how long an Idempotency-Key is remembered
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from fleetscore.core.windows import parse_duration
from fleetscore.errors import ConfigError, InputError

DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_MAX_BATCH_ROWS = 1_000_000
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_COMPACT_INTERVAL_S = 10
DEFAULT_WINDOW_S = 60
DEFAULT_LATENESS_S = 300
DEFAULT_MAX_FUTURE_S = 3600
DEFAULT_IDEMPOTENCY_TTL_S = 86_400
DEFAULT_COMPACT_CHUNK_ROWS = 2_000_000

_DURATIONS = {"compact_interval": "compact_interval_s", "window": "window_s", "allowed_lateness": "lateness_s",
              "max_future": "max_future_s", "idempotency_ttl": "idempotency_ttl_s"}
_SIZES = ("max_body_bytes", "max_batch_rows", "segment_bytes", "compact_chunk_rows")


@dataclass(frozen=True, kw_only=True)
class IngestSettings:
    """Resolved ingest settings; build with :meth:`from_config`."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    compact_chunk_rows: int = DEFAULT_COMPACT_CHUNK_ROWS
    compact_interval_s: int = DEFAULT_COMPACT_INTERVAL_S
    window_s: int = DEFAULT_WINDOW_S
    lateness_s: int = DEFAULT_LATENESS_S
    max_future_s: int = DEFAULT_MAX_FUTURE_S
    idempotency_ttl_s: int = DEFAULT_IDEMPOTENCY_TTL_S

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any], where: str = "[ingest]") -> "IngestSettings":
        """Settings from a toml ``[ingest]`` table (durations as text like "5m" or seconds)."""
        values: dict[str, int] = {}
        for key, value in section.items():
            if key in _SIZES:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{where} {key}: expected a positive whole number, got {value!r}")
                values[key] = value
            elif key in _DURATIONS:
                values[_DURATIONS[key]] = _seconds(value, f"{where} {key}", allow_zero=key in (
                    "compact_interval", "allowed_lateness", "max_future"))
            else:
                known = ", ".join([*_SIZES, *_DURATIONS])
                raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
        return cls(**values)

    @classmethod
    def from_config(cls, config: Any) -> "IngestSettings":
        from fleetscore.config import CONFIG_FILE

        return cls.from_mapping(config.extra.get("ingest", {}), f"{config.home / CONFIG_FILE} [ingest]")

    def with_overrides(self, **overrides: Any) -> "IngestSettings":
        """A copy with the given non-None field values replaced (as CLI flags set them)."""
        names = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in names})


def _seconds(value: Any, where: str, allow_zero: bool) -> int:
    if allow_zero and value in (0, "0", "0s"):
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    try:
        return parse_duration(value)
    except InputError as exc:
        raise ConfigError(f"{where}: {exc}") from None
