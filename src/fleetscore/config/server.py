"""The ``[server]`` section of fleetscore.toml: connection limits of ``fleetscore serve`` and input-size caps.

    [server]
    header_timeout = "10s"        # a request's headers must be complete this long after it starts
    body_timeout = "60s"          # its body must be complete this long after the headers
    idle_timeout = "15s"          # a request being read that receives nothing this long is dropped
    keep_alive_timeout = "5s"     # an open connection with no request in progress is closed after this
    max_connections = 1000        # further connections get 503 and are closed
    max_decompressed_bytes = 268435456  # cap on the decompressed size of any compressed input
    inline_parse_bytes = 1048576  # ingest bodies up to this size are parsed on the event loop (0: none)

Timeouts are durations (``"10s"``, ``"2m"``) or numbers of seconds; all are always on, so no
connection can be held open forever by a client that sends nothing or sends too slowly.
A body larger than ``inline_parse_bytes`` is parsed and admitted in the parse pool, so the server
keeps answering while it works; smaller ones are cheaper on the event loop (no thread hop, no GIL
hand-offs) and block it for some tens of milliseconds at most (a 1 MiB JSON body).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fleetscore.config.values import Parser, check_range, positive_whole, seconds, strict_whole

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_IDLE_TIMEOUT_S = 15.0
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_DECOMPRESSED_BYTES = 256 << 20
DEFAULT_INLINE_PARSE_BYTES = 1 << 20

#: Timeouts cannot be turned off: each lies between these bounds (seconds).
_MIN_TIMEOUT_S = 0.01
_MAX_TIMEOUT_S = 86_400.0
#: Bodies parsed on the event loop block it; beyond this they would block it for too long.
_MAX_INLINE_PARSE_BYTES = 64 << 20


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Resolved ``[server]`` settings (``Config.server``); timeouts in seconds."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    inline_parse_bytes: int = DEFAULT_INLINE_PARSE_BYTES

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "header_timeout": ("header_timeout_s", seconds), "body_timeout": ("body_timeout_s", seconds),
        "idle_timeout": ("idle_timeout_s", seconds), "keep_alive_timeout": ("keep_alive_timeout_s", seconds),
        "max_connections": ("max_connections", positive_whole),
        "max_decompressed_bytes": ("max_decompressed_bytes", positive_whole),
        "inline_parse_bytes": ("inline_parse_bytes", strict_whole)}

    def checked(self, where: str) -> ServerSettings:
        for key, (name, _) in self.KEYS.items():
            if name.endswith("_s"):
                check_range(where, key, getattr(self, name), _MIN_TIMEOUT_S, _MAX_TIMEOUT_S, " s")
        check_range(where, "max_connections", self.max_connections, 1, 1_000_000)
        check_range(where, "inline_parse_bytes", self.inline_parse_bytes, 0, _MAX_INLINE_PARSE_BYTES)
        return self

