"""``[kafka]``, ``[nats]`` and ``[mqtt]``: the credentials of the stream consumers, from the environment only.

These sections take no toml keys (their settings are secrets); brokers, topics and TLS files are
flags of ``fleetscore ingest kafka`` / ``ingest nats`` / ``ingest mqtt``.

    FLEETSCORE_KAFKA_CONNECTION_STRING   Azure Event Hubs: ``Endpoint=sb://NS.servicebus.windows.net/;...``
    FLEETSCORE_KAFKA_USERNAME / _PASSWORD   SASL (PLAIN or SCRAM) for other brokers
    FLEETSCORE_NATS_CREDS                a NATS credentials file (JWT + nkey seed)
    FLEETSCORE_NATS_USER / _PASSWORD     NATS user and password
    FLEETSCORE_MQTT_USERNAME / _PASSWORD MQTT broker user name and password
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fleetscore.config.values import Parser


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """Kafka-protocol credentials (``Config.kafka``); never printed (``repr`` hides them)."""

    connection_string: str | None = field(default=None, repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {}

    def checked(self, where: str) -> KafkaSettings:
        return self


@dataclass(frozen=True, kw_only=True)
class NatsSettings:
    """NATS credentials (``Config.nats``); never printed."""

    creds: str | None = field(default=None, repr=False)
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {}

    def checked(self, where: str) -> NatsSettings:
        return self


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """MQTT broker credentials (``Config.mqtt``); never printed."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {}

    def checked(self, where: str) -> MqttSettings:
        return self
