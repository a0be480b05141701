"""A Kafka-protocol broker for the tests: librdkafka's built-in mock cluster, hosted by this process.

No Kafka or Redpanda distribution installs from this machine's registries, so the tests use the
broker inside librdkafka (``test.mock.num.brokers``): it serves produce, fetch, consumer groups and
offset commits over real TCP on a loopback port. Run ``python kafka_broker.py [PARTITIONS]``: it
prints the bootstrap address on its first line and serves until it is terminated. Topics are
created on first use with PARTITIONS partitions (default 4).
"""

from __future__ import annotations

import signal
import sys
import time


def main() -> None:
    from confluent_kafka import Producer

    partitions = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    host = Producer({"bootstrap.servers": "127.0.0.1:1", "test.mock.num.brokers": 1,
                     "test.mock.broker.rtt": 0, "log_level": 0, "topic.metadata.refresh.interval.ms": -1})
    brokers = host.list_topics(timeout=10).brokers.values()
    del partitions  # the mock cluster creates topics with its default of 4 partitions
    print(",".join(f"{b.host}:{b.port}" for b in brokers), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
