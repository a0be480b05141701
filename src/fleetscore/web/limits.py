"""Connection limits of ``fleetscore serve``: uvicorn's httptools protocol with the ``[server]`` timeouts and cap.

uvicorn bounds only the wait between requests (``timeout_keep_alive``) and answers 503 past
``limit_concurrency`` only once a request's headers are in, counting idle connections and the
asking one. A client that sends nothing, half a header or half a body keeps its socket for ever.
Here every connection is always under one clock:

    headers   from the connection (or the request's first byte) until the headers are complete:
              header_timeout; and no silence longer than idle_timeout
    body      until the body is complete: body_timeout; and no silence longer than idle_timeout
    idle      between requests: keep_alive_timeout
    (none)    while the app works on a request; a response the client does not read for
              idle_timeout ends the connection

The clocks stop while the server itself holds reading paused (the app has not taken the body yet).
A connection past the clock is aborted. Connections beyond ``max_connections`` are answered 503 at
once and closed, so the number of sockets held stays bounded; :func:`fit_descriptors` makes sure
the process may open that many.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetscore.config.server import ServerSettings
from fleetscore.errors import InputError

Phase = Literal["headers", "body", "idle"]
#: Descriptors kept free beside the connections: log segments, the catalog, Parquet parts, threads.
RESERVED_DESCRIPTORS = 256
#: How long a refused connection is kept (its input read and dropped) so the client reads the 503.
_LINGER_S = 1.0


def limited_protocol(settings: ServerSettings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``http=``) for these settings."""
    return type("ServerLimitedProtocol", (LimitedHttpToolsProtocol,), {"limits": settings})


def fit_descriptors(settings: ServerSettings) -> None:
    """Raise the soft limit of open files to what ``max_connections`` needs; InputError if the hard limit is lower."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    need = settings.max_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise InputError(f"[server] max_connections = {settings.max_connections} needs {need} open files, but this "
                         f"process may open only {hard} (ulimit -n); lower max_connections or raise the limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class _WatchedFlow(FlowControl):
    """uvicorn's flow control, telling the protocol when reading is paused and resumed."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedHttpToolsProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def pause_reading(self) -> None:
        if not self.read_paused:
            super().pause_reading()
            self._protocol.reading_paused()

    def resume_reading(self) -> None:
        if self.read_paused:
            super().resume_reading()
            self._protocol.reading_resumed()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol under the ``[server]`` clocks and connection cap (see the module)."""

    limits: ClassVar[ServerSettings] = ServerSettings()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase | None = None
        self._deadline = 0.0  # loop time the phase must end by
        self._last_input = 0.0  # loop time of the last bytes received
        self._paused_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse()
            return
        self.flow = _WatchedFlow(transport, self)
        self._last_input = self.loop.time()
        self._begin("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._last_input = self.loop.time()
        super().data_received(data)
        if self._phase == "idle":  # bytes between requests that start none (blank lines): still a request
            self._begin("headers")

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "headers":
            self._begin("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._begin("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_clock()
        self._phase = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # no pipelined request: wait for the next one
            self._unset_keepalive_if_required()
            self._begin("idle")

    # flow control
    def reading_paused(self) -> None:
        """The server stopped reading: the client's clock stops."""
        self._paused_at = self.loop.time()
        self._stop_clock()

    def reading_resumed(self) -> None:
        """The server reads again: the clock goes on from where it stopped."""
        if self._paused_at is not None:
            now = self.loop.time()
            self._deadline += now - self._paused_at
            self._last_input = now
            self._paused_at = None
        self._start_clock()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.idle_timeout_s, self._expire)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    # clocks
    def _begin(self, phase: Phase) -> None:
        limits = self.limits
        timeout = {"headers": limits.header_timeout_s, "body": limits.body_timeout_s,
                   "idle": limits.keep_alive_timeout_s}[phase]
        self._phase = phase
        self._deadline = self.loop.time() + timeout
        self._stop_clock()
        if self._paused_at is None:
            self._start_clock()

    def _due(self) -> float:
        if self._phase == "idle":
            return self._deadline
        return min(self._deadline, self._last_input + self.limits.idle_timeout_s)

    def _start_clock(self) -> None:
        if self._phase is not None and self._timer is None:
            self._timer = self.loop.call_at(self._due(), self._tick)

    def _stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self.loop.time() >= self._due():
            self._expire()
        else:  # bytes came in since the timer was set: wait for the later due time
            self._start_clock()

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    # over the cap
    def _refuse(self) -> None:
        """Answer 503 without reading a request, then close once the client has had time to read it."""
        self._refused = True
        self.connections.discard(self)
        cap = self.limits.max_connections
        body = json.dumps({"detail": f"too many connections: this server takes at most {cap} at once "
                                     "([server] max_connections); retry later"}).encode()
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self.loop.call_later(_LINGER_S, self._expire)
