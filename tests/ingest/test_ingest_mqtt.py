"""MQTT ingest against a private mosquitto: subscriber SIGKILLed mid-stream, a broker restart, and a broker
with a password file (credentials from the environment or the URL; wrong ones end the subscriber, no password shown).

The publisher counts a message as sent once the broker acknowledged it (QoS 1). The subscriber
acknowledges to the broker only after the readings are fsynced, and the session is persistent, so
every sent reading must end up landed exactly once.
"""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import Proc, free_port, key_set, landed, listening, recent_us, terminate, wait_until

pytestmark = pytest.mark.backend

PER_MESSAGE = 10


class Broker:
    """``mosquitto -c conf`` on a free loopback port, with persistence (kept across restarts); with ``users``
    (name -> password) only those may connect."""

    def __init__(self, root: Path, users: dict[str, str] | None = None) -> None:
        if shutil.which("mosquitto") is None:
            pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
        self.port = free_port()
        self.conf = root / "mosquitto.conf"
        (root / "db").mkdir()
        access = "allow_anonymous true\n"
        if users:
            passwords = root / "passwords"
            for i, (name, password) in enumerate(users.items()):
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwords), name, password],
                               check=True, capture_output=True)
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n{access}user {getpass.getuser()}\npersistence true\n"
            f"persistence_location {root / 'db'}/\nmax_queued_messages 0\n"
        )
        self.log = root / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))

        wait_until(lambda: listening(self.port), 20, "mosquitto to listen")

    def stop(self) -> None:
        terminate(self.proc)


class Publisher:
    """A paho QoS 1 publisher; ``sent`` holds the messages the broker acknowledged."""

    def __init__(self, port: int, start_us: int, auth: tuple[str, str] | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.start_us = start_us
        self.sent: list[int] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{port}-{start_us}")
        if auth:
            self.client.username_pw_set(*auth)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def message(self, m: int) -> tuple[str, bytes]:
        ts = self.start_us + m * 1_000_000
        body = [{"ts": (ts + j * 50_000) / 1e6, "value": float(m + j)} for j in range(PER_MESSAGE)]
        return f"fleet/dev-{m % 4}/temp", json.dumps(body).encode()

    def publish(self, first: int, count: int) -> None:
        infos = []
        for m in range(first, first + count):
            topic, payload = self.message(m)
            infos.append((m, self.client.publish(topic, payload, qos=1)))
        for m, info in infos:
            info.wait_for_publish(20)
            assert info.is_published()
            self.sent.append(m)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def keys(self) -> set[tuple[str, str, int]]:
        return {(f"dev-{m % 4}", "temp", self.start_us + m * 1_000_000 + j * 50_000)
                for m in self.sent for j in range(PER_MESSAGE)}


def subscriber(home: Path, port: int, url: str | None = None, env: dict[str, str] | None = None) -> Proc:
    log = home.parent / "subscriber.log"
    proc = Proc(["ingest", "mqtt", "--broker", url or f"mqtt://127.0.0.1:{port}", "--home", str(home),
                 "--compact-interval", "1s", "--json"], env=env, log=log)
    size = log.stat().st_size if log.exists() else 0
    wait_until(lambda: "subscribed" in log.read_text(errors="replace")[size:] or proc.proc.poll() is not None,
               60, "the subscriber to subscribe")
    assert proc.proc.poll() is None, proc.stderr_text()[-2000:]
    return proc


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


def wait_landed(home: Path, expected: set) -> None:  # type: ignore[type-arg]
    wait_until(lambda: expected <= set(key_set(landed(home))), 90, "every sent reading to be landed")


def test_subscriber_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, broker: Broker) -> None:
    home = tmp_path / "home"
    sub = subscriber(home, broker.port)
    pub = Publisher(broker.port, recent_us())
    try:
        pub.publish(0, 300)
        sub.kill()  # messages in flight are neither acknowledged nor lost: the broker keeps them
        pub.publish(300, 200)  # queued by the broker for the persistent session
        sub = subscriber(home, broker.port)
        pub.publish(500, 200)
        wait_landed(home, pub.keys())
    finally:
        pub.close()
        sub.stop()
    summary = json.loads(sub.proc.stdout.read())  # type: ignore[union-attr]
    assert summary["messages_total"] >= 200
    counts = key_set(landed(home))
    assert max(counts.values()) == 1 and set(counts) == pub.keys()


def test_broker_restart_is_survived(tmp_path: Path, broker: Broker) -> None:
    home = tmp_path / "home"
    sub = subscriber(home, broker.port)
    pub = Publisher(broker.port, recent_us())
    try:
        pub.publish(0, 100)
        pub.close()
        broker.stop()
        time.sleep(0.5)
        broker.start()
        pub2 = Publisher(broker.port, pub.start_us)
        pub2.sent = pub.sent
        pub2.publish(100, 100)
        pub2.close()
        wait_landed(home, pub2.keys())
    finally:
        sub.stop()
    counts = key_set(landed(home))
    assert max(counts.values()) == 1 and set(counts) == pub2.keys()


USER, PASSWORD = "ingest", "pw-Xq7-secret"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path, users={USER: PASSWORD, "publisher": "pub-pw"})
    yield b
    b.stop()


def test_credentials_from_the_environment_or_the_url_ingest(tmp_path: Path, private_broker: Broker) -> None:
    home = tmp_path / "home"
    pub = Publisher(private_broker.port, recent_us(), auth=("publisher", "pub-pw"))
    try:
        sub = subscriber(home, private_broker.port,
                         env={"FLEETSCORE_MQTT_USERNAME": USER, "FLEETSCORE_MQTT_PASSWORD": PASSWORD})
        pub.publish(0, 20)
        wait_landed(home, pub.keys())
        assert sub.stop() == 0
        sub = subscriber(home, private_broker.port, url=f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{private_broker.port}")
        pub.publish(20, 20)
        wait_landed(home, pub.keys())
        assert sub.stop() == 0
    finally:
        pub.close()
    assert PASSWORD not in sub.stderr_text()
    counts = key_set(landed(home))
    assert max(counts.values()) == 1 and set(counts) == pub.keys()


def ended(args: list[str], home: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``fleetscore ingest mqtt ARGS --json`` to its end: (exit code, stdout, stderr)."""
    proc = Proc(["ingest", "mqtt", *args, "--home", str(home), "--json"], env=env, log=home.parent / "ended.log")
    rc = proc.proc.wait(60)
    return rc, proc.proc.stdout.read().decode(), proc.stderr_text()  # type: ignore[union-attr]


def test_wrong_credentials_end_clearly_without_the_password(tmp_path: Path, private_broker: Broker) -> None:
    home, url = tmp_path / "home", f"127.0.0.1:{private_broker.port}"
    wrong = "wrong-pw-Zz9"
    cases = [
        (["--broker", f"mqtt://{USER}:{wrong}@{url}"], None, "refused the connection"),
        (["--broker", f"mqtt://{url}"], {"FLEETSCORE_MQTT_USERNAME": USER, "FLEETSCORE_MQTT_PASSWORD": wrong},
         "refused the connection"),
        (["--broker", f"mqtt://{url}"], None, "refused the connection"),  # anonymous
        (["--broker", f"mqtt://{USER}:{wrong}@127.0.0.1:99999"], None, "--broker"),  # a bad URL with a password
        (["--broker", f"mqtt://{USER}:{wrong}@{url}"], {"FLEETSCORE_MQTT_USERNAME": USER}, "not both"),
    ]
    for args, env, needle in cases:
        rc, out, err = ended(args, home, env)
        assert rc == 2, (args, out, err)
        assert needle in json.loads(out)["error"], (args, out)
        assert wrong not in out + err and "Traceback" not in err, (args, out, err)
