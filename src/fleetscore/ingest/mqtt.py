"""MQTT ingest: subscribe with QoS 1, acknowledge to the broker only after the readings are durable.

Topics are ``<prefix>/{device}/{sensor}`` (the last two levels name the device and the sensor);
a payload is a JSON object ``{"ts": ..., "value": ...}`` or an array of them. Messages are
collected while the previous group is being written: one log record and one fsync per group, then
a PUBACK for every message of the group (paho's ``manual_ack``). A crash before the PUBACK makes
the broker redeliver the message; compaction drops the copy, so a reading is stored exactly once.

Credentials come from the URL (``mqtt://USER:PASSWORD@HOST``) or the environment
(``FLEETSCORE_MQTT_USERNAME`` / ``_PASSWORD``); ``mqtts://`` or ``--tls`` / ``--ca-file`` /
``--cert-file`` connect with TLS (port 8883 by default). A refused connection (bad credentials)
ends the subscriber with a ConfigError; no message ever shows the password.

The session is persistent (MQTT 5, ``clean_start=False``, a long session expiry, fixed client id)
so the broker keeps queueing while the subscriber is down, and the client reconnects on its own
after a broker restart. ``ReceiveMaximum`` 65535 lets the broker keep many messages in flight,
which group commit needs for throughput (a v3.1.1 broker would cap it at its
``max_inflight_messages``, 20 by default in mosquitto).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson

from fleetscore.config.streams import MqttSettings
from fleetscore.errors import ConfigError, InputError
from fleetscore.ingest.nats import tls_context
from fleetscore.ingest.parse import ParsedBody, from_objects
from fleetscore.ingest.service import IngestService
from fleetscore.redact import REDACTED, redact

SOURCE = "mqtt"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
SESSION_EXPIRY_S = 7 * 86_400
#: At most this many messages go into one log record.
MAX_GROUP_MESSAGES = 20_000


@dataclass(frozen=True)
class Broker:
    """Where and how to connect: host, port, TLS context and credentials (never printed)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The broker's URL for messages: scheme, host and port, never credentials."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def build(cls, url: str, credentials: MqttSettings | None = None, tls: bool = False, ca_file: str | None = None,
              cert_file: str | None = None, key_file: str | None = None) -> Broker:
        """``mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]`` plus the environment's credentials and the TLS flags;
        InputError (ConfigError for credentials) without the password."""
        try:
            parts = urlsplit(url.strip())
            secure = parts.scheme == "mqtts" or tls or bool(ca_file or cert_file)
            port = parts.port or (DEFAULT_TLS_PORT if secure else DEFAULT_PORT)
        except ValueError as exc:
            raise InputError(f"--broker {_shown(url)!r}: {redact(str(exc))}") from None
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment:
            raise InputError(f"--broker must look like mqtt://[USER:PASSWORD@]HOST:PORT or mqtts://..., got {_shown(url)!r}")
        username, password = _credentials(parts.username, parts.password, credentials or MqttSettings())
        if key_file and not cert_file:
            raise InputError("--key-file needs --cert-file (the client certificate)")
        context = tls_context(ca_file, cert_file, key_file) if secure else None
        return cls(parts.hostname, port, context, username, password)


def _shown(url: str) -> str:
    """``url`` for an error message: anything before the last ``@`` (user and password) is hidden."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = f"{REDACTED}@{rest.rpartition('@')[2]}"
    return redact(f"{scheme}{sep}{rest}" if sep else (REDACTED if "@" in url else url))[:120]


def _credentials(url_user: str | None, url_password: str | None, env: MqttSettings) -> tuple[str | None, str | None]:
    """(username, password) from the URL or the environment, not both; a password needs a user name."""
    if (url_user or url_password) and (env.username or env.password):
        raise ConfigError("give the broker credentials in the --broker URL or in FLEETSCORE_MQTT_USERNAME / "
                          "FLEETSCORE_MQTT_PASSWORD, not both")
    username = unquote(url_user) if url_user else env.username
    password = unquote(url_password) if url_password else env.password
    if password and not username:
        raise ConfigError("a broker password needs a user name (FLEETSCORE_MQTT_USERNAME or mqtt://USER:PASSWORD@HOST)")
    return username or None, password or None


def parse_messages(messages: list[tuple[str, bytes]]) -> ParsedBody:
    """(topic, payload) pairs → one parsed batch; a bad message becomes a row error, not a failure."""
    items: list[Any] = []
    errors: list[tuple[int, str, str]] = []
    for topic, payload in messages:
        levels = topic.split("/")
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            errors.append((len(items) + len(errors), f"{topic} {payload[:200]!r}", f"payload is not valid JSON: {exc}"))
            continue
        if len(levels) < 3:
            errors.append((len(items) + len(errors), topic, "topic must be <prefix>/{device}/{sensor}"))
            continue
        device, sensor = levels[-2], levels[-1]
        for item in data if isinstance(data, list) else (data,):
            if type(item) is dict:
                item["device"], item["sensor"] = device, sensor
            items.append(item)
    if not errors:
        return from_objects(items, np.arange(len(items)), [])
    bad = {e[0] for e in errors}
    rows = np.array([i for i in range(len(items) + len(errors)) if i not in bad], dtype=np.int64)
    return from_objects(items, rows, errors)


class MqttIngest:
    """Subscriber + committer thread; :meth:`run` blocks until ``stop`` is set."""

    def __init__(self, service: IngestService, broker: Broker, topic: str, client_id: str,
                 on_subscribed: Callable[[], None] | None = None) -> None:
        self.service = service
        self.on_subscribed = on_subscribed
        self.broker = broker
        self.topic = topic
        self.client_id = client_id
        self._cond = threading.Condition()
        self._pending: list[tuple[str, bytes, int, int]] = []  # topic, payload, mid, qos
        self.messages = 0
        self.connects = 0
        self.acked = 0
        self.refused: str | None = None
        self._stop = threading.Event()

    def _client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls is not None:
            client.tls_set_context(self.broker.tls)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:  # refused (bad credentials, not authorised, ...): retrying cannot help
            self.refused = str(reason)
            self._stop.set()
            return
        self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if self.on_subscribed is not None and not any(r.is_failure for r in reasons):
            self.on_subscribed()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            self._pending.append((message.topic, message.payload, message.mid, message.qos))
            self._cond.notify()

    def run(self, stop: threading.Event) -> None:
        """Connect (retrying until the broker answers), consume, commit and acknowledge until ``stop``;
        ConfigError if the broker refuses the connection, InputError if TLS fails."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._stop = stop
        client = self._client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = 65_535
        while not stop.is_set():
            try:
                client.connect(self.broker.host, self.broker.port, keepalive=30, clean_start=False, properties=props)
                break
            except ssl.SSLError as exc:
                raise InputError(f"{self.broker.url}: TLS failed: {redact(str(exc))}") from None
            except OSError:
                stop.wait(0.5)
        client.loop_start()
        try:
            while not stop.is_set():
                self._commit_group(client, stop)
            self._commit_group(client, None)
        finally:
            client.disconnect()
            client.loop_stop()
        if self.refused is not None:
            raise ConfigError(f"{self.broker.url} refused the connection: {self.refused} (check the user name and "
                              "password: FLEETSCORE_MQTT_USERNAME / FLEETSCORE_MQTT_PASSWORD or mqtt://USER:PASSWORD@HOST)")

    def _commit_group(self, client: Any, stop: threading.Event | None) -> None:
        with self._cond:
            if stop is not None and not self._pending:
                self._cond.wait(0.2)
            group, self._pending = self._pending[:MAX_GROUP_MESSAGES], self._pending[MAX_GROUP_MESSAGES:]
        if not group:
            return
        parsed = parse_messages([(topic, payload) for topic, payload, _, _ in group])
        batch = self.service.admit(parsed)
        self.service.append(batch).result()
        for _, _, mid, qos in group:
            client.ack(mid, qos)
        self.messages += len(group)
        self.acked += sum(1 for g in group if g[3] > 0)

    def stats(self) -> dict[str, Any]:
        return {"messages_total": self.messages, "acked_total": self.acked, "connects_total": self.connects,
                "pending_messages": len(self._pending)}
