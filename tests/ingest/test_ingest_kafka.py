"""Kafka-protocol ingest against a real broker process on a free loopback port.

The broker is librdkafka's built-in Kafka-protocol broker (``kafka_broker.py``: no Kafka or Redpanda
distribution installs here); the consumer is the real ``fleetscore ingest kafka`` process. A message
counts as sent once the broker acknowledged it; after kills, rebalances and an unreachable broker
every sent reading must be landed exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import Proc, key_set, landed, recent_us, wait_until

from fleetscore.config.streams import KafkaSettings
from fleetscore.core.times import iso
from fleetscore.errors import ConfigError, InputError
from fleetscore.ingest.kafka import client_config, key_ids, parse_properties

pytestmark = pytest.mark.backend
confluent_kafka = pytest.importorskip("confluent_kafka")

PER_MESSAGE = 10
#: Event time between messages: 10,000 messages span 100 s, well inside max_future and allowed_lateness.
STEP_US = 10_000
SECRET = "SharedAccessKey=sEcReTkEy0123456789abcdefXYZ="
EVENT_HUBS = f"Endpoint=sb://fleet-ns.servicebus.windows.net/;SharedAccessKeyName=listen;{SECRET}"


# --- client configuration (no broker) ---------------------------------------------------------------
def test_event_hubs_connection_string_gives_sasl_ssl_plain_on_9093() -> None:
    conf = client_config(bootstrap=None, group="g", member="m", credentials=KafkaSettings(connection_string=EVENT_HUBS))
    assert conf["bootstrap.servers"] == "fleet-ns.servicebus.windows.net:9093"
    assert (conf["security.protocol"], conf["sasl.mechanisms"]) == ("SASL_SSL", "PLAIN")
    assert conf["sasl.username"] == "$ConnectionString" and conf["sasl.password"] == EVENT_HUBS
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert "sEcReT" not in repr(KafkaSettings(connection_string=EVENT_HUBS))


def test_scram_tls_and_properties() -> None:
    creds = KafkaSettings(username="svc", password="pw-123456")
    conf = client_config(bootstrap="b1:9092,b2:9092", group="g", member="m", credentials=creds,
                         sasl_mechanism="scram-sha-256", ca_file="/ca.pem", extra=parse_properties(["fetch.wait.max.ms=50"]))
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanisms"] == "SCRAM-SHA-256"
    assert conf["ssl.ca.location"] == "/ca.pem" and conf["fetch.wait.max.ms"] == "50"
    plain = client_config(bootstrap="b:9092", group="g", member="m", credentials=creds)
    assert plain["security.protocol"] == "SASL_PLAINTEXT" and plain["sasl.mechanisms"] == "SCRAM-SHA-512"
    tls = client_config(bootstrap="b:9093", group="g", member="m", credentials=KafkaSettings(), tls=True,
                        cert_file="/c.pem", key_file="/k.pem")
    assert tls["security.protocol"] == "SSL" and tls["ssl.key.location"] == "/k.pem"


@pytest.mark.parametrize("kwargs, error, text", [
    ({"bootstrap": None}, InputError, "--bootstrap"),
    ({"credentials": KafkaSettings(connection_string="SharedAccessKey=abc")}, ConfigError, "Endpoint=sb://"),
    ({"credentials": KafkaSettings(username="u")}, ConfigError, "both"),
    ({"sasl_mechanism": "GSSAPI"}, InputError, "--sasl-mechanism"),
    ({"sasl_mechanism": "PLAIN"}, ConfigError, "FLEETSCORE_KAFKA_USERNAME"),
    ({"extra": {"sasl.password": "x"}}, InputError, "environment"),
    ({"extra": {"enable.auto.commit": "true"}}, InputError, "durable"),
])
def test_bad_client_settings_say_what_is_wrong(kwargs: dict, error: type, text: str) -> None:  # type: ignore[type-arg]
    args = {"bootstrap": "b:9092", "group": "g", "member": "m", "credentials": KafkaSettings()} | kwargs
    with pytest.raises(error, match=text) as info:
        client_config(**args)
    assert "abc" not in str(info.value)


def test_properties_and_keys_parse() -> None:
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_properties(["novalue"])
    assert key_ids(b"site/pump-1/temp") == ("site/pump-1", "temp")
    assert key_ids(b"nokey") == (None, None) and key_ids(None) == (None, None) and key_ids(b"/x") == (None, None)


# --- a real broker process -------------------------------------------------------------------------
class Broker:
    """librdkafka's Kafka-protocol broker in a helper process; ``pause`` makes it unreachable (SIGSTOP)."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kafka_broker.py"))],
                                     stdout=subprocess.PIPE, stderr=open(root / "broker.log", "ab"), text=True)
        assert self.proc.stdout is not None
        self.bootstrap = self.proc.stdout.readline().strip()
        assert self.bootstrap.startswith("127.0.0.1:"), self.bootstrap

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


class Producer:
    """Produces JSON batches of PER_MESSAGE readings keyed ``dev-N/temp``; ``sent`` = acknowledged messages."""

    def __init__(self, bootstrap: str, topic: str, start_us: int) -> None:
        self.client = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all",
                                                "enable.idempotence": True})
        self.topic, self.start_us = topic, start_us
        self.sent: list[int] = []
        self._lock = threading.Lock()

    def _delivered(self, m: int, err: object) -> None:
        if err is None:
            with self._lock:
                self.sent.append(m)

    def produce(self, first: int, count: int, flush: bool = True) -> None:
        for m in range(first, first + count):
            ts = self.start_us + m * STEP_US
            body = json.dumps([{"ts": (ts + j * 1000) / 1e6, "value": float(m + j)} for j in range(PER_MESSAGE)])
            self.client.produce(self.topic, body.encode(), key=f"dev-{m % 8}/temp",
                                on_delivery=lambda err, _msg, m=m: self._delivered(m, err))
            self.client.poll(0)
        if flush:
            assert self.client.flush(60) == 0

    def keys(self) -> set[tuple[str, str, int]]:
        return {(f"dev-{m % 8}", "temp", self.start_us + m * STEP_US + j * 1000)
                for m in self.sent for j in range(PER_MESSAGE)}


@pytest.fixture(autouse=True)
def _end_consumers() -> Iterator[None]:
    """Every consumer a test started is ended, whatever the test's outcome."""
    yield
    for proc in STARTED:
        proc.kill()
    STARTED.clear()


STARTED: list[Proc] = []


def consumer(home: Path, bootstrap: str, member: str, topic: str = "readings", *extra: str,
             env: dict[str, str] | None = None) -> Proc:
    log = home.parent / f"consumer-{member}.log"
    size = log.stat().st_size if log.exists() else 0
    proc = Proc(["ingest", "kafka", "--bootstrap", bootstrap, "--topic", topic, "--group", "fleet", "--member", member,
                 "--home", str(home), "--compact-interval", "1s", "--json",
                 "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500", *extra], env=env, log=log)
    STARTED.append(proc)
    wait_until(lambda: "assigned" in log.read_text(errors="replace")[size:] or proc.proc.poll() is not None,
               60, f"consumer {member} to be assigned partitions")
    assert proc.proc.poll() is None, proc.stderr_text()[-2000:]
    return proc


def assert_exactly_once(home: Path, expected: set) -> None:  # type: ignore[type-arg]
    wait_until(lambda: expected <= set(key_set(landed(home))), 90, "every sent reading to be landed")
    counts = Counter(key_set(landed(home)))
    assert set(counts) == expected
    assert max(counts.values()) == 1


def test_exactly_once_after_kill_minus_nine(home: Path, broker: Broker) -> None:
    producer = Producer(broker.bootstrap, "readings", recent_us())
    producer.produce(9200, 100)  # the broker creates the topic on first use
    proc = consumer(home, broker.bootstrap, "a")
    for round_ in range(3):
        feeder = threading.Thread(target=producer.produce, args=(round_ * 3000, 3000))
        feeder.start()
        time.sleep(0.3 + 0.4 * round_)
        proc.kill()  # SIGKILL under load: fsynced groups may not be committed yet
        feeder.join()
        proc = consumer(home, broker.bootstrap, "a")
    producer.produce(9000, 200)
    assert len(producer.sent) == 9300
    assert_exactly_once(home, producer.keys())  # the restarted member catches up from the last commit
    assert proc.stop() == 0
    assert_exactly_once(home, producer.keys())


def test_two_members_split_partitions_and_rebalance_midstream(home: Path, broker: Broker) -> None:
    producer = Producer(broker.bootstrap, "readings", recent_us())
    producer.produce(0, 500)  # creates the topic (4 partitions)
    first = consumer(home, broker.bootstrap, "a")
    producer.produce(500, 1500, flush=False)
    second = consumer(home, broker.bootstrap, "b")  # joins mid-stream: the group rebalances
    wait_until(lambda: "assigned 2 partition" in first.stderr_text(), 60, "member a to keep 2 of 4 partitions")
    assert "assigned 2 partition" in second.stderr_text()
    producer.produce(2000, 1000)
    assert_exactly_once(home, producer.keys())
    assert first.stop() == 0 and second.stop() == 0
    stats = [json.loads(p.proc.stdout.read()) for p in (first, second)]  # type: ignore[union-attr]
    assert all(s["messages_total"] > 0 for s in stats)
    assert_exactly_once(home, producer.keys())


def test_poison_and_oversized_messages_are_quarantined_with_offsets(home: Path, broker: Broker, cli) -> None:  # type: ignore[no-untyped-def]
    home.mkdir(parents=True, exist_ok=True)
    (home / "fleetscore.toml").write_text("[ingest]\nmax_body_bytes = 2048\n")
    producer = Producer(broker.bootstrap, "mixed", recent_us())
    raw = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(0, 20)
    raw.produce("mixed", b"\x00not json{{", key=b"dev-0/temp", partition=0)
    raw.produce("mixed", b"[" + b" " * 5000 + b"]", key=b"dev-0/temp", partition=0)
    raw.produce("mixed", b'{"ts": 1, "value": 1}', headers=[("content-type", b"text/plain")], partition=0)
    raw.produce("mixed", b"ts,value\n" + f"{iso(recent_us() + 5_000_000)},7\n".encode(),
                headers=[("content-type", b"text/csv"), ("device", b"csv-dev"), ("sensor", b"flow")], partition=0)
    assert raw.flush(30) == 0
    producer.produce(20, 20)
    proc = consumer(home, broker.bootstrap, "a", "mixed")
    assert_exactly_once_subset = producer.keys()
    wait_until(lambda: assert_exactly_once_subset <= set(key_set(landed(home))), 90, "good messages to land")
    assert proc.stop() == 0
    assert ("csv-dev", "flow") in {(d, s) for d, s, _ in key_set(landed(home))}
    from fleetscore.storage.fs import Storage
    from fleetscore.storage.quarantine import QuarantineStore

    rows = QuarantineStore(Storage(str(home / "data"))).recent(source="kafka:fleet:a").to_pylist()
    reasons = [r["reason"] for r in rows]
    assert any("topic=mixed partition=0 offset=" in r and "not valid JSON" in r for r in reasons), reasons
    assert any("topic=mixed partition=0 offset=" in r and "limit is 2,048" in r for r in reasons), reasons
    assert any("content-type 'text/plain'" in r for r in reasons), reasons
    status = cli("ingest", "status", "--home", str(home), "--json").json
    assert [s["source"] for s in status] == ["kafka:fleet:a"]
    assert status[0]["lag"] == 0 and status[0]["last_commit_at"] is not None
    assert {p["topic"] for p in status[0]["partitions"]} == {"mixed"}


def test_broker_unreachable_for_a_while(home: Path, broker: Broker) -> None:
    producer = Producer(broker.bootstrap, "readings", recent_us())
    producer.produce(0, 1000)
    proc = consumer(home, broker.bootstrap, "a")
    broker.pause()  # every connection stalls: requests time out, the client retries
    time.sleep(4)
    broker.resume()
    producer.produce(1000, 1000)
    assert_exactly_once(home, producer.keys())
    assert proc.stop() == 0


def test_secrets_stay_out_of_output_and_home(home: Path, broker: Broker) -> None:
    log = home.parent / "secret.log"
    proc = Proc(["ingest", "kafka", "--bootstrap", broker.bootstrap, "--topic", "readings", "--group", "g",
                 "--home", str(home), "--json"], env={"FLEETSCORE_KAFKA_CONNECTION_STRING": EVENT_HUBS}, log=log)
    STARTED.append(proc)
    wait_until(lambda: "kafka:" in log.read_text(errors="replace"), 60, "the client to report its failing connection")
    assert proc.stop() == 0
    out = proc.proc.stdout.read()  # type: ignore[union-attr]
    seen = log.read_bytes() + out + b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert b"sEcReTkEy" not in seen
