"""MQTT ingest: subscribe with QoS 1, acknowledge to the broker only after the readings are durable.

Topics are ``<prefix>/{device}/{sensor}`` (the last two levels name the device and the sensor);
a payload is a JSON object ``{"ts": ..., "value": ...}`` or an array of them. Messages are
collected while the previous group is being written: one log record and one fsync per group, then
a PUBACK for every message of the group (paho's ``manual_ack``). A crash before the PUBACK makes
the broker redeliver the message; compaction drops the copy, so a reading is stored exactly once.

The session is persistent (MQTT 5, ``clean_start=False``, a long session expiry, fixed client id)
so the broker keeps queueing while the subscriber is down, and the client reconnects on its own
after a broker restart. ``ReceiveMaximum`` 65535 lets the broker keep many messages in flight,
which group commit needs for throughput (a v3.1.1 broker would cap it at its
``max_inflight_messages``, 20 by default in mosquitto).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from fleetscore.errors import InputError
from fleetscore.ingest.parse import ParsedBody, from_objects
from fleetscore.ingest.service import IngestService

SOURCE = "mqtt"
DEFAULT_PORT = 1883
SESSION_EXPIRY_S = 7 * 86_400
#: At most this many messages go into one log record.
MAX_GROUP_MESSAGES = 20_000


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Broker:
        """``mqtt://HOST[:PORT]`` (TLS, websockets and credentials in the URL are not supported)."""
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise InputError(f"--broker {url[:80]!r}: {exc}") from None
        if parts.scheme != "mqtt" or not parts.hostname or parts.username or parts.path not in ("", "/"):
            raise InputError(f"--broker must look like mqtt://HOST:PORT, got {url[:80]!r}")
        return cls(parts.hostname, port)


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

    def _client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
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
        """Connect (retrying until the broker answers), consume, commit and acknowledge until ``stop``."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = self._client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = 65_535
        while not stop.is_set():
            try:
                client.connect(self.broker.host, self.broker.port, keepalive=30, clean_start=False, properties=props)
                break
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
