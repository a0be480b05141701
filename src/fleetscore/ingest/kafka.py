"""Kafka-protocol ingest (Apache Kafka, Redpanda, Azure Event Hubs): a consumer-group member that
commits offsets only after the readings are durable.

Each ``consume`` call returns a group of messages; the group becomes one log record (one fsync) while
the next group is fetched and parsed, and its offsets are committed once the record is on disk. On a
rebalance the revoked partitions' durable offsets are committed synchronously before they move to
another member. Offsets are never auto-committed or auto-stored, so a crash replays from the last
commit and compaction's dedup keeps every reading exactly once.

Device and sensor of a reading without them: the headers ``device`` / ``sensor``, else the message
key ``device/sensor`` (split at its last ``/``). The client is librdkafka (``confluent-kafka``); no
broker-specific API is used, so any Kafka-protocol broker works.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from fleetscore.config.streams import KafkaSettings
from fleetscore.errors import ConfigError, InputError
from fleetscore.ingest.messages import StreamMessage
from fleetscore.ingest.streams import StreamSink
from fleetscore.redact import redact

#: At most this many messages per group (one log record).
MAX_GROUP_MESSAGES = 20_000
EVENT_HUBS_PORT = 9093
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: librdkafka properties that ``-X`` may not set: secrets (environment only) and what the guarantee rests on.
REFUSED_PROPERTIES = {
    "sasl.password": "secrets come from the environment only (FLEETSCORE_KAFKA_PASSWORD)",
    "sasl.username": "set FLEETSCORE_KAFKA_USERNAME",
    "ssl.key.password": "secrets come from the environment only",
    "ssl.key.pem": "give --key-file",
    "sasl.oauthbearer.client.secret": "secrets come from the environment only",
    "enable.auto.commit": "offsets are committed only after the readings are durable",
    "enable.auto.offset.store": "offsets are committed only after the readings are durable",
    "group.id": "give --group",
    "bootstrap.servers": "give --bootstrap",
}
_ENDPOINT = re.compile(r"(?:^|;)\s*Endpoint\s*=\s*sb://([^/;:\s]+)", re.IGNORECASE)


def client_config(
    *, bootstrap: str | None, group: str, member: str, credentials: KafkaSettings, sasl_mechanism: str | None = None,
    tls: bool = False, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
    start: str = "earliest", extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The librdkafka configuration of a member: Event Hubs from its connection string (SASL_SSL, PLAIN,
    port 9093), SASL/SCRAM or PLAIN from the environment's username and password, TLS files, ``-X``."""
    conf: dict[str, Any] = {
        "group.id": group, "client.id": f"fleetscore-{member}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": start, "enable.partition.eof": False,
    }
    mechanism = sasl_mechanism.upper() if sasl_mechanism else None
    if mechanism is not None and mechanism not in SASL_MECHANISMS:
        raise InputError(f"--sasl-mechanism must be one of {', '.join(SASL_MECHANISMS)}, got {mechanism[:40]!r}")
    if credentials.connection_string:
        match = _ENDPOINT.search(credentials.connection_string)
        if match is None:
            raise ConfigError("FLEETSCORE_KAFKA_CONNECTION_STRING has no Endpoint=sb://<namespace>.servicebus.windows.net/ "
                              "part (copy the Event Hubs namespace's connection string)")
        bootstrap = bootstrap or f"{match.group(1)}:{EVENT_HUBS_PORT}"
        conf.update({"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN", "sasl.username": "$ConnectionString",
                     "sasl.password": credentials.connection_string})
    elif credentials.username or credentials.password:
        if not (credentials.username and credentials.password):
            raise ConfigError("set both FLEETSCORE_KAFKA_USERNAME and FLEETSCORE_KAFKA_PASSWORD, or neither")
        conf.update({"security.protocol": "SASL_SSL" if tls or ca_file else "SASL_PLAINTEXT",
                     "sasl.mechanisms": mechanism or "SCRAM-SHA-512", "sasl.username": credentials.username,
                     "sasl.password": credentials.password})
    elif mechanism is not None:
        raise ConfigError(f"--sasl-mechanism {mechanism} needs FLEETSCORE_KAFKA_USERNAME and FLEETSCORE_KAFKA_PASSWORD")
    elif tls or ca_file or cert_file:
        conf["security.protocol"] = "SSL"
    if not bootstrap:
        raise InputError("give --bootstrap HOST:PORT (or FLEETSCORE_KAFKA_CONNECTION_STRING for Event Hubs)")
    conf["bootstrap.servers"] = bootstrap
    for name, path in (("ssl.ca.location", ca_file), ("ssl.certificate.location", cert_file),
                       ("ssl.key.location", key_file)):
        if path:
            conf[name] = path
    for key, value in (extra or {}).items():
        if key in REFUSED_PROPERTIES:
            raise InputError(f"-X {key}: not allowed ({REFUSED_PROPERTIES[key]})")
        conf[key] = value
    return conf


def parse_properties(items: list[str]) -> dict[str, str]:
    """``-X key=value`` flags → a dict; InputError names a malformed one."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"-X expects KEY=VALUE (a librdkafka property), got {item[:80]!r}")
        out[key.strip()] = value
    return out


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def _librdkafka_logger() -> logging.Logger:
    """librdkafka's own log lines, to stderr through :func:`redact` (it does not log secrets; belt and braces)."""
    logger = logging.getLogger("fleetscore.kafka")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_Redact())
        handler.setFormatter(logging.Formatter("kafka: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def key_ids(key: bytes | None) -> tuple[str | None, str | None]:
    """A message key ``device/sensor`` → (device, sensor); anything else gives nothing."""
    if not key:
        return None, None
    text = key.decode("utf-8", "replace")
    device, sep, sensor = text.rpartition("/")
    return (device, sensor) if sep and device and sensor else (None, None)


def to_message(msg: Any) -> StreamMessage:
    """A confluent-kafka message → :class:`StreamMessage` (headers win over the key for the ids)."""
    return StreamMessage.of(msg.value() or b"", f"topic={msg.topic()} partition={msg.partition()} offset={msg.offset()}",
                            msg.headers() or (), key_ids(msg.key()))


class KafkaIngest:
    """One consumer-group member; :meth:`run` blocks until ``stop`` is set."""

    def __init__(self, sink: StreamSink, conf: dict[str, Any], topics: list[str],
                 on_assigned: Callable[[list[tuple[str, int]]], None] | None = None) -> None:
        self.sink = sink
        self.conf = dict(conf)
        self.topics = topics
        self.on_assigned = on_assigned
        self.consumer: Any = None
        self._pending: tuple[Future[None], dict[tuple[str, int], int]] | None = None
        self._durable: dict[tuple[str, int], int] = {}  # next offset per partition, durable and committed
        self.assignment: list[tuple[str, int]] = []
        self.rebalances = 0
        self.commit_errors = 0
        self.broker_errors = 0

    def _on_error(self, error: Any) -> None:
        self.broker_errors += 1
        if self.broker_errors <= 20 or self.broker_errors % 1000 == 0:
            print(redact(f"kafka: {error}"), file=sys.stderr, flush=True)

    def run(self, stop: threading.Event) -> None:
        from confluent_kafka import Consumer, KafkaError, KafkaException

        self.consumer = consumer = Consumer({**self.conf, "error_cb": self._on_error}, logger=_librdkafka_logger())
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not stop.is_set():
                msgs = consumer.consume(num_messages=MAX_GROUP_MESSAGES, timeout=0.2)
                good = []
                for msg in msgs:
                    err = msg.error()
                    if err is None:
                        good.append(msg)
                    elif err.fatal():
                        raise KafkaException(err)
                    elif err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001 (librdkafka's name for it)
                        self._on_error(err)
                if good:
                    offsets: dict[tuple[str, int], int] = {}
                    for msg in good:
                        offsets[(msg.topic(), msg.partition())] = int(msg.offset()) + 1  # type: ignore[index,arg-type]
                    future = self.sink.write([to_message(m) for m in good])
                    self._finish(sync=False)
                    self._pending = (future, offsets)
                else:
                    self._finish(sync=False)
                if self.sink.due():
                    self.sink.report(self._lag())
            self._finish(sync=True)
            self.sink.report(self._lag(), force=True)
        finally:
            consumer.close()

    def _finish(self, sync: bool) -> None:
        """Wait for the pending group's fsync, then commit its offsets."""
        if self._pending is None:
            return
        from confluent_kafka import KafkaException, TopicPartition

        future, offsets = self._pending
        self._pending = None
        future.result()
        self._durable.update(offsets)
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=not sync)
            self.sink.committed()
        except KafkaException as exc:  # e.g. the partitions were revoked: the next owner replays, dedup drops
            self.commit_errors += 1
            self._on_error(exc)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.rebalances += 1
        self.assignment = sorted((p.topic, p.partition) for p in partitions)
        if self.on_assigned is not None:
            self.on_assigned(self.assignment)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._finish(sync=True)
        revoked = {(p.topic, p.partition) for p in partitions}
        self.assignment = [tp for tp in self.assignment if tp not in revoked]
        for tp in revoked:
            self._durable.pop(tp, None)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions lost without a clean revoke (session timed out): the commit may fail, and then the
        next owner replays the uncommitted groups, which dedup drops."""
        self._on_revoke(consumer, partitions)

    def _lag(self) -> dict[tuple[str, str], int]:
        """Messages behind the durable position per assigned partition (high watermark − next offset)."""
        from confluent_kafka import KafkaException, TopicPartition

        lag: dict[tuple[str, str], int] = {}
        for topic, partition in self.assignment:
            try:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                position = self._durable.get((topic, partition))
                if position is None:
                    position = self.consumer.position([TopicPartition(topic, partition)])[0].offset
                if high >= 0:
                    lag[(topic, str(partition))] = max(0, high - max(position, low, 0))
            except KafkaException:
                continue
        return lag

    def stats(self) -> dict[str, Any]:
        return self.sink.stats() | {"rebalances_total": self.rebalances, "commit_errors_total": self.commit_errors,
                                    "broker_errors_total": self.broker_errors, "partitions": len(self.assignment)}
