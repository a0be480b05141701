"""NATS JetStream ingest: a durable pull consumer that acknowledges messages only after the readings
are durable.

Each ``fetch`` returns a group of messages; the group becomes one log record (one fsync) while the
next group is fetched and parsed, and every message of the group is acknowledged once the record is
on disk. The consumer's ack policy is explicit, so a message that was not acknowledged (the process
was killed, the connection dropped before the ack) is redelivered after ``ack_wait``; compaction's
dedup keeps every reading exactly once. Processes started with the same ``--durable`` share its
messages (each has its own log, named by ``--member``).

Device and sensor of a reading without them: the headers ``device`` / ``sensor``, else the last two
tokens of the subject (``fleet.<device>.<sensor>``; subjects of fewer than three tokens give none).
The client is ``nats-py``; it reconnects on its own after a server restart, and the stream and the
durable (file storage) survive it on the server.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetscore.config.streams import NatsSettings
from fleetscore.errors import ConfigError, InputError
from fleetscore.ingest.messages import StreamMessage
from fleetscore.ingest.streams import StreamSink
from fleetscore.redact import redact

DEFAULT_PORT = 4222
SCHEMES = ("nats", "tls")
#: At most this many messages per fetch (one group, one log record).
MAX_GROUP_MESSAGES = 5_000
#: How long a fetch waits for messages when nothing is pending.
FETCH_TIMEOUT_S = 0.25
#: How long a fetch waits while a group's fsync is still running (then its messages are acked).
PENDING_FETCH_TIMEOUT_S = 0.05
#: Messages delivered but not yet acknowledged, per durable (the server stops delivering beyond it).
MAX_ACK_PENDING = 200_000
RECONNECT_WAIT_S = 0.5
#: Timeout of JetStream API requests (stream / consumer info and creation).
API_TIMEOUT_S = 2.0
#: How long setup retries while the server answers but JetStream does not (yet).
SETUP_RETRY_S = 30.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_AUTH = re.compile(r"authori[sz]ation|authentication", re.IGNORECASE)


@dataclass(frozen=True)
class NatsTarget:
    """Where and how to consume: server, stream, subject filter, durable and credentials (never printed)."""

    server: str  # scheme://host:port, without credentials
    stream: str
    subject: str
    durable: str
    create_stream: bool = False
    ack_wait_s: float = 30.0
    creds: str | None = None
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls, *, server: str, stream: str, subject: str, durable: str, create_stream: bool = False,
        ack_wait_s: float = 30.0, credentials: NatsSettings | None = None, ca_file: str | None = None,
        cert_file: str | None = None, key_file: str | None = None,
    ) -> NatsTarget:
        """Validate the flags; InputError (ConfigError for the environment's credentials) says what is wrong."""
        url, scheme = server_url(server)
        for what, name in (("--stream", stream), ("--durable", durable)):
            if not _NAME.match(name or ""):
                raise InputError(f"{what} {name[:80]!r}: use 1..255 letters, digits, '_' or '-'")
        check_subject(subject)
        if not ack_wait_s or ack_wait_s <= 0:
            raise InputError("--ack-wait must be longer than 0 seconds")
        credentials = credentials or NatsSettings()
        creds = credentials.creds
        if creds and (credentials.user or credentials.password):
            raise ConfigError("set FLEETSCORE_NATS_CREDS or FLEETSCORE_NATS_USER / FLEETSCORE_NATS_PASSWORD, not both")
        if creds and not Path(creds).is_file():
            raise ConfigError(f"FLEETSCORE_NATS_CREDS: {creds[:200]!r} is not a file (give a NATS .creds file)")
        if bool(credentials.user) != bool(credentials.password):
            raise ConfigError("set both FLEETSCORE_NATS_USER and FLEETSCORE_NATS_PASSWORD, or neither")
        context = tls_context(ca_file, cert_file, key_file) if scheme == "tls" or ca_file or cert_file else None
        if key_file and not cert_file:
            raise InputError("--key-file needs --cert-file (the client certificate)")
        return cls(server=url, stream=stream, subject=subject, durable=durable, create_stream=create_stream,
                   ack_wait_s=float(ack_wait_s), creds=creds or None, user=credentials.user or None,
                   password=credentials.password or None, tls=context)


def server_url(server: str) -> tuple[str, str]:
    """``nats://HOST[:PORT]`` or ``tls://HOST[:PORT]`` → (normalised URL, scheme); the URL given is never
    echoed when it carries credentials."""
    shown = server[:80] if "@" not in server else "(a URL with credentials)"
    try:
        parts = urlsplit(server.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise InputError(f"--server {shown!r}: {exc}") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InputError("--server must not carry credentials: set FLEETSCORE_NATS_USER and FLEETSCORE_NATS_PASSWORD "
                         "(or FLEETSCORE_NATS_CREDS) instead")
    if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InputError(f"--server must look like nats://HOST:PORT or tls://HOST:PORT, got {shown!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}", parts.scheme


def check_subject(subject: str) -> None:
    """A subject filter: dot-separated non-empty tokens without spaces; ``*`` a whole token, ``>`` the last."""
    tokens = subject.split(".") if subject else []
    bad = not tokens or any(not t or any(c.isspace() for c in t) for t in tokens)
    bad = bad or any(("*" in t and t != "*") or (">" in t and (t != ">" or i != len(tokens) - 1))
                     for i, t in enumerate(tokens))
    if bad:
        raise InputError(f"--subject {subject[:80]!r} is not a NATS subject filter (e.g. fleet.> or fleet.*.temp)")


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """A client TLS context: the system CAs or ``ca_file``, and a client certificate for mutual TLS."""
    for flag, path in (("--ca-file", ca_file), ("--cert-file", cert_file), ("--key-file", key_file)):
        if path and not Path(path).is_file():
            raise InputError(f"{flag} {path[:200]!r}: no such file")
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise InputError(f"cannot load the TLS files: {exc}") from None
    return context


def subject_ids(subject: str) -> tuple[str | None, str | None]:
    """``prefix.<device>.<sensor>`` → (device, sensor); a subject of fewer than three tokens gives nothing."""
    tokens = subject.split(".")
    if len(tokens) < 3 or not tokens[-2] or not tokens[-1]:
        return None, None
    return tokens[-2], tokens[-1]


def to_message(msg: Any, stream: str) -> StreamMessage:
    """A nats-py JetStream message → :class:`StreamMessage` (headers win over the subject for the ids)."""
    try:
        seq: Any = msg.metadata.sequence.stream
    except Exception:  # noqa: BLE001 - not a JetStream message: cannot happen on a pull subscription
        seq = "?"
    return StreamMessage.of(msg.data or b"", f"stream={stream} seq={seq} subject={msg.subject}",
                            (msg.headers or {}).items(), subject_ids(msg.subject))


class NatsIngest:
    """One process of a durable pull consumer; :meth:`run` blocks until ``stop`` is set."""

    def __init__(self, sink: StreamSink, target: NatsTarget, on_subscribed: Callable[[], None] | None = None) -> None:
        self.sink = sink
        self.target = target
        self.on_subscribed = on_subscribed
        self.nc: Any = None
        self.psub: Any = None
        self._pending: tuple[Future[None], list[Any]] | None = None
        self._connected = False
        self._auth_failed = False
        self._lag: dict[tuple[str, str], int] | None = None
        self.reconnects = 0
        self.acked = 0
        self.fetch_errors = 0
        self.ack_errors = 0
        self.errors = 0

    # --- callbacks of nats-py -------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.errors += 1
        if self.errors <= 20 or self.errors % 1000 == 0:
            print(redact(f"nats: {text}"), file=sys.stderr, flush=True)

    async def _on_error(self, error: Exception) -> None:
        if not self._connected and _AUTH.search(str(error)):
            self._auth_failed = True
        self._say(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)

    async def _on_disconnected(self) -> None:
        if self._connected:
            self._say(f"disconnected from {self.target.server}; reconnecting")

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self._say(f"reconnected to {self.target.server}")

    # --- the loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Connect (retrying until the server answers), consume, write and acknowledge until ``stop``."""
        asyncio.run(self._run(stop))

    async def _run(self, stop: threading.Event) -> None:
        nc = await self._connect(stop)
        if nc is None:
            return
        self.nc = nc
        try:
            js = nc.jetstream(timeout=API_TIMEOUT_S)
            self.psub = await self._subscribe(js, stop)
            if self.psub is None:
                return
            if self.on_subscribed is not None:
                self.on_subscribed()
            await self._consume(stop)
        finally:
            await self._close(nc)

    async def _connect(self, stop: threading.Event) -> Any:
        """A connected client, or None when ``stop`` was set first; InputError when the server refuses
        the credentials."""
        from nats.aio.client import Client

        target = self.target
        options: dict[str, Any] = {
            "servers": [target.server], "name": "fleetscore-ingest", "allow_reconnect": True,
            "max_reconnect_attempts": -1, "reconnect_time_wait": RECONNECT_WAIT_S, "connect_timeout": 5,
            "error_cb": self._on_error, "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected, "pending_size": 64 * 1024 * 1024,
        }
        if target.tls is not None:
            options["tls"] = target.tls
        if target.creds:
            options["user_credentials"] = target.creds
        elif target.user:
            options["user"], options["password"] = target.user, target.password
        nc = Client()
        task = asyncio.ensure_future(nc.connect(**options))
        while not task.done():
            if stop.is_set() or self._auth_failed:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - cancelled or failed: we give up
                    pass
                await self._close(nc)
                if self._auth_failed:
                    raise InputError(f"nats: {target.server} refused the credentials (authorization violation); check "
                                     "FLEETSCORE_NATS_USER / FLEETSCORE_NATS_PASSWORD or FLEETSCORE_NATS_CREDS")
                return None
            await asyncio.wait({task}, timeout=0.1)
        try:
            task.result()
        except Exception as exc:  # noqa: BLE001 - e.g. a bad creds file: reported, not a traceback
            await self._close(nc)
            raise InputError(redact(f"nats: cannot connect to {target.server}: {exc}")) from None
        self._connected = True
        return nc

    async def _subscribe(self, js: Any, stop: threading.Event) -> Any:
        """Make sure the stream exists, then create or bind the durable pull consumer; None if stopped."""
        import nats.errors
        import nats.js.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        target = self.target
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETUP_RETRY_S
        while not stop.is_set():
            try:
                await self._ensure_stream(js)
                config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=target.ack_wait_s,
                                        max_ack_pending=MAX_ACK_PENDING, deliver_policy=DeliverPolicy.ALL)
                psub = await js.pull_subscribe(target.subject, durable=target.durable, stream=target.stream,
                                               config=config)
                await self._check_filter(psub)
                return psub
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
                    nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError) as exc:
                if loop.time() > deadline:
                    raise InputError(f"nats: JetStream does not answer on {target.server} ({type(exc).__name__}); is "
                                     "the server started with JetStream (-js)?") from None
                self._say(f"JetStream not ready on {target.server} ({type(exc).__name__}); retrying")
                await asyncio.sleep(RECONNECT_WAIT_S)
            except nats.js.errors.APIError as exc:
                raise InputError(f"nats: stream {target.stream} / durable {target.durable} on {target.server}: "
                                 f"{exc.description or exc}") from None
        return None

    async def _ensure_stream(self, js: Any) -> None:
        import nats.js.errors

        target = self.target
        try:
            await js.stream_info(target.stream)
            return
        except nats.js.errors.NotFoundError:
            if not target.create_stream:
                raise InputError(f"stream {target.stream} does not exist on {target.server}; create it or pass "
                                 "--create-stream") from None
        try:
            await js.add_stream(name=target.stream, subjects=[target.subject])
            print(f"nats: created stream {target.stream} ({target.subject})", file=sys.stderr, flush=True)
        except nats.js.errors.BadRequestError:
            await js.stream_info(target.stream)  # created meanwhile by another member: fine; else it raises

    async def _check_filter(self, psub: Any) -> None:
        info = await psub.consumer_info()
        filter_subject = getattr(info.config, "filter_subject", None)
        if filter_subject and filter_subject != self.target.subject:
            print(f"nats: durable {self.target.durable} exists with filter {filter_subject}, not {self.target.subject}; "
                  "consuming its filter (delete the durable to change it)", file=sys.stderr, flush=True)

    async def _consume(self, stop: threading.Event) -> None:
        import nats.errors

        while not stop.is_set():
            if self._pending is not None and self._pending[0].done():
                await self._finish()
            timeout = PENDING_FETCH_TIMEOUT_S if self._pending is not None else FETCH_TIMEOUT_S
            msgs: list[Any] = []
            try:
                msgs = await self.psub.fetch(batch=MAX_GROUP_MESSAGES, timeout=timeout)
            except TimeoutError:  # nothing now (nats.errors.TimeoutError is one)
                pass
            except (nats.errors.Error, OSError) as exc:  # the connection dropped: nats-py reconnects on its own
                self.fetch_errors += 1
                self._say(f"fetch: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2)
            if msgs:
                future = self.sink.write([to_message(m, self.target.stream) for m in msgs])
                await self._finish()
                self._pending = (future, msgs)
            else:
                await self._finish()
            if self.sink.due():
                self.sink.report(await self._read_lag())
        await self._finish()
        self.sink.report(await self._read_lag(), force=True)

    async def _finish(self) -> None:
        """Wait for the pending group's fsync, then acknowledge every message of it."""
        import nats.errors

        if self._pending is None:
            return
        future, msgs = self._pending
        self._pending = None
        await asyncio.wrap_future(future)
        acked = 0
        try:
            for msg in msgs:
                await msg.ack()
                acked += 1
            await self.nc.flush(timeout=5)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            # not acknowledged: JetStream redelivers after ack_wait and compaction drops the copies
            self.ack_errors += 1
            self._say(f"ack: {type(exc).__name__}: {exc}")
        self.acked += acked
        self.sink.committed()

    async def _read_lag(self) -> dict[tuple[str, str], int] | None:
        """Messages not yet acknowledged by the durable: pending + delivered but unacknowledged."""
        import nats.errors

        if self.nc is None or not self.nc.is_connected or self.psub is None:
            return self._lag
        try:
            info = await self.psub.consumer_info()
        except (TimeoutError, nats.errors.Error, OSError):
            return self._lag
        self._lag = {(self.target.stream, "-"): int(info.num_pending or 0) + int(info.num_ack_pending or 0)}
        return self._lag

    async def _close(self, nc: Any) -> None:
        self._connected = False  # no "disconnected" line for our own close
        try:
            if nc.is_connected:
                await nc.flush(timeout=2)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            await nc.close()
        except Exception:  # noqa: BLE001
            pass

    def stats(self) -> dict[str, Any]:
        return self.sink.stats() | {"reconnects_total": self.reconnects, "acked_total": self.acked,
                                    "fetch_errors_total": self.fetch_errors, "ack_errors_total": self.ack_errors}
