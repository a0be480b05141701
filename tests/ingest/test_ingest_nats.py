"""NATS JetStream ingest against a private nats-server: consumer SIGKILLed under load, a server
restart, poison and oversized messages, two members of one durable, and credentials kept secret.

The publisher counts a message as sent once JetStream acknowledged it (the stream stored it). The
consumer acknowledges a message only after its readings are fsynced in the durable log, so every
sent reading must end up landed exactly once (redeliveries are dropped by compaction's dedup).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ingest_support import CLI, Proc, free_port, key_set, landed, listening, recent_us, terminate, wait_until

pytestmark = pytest.mark.backend

PER_MESSAGE = 10
#: Event time of message m is start + m·MESSAGE_STEP_US (readings READING_STEP_US apart): it advances slower
#: than the wall clock even under load, so no reading is more than max_future ahead, and a redelivered message
#: is never older than the watermark (allowed_lateness) and would be quarantined as late instead of deduplicated.
MESSAGE_STEP_US = 1_000
READING_STEP_US = 100
STREAM = "READINGS"
DURABLE = "fleetscore"
SECRET = "SECRETVALUE123"


class NatsServer:
    """``nats-server -js`` on a free loopback port with its own store dir (kept across restarts)."""

    def __init__(self, root: Path, user: str | None = None, password: str | None = None) -> None:
        if shutil.which("nats-server") is None:
            pytest.skip("nats-server is not installed (Debian package nats-server)")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = root / "js"
        self.log = root / "nats-server.log"
        self.auth = ["--user", user, "--pass", password] if user and password else []
        self.proc: subprocess.Popen | None = None  # type: ignore[type-arg]
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
                                      str(self.store), *self.auth], stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            return listening(self.port)

        wait_until(up, 20, "nats-server to listen")

    def stop(self) -> None:
        terminate(self.proc)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path)
    yield s
    s.stop()


class Publisher:
    """JetStream publisher on its own event loop thread; ``sent`` holds the messages the stream acked."""

    def __init__(self, url: str, start_us: int, user: str | None = None, password: str | None = None) -> None:
        self.url = url
        self.start_us = start_us
        self.auth = {"user": user, "password": password} if user else {}
        self.sent: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc: Any = None
        self._call(self._connect())

    def _call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> None:
        import nats

        self.nc = await nats.connect(self.url, allow_reconnect=True, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2, **self.auth)  # type: ignore[arg-type]

    def message(self, m: int) -> tuple[str, bytes]:
        ts = self.start_us + m * MESSAGE_STEP_US
        body = [{"ts": (ts + j * READING_STEP_US) / 1e6, "value": float(m + j)} for j in range(PER_MESSAGE)]
        return f"fleet.dev-{m % 4}.temp", json.dumps(body).encode()

    async def _publish(self, items: list[tuple[int, str, bytes]], headers: dict[str, str] | None) -> list[int]:
        js = self.nc.jetstream(timeout=10)
        done: list[int] = []
        for lo in range(0, len(items), 200):
            chunk = items[lo:lo + 200]
            acks = await asyncio.gather(*(js.publish(subject, payload, headers=headers) for _, subject, payload in chunk))
            assert all(ack.stream == STREAM for ack in acks)
            done.extend(m for m, _, _ in chunk)
        return done

    def publish(self, first: int, count: int) -> None:
        """Messages ``first .. first+count-1`` (10 readings each); returns once the stream stored them."""
        items = [(m, *self.message(m)) for m in range(first, first + count)]
        self.sent.extend(self._call(self._publish(items, None)))

    def publish_raw(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self._call(self._publish([(-1, subject, payload)], headers))

    def close(self) -> None:
        if self.nc is not None:
            self._call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def keys(self) -> set[tuple[str, str, int]]:
        return {(f"dev-{m % 4}", "temp", self.start_us + m * MESSAGE_STEP_US + j * READING_STEP_US)
                for m in self.sent for j in range(PER_MESSAGE)}


def consumer(home: Path, url: str, member: str = "m1", env: dict[str, str] | None = None) -> Proc:
    """``fleetscore ingest nats`` as a subprocess, returned once it consumes the durable."""
    log = home.parent / f"consumer-{member}.log"
    proc = Proc(["ingest", "nats", "--server", url, "--stream", STREAM, "--subject", "fleet.>", "--durable", DURABLE,
                 "--create-stream", "--ack-wait", "2s", "--member", member, "--home", str(home),
                 "--compact-interval", "1s", "--json"], env=env, log=log)
    size = log.stat().st_size if log.exists() else 0
    wait_until(lambda: "as durable" in log.read_text(errors="replace")[size:] or proc.proc.poll() is not None,
               60, "the consumer to subscribe")
    assert proc.proc.poll() is None, proc.stderr_text()[-2000:]
    return proc


def status(home: Path, member: str) -> Any:
    from fleetscore.ingest.checkpoint import IngestPaths
    from fleetscore.ingest.streams import read_statuses

    for s in read_statuses(IngestPaths.of_home(home)):
        if s.source == f"nats:{DURABLE}:{member}":
            return s
    return None


def consuming(home: Path, member: str, proc: Proc) -> bool:
    """The running process has written a group: its status file names its pid and a last message."""
    s = status(home, member)
    return s is not None and s.pid == proc.proc.pid and s.last_message_at_us is not None


def summary(proc: Proc) -> dict[str, Any]:
    assert proc.proc.returncode == 0, proc.stderr_text()[-2000:]
    return json.loads(proc.proc.stdout.read())  # type: ignore[union-attr]


def compact(home: Path) -> None:
    done = subprocess.run([*CLI, "compact", "--home", str(home), "--json"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]


def wait_landed(home: Path, expected: set) -> None:  # type: ignore[type-arg]
    wait_until(lambda: expected <= set(key_set(landed(home))), 90, "every sent reading to be landed")


def assert_exactly_once(home: Path, expected: set) -> None:  # type: ignore[type-arg]
    counts = key_set(landed(home))
    duplicated = [k for k, n in counts.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} readings landed more than once, e.g. {duplicated[:3]}"
    assert set(counts) == expected, (len(set(counts) - expected), len(expected - set(counts)))


class Feeder(threading.Thread):
    """Publishes chunks of messages until stopped: the load under which the consumer is killed."""

    def __init__(self, pub: Publisher, first: int, chunk: int = 100) -> None:
        super().__init__(daemon=True)
        self.pub, self.next_m, self.chunk = pub, first, chunk
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.pub.publish(self.next_m, self.chunk)
                self.next_m += self.chunk
                self.halt.wait(0.03)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc

    def finish(self) -> int:
        self.halt.set()
        self.join(60)
        assert self.error is None, self.error
        return self.next_m


def test_consumer_killed_under_load_loses_and_duplicates_nothing(tmp_path: Path, server: NatsServer) -> None:
    home = tmp_path / "home"
    pub = Publisher(server.url, recent_us())
    rng = random.Random(7)
    sub = consumer(home, server.url)
    feeder = Feeder(pub, 0)
    feeder.start()
    try:
        for _ in range(3):
            wait_until(lambda: consuming(home, "m1", sub), 60, "the consumer to write a group")  # noqa: B023
            before = len(pub.sent)
            time.sleep(rng.uniform(0.1, 0.5))
            sub.kill()  # groups fetched, written or being acknowledged: none is lost, redeliveries are dropped
            assert len(pub.sent) > before, "the publisher was not publishing when the consumer was killed"
            sub = consumer(home, server.url)
        last = feeder.finish()
        pub.publish(last, 100)
        wait_landed(home, pub.keys())
    finally:
        feeder.halt.set()
        pub.close()
        sub.stop()
    stats = summary(sub)
    assert stats["messages_total"] > 0 and stats["acked_total"] == stats["messages_total"]
    compact(home)
    assert len(pub.sent) == last + 100
    assert_exactly_once(home, pub.keys())


def test_server_restart_is_survived(tmp_path: Path, server: NatsServer) -> None:
    home = tmp_path / "home"
    sub = consumer(home, server.url)
    pub = Publisher(server.url, recent_us())
    try:
        pub.publish(0, 100)
        wait_until(lambda: consuming(home, "m1", sub), 60, "the consumer to write a group")
        pub.close()
        server.stop()
        time.sleep(0.5)
        server.start()  # same port and store dir: the stream and the durable are still there
        pub2 = Publisher(server.url, pub.start_us)
        pub2.sent = pub.sent
        pub2.publish(100, 100)
        pub2.close()
        wait_landed(home, pub2.keys())
    finally:
        sub.stop()
    stats = summary(sub)
    assert stats["reconnects_total"] >= 1
    assert sub.proc.poll() == 0
    compact(home)
    assert_exactly_once(home, pub2.keys())


def test_poison_and_oversized_messages_are_quarantined_and_the_rest_lands(tmp_path: Path, server: NatsServer) -> None:
    from fleetscore.api import Fleet

    home = tmp_path / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text("[ingest]\nmax_body_bytes = 2048\n")
    pub = Publisher(server.url, recent_us())
    sub = consumer(home, server.url)
    try:
        pub.publish(0, 5)  # stream seq 1..5
        pub.publish_raw("fleet.dev-9.temp", b"this is {not json")  # seq 6
        big = json.dumps([{"ts": pub.start_us / 1e6 + i, "value": 1.0} for i in range(200)]).encode()
        assert len(big) > 2048
        pub.publish_raw("fleet.dev-9.temp", big)  # seq 7
        pub.publish_raw("fleet.x", json.dumps({"ts": pub.start_us / 1e6, "value": 1.0,
                                                "device": "dev-h", "sensor": "hdr"}).encode())  # seq 8: own ids
        pub.publish_raw("fleet.y", json.dumps({"ts": pub.start_us / 1e6, "value": 2.0}).encode(),
                        headers={"Device": "dev-h", "Sensor": "viaheader"})  # seq 9: ids from the headers
        pub.publish(5, 5)  # seq 10..14: good messages after the bad ones still land
        expected = pub.keys() | {("dev-h", "hdr", pub.start_us), ("dev-h", "viaheader", pub.start_us)}
        wait_landed(home, expected)
    finally:
        pub.close()
        sub.stop()
    stats = summary(sub)
    assert stats["messages_total"] == 14 and stats["acked_total"] == 14  # the bad ones are acked too
    compact(home)
    assert_exactly_once(home, expected)
    fleet = Fleet.open(home)
    try:
        reasons = fleet.quarantine(100_000).column("reason").to_pylist()
    finally:
        fleet.close()
    poison = [r for r in reasons if f"stream={STREAM} seq=6 " in r]
    oversized = [r for r in reasons if f"stream={STREAM} seq=7 " in r]
    assert len(poison) == 1 and "not valid JSON" in poison[0], reasons
    assert len(oversized) == 1 and "max_body_bytes" in oversized[0], reasons
    assert len(reasons) == 2, reasons


def test_two_members_share_one_durable_exactly_once(tmp_path: Path, server: NatsServer) -> None:
    home = tmp_path / "home"
    pub = Publisher(server.url, recent_us())
    a = consumer(home, server.url, "a")
    b = consumer(home, server.url, "b")
    try:
        rounds = 0
        while not (consuming(home, "a", a) and consuming(home, "b", b)):
            assert rounds < 60, "one member never got a message"
            pub.publish(rounds * 20, 20)
            rounds += 1
            time.sleep(0.3)
        pub.publish(rounds * 20, 200)
        wait_landed(home, pub.keys())
    finally:
        pub.close()
        a.stop()
        b.stop()
    sa, sb = summary(a), summary(b)
    assert sa["messages_total"] > 0 and sb["messages_total"] > 0
    assert sa["acked_total"] + sb["acked_total"] >= len(pub.sent)
    compact(home)
    assert_exactly_once(home, pub.keys())


def test_credentials_come_from_the_environment_and_never_leak(tmp_path: Path) -> None:
    srv = NatsServer(tmp_path, user="u", password=SECRET)
    home = tmp_path / "home"
    try:
        env = {"FLEETSCORE_NATS_USER": "u", "FLEETSCORE_NATS_PASSWORD": SECRET}
        sub = consumer(home, srv.url, env=env)
        pub = Publisher(srv.url, recent_us(), user="u", password=SECRET)
        try:
            pub.publish(0, 50)
            wait_landed(home, pub.keys())
        finally:
            pub.close()
            sub.stop()
        out = sub.proc.stdout.read()  # type: ignore[union-attr]
        assert sub.proc.returncode == 0 and json.loads(out)["messages_total"] == 50
        compact(home)
        assert_exactly_once(home, pub.keys())

        wrong = subprocess.run(
            [*CLI, "ingest", "nats", "--server", srv.url, "--stream", STREAM, "--durable", DURABLE, "--member", "m2",
             "--home", str(home)], capture_output=True, timeout=120,
            env={**os.environ, "FLEETSCORE_NATS_USER": "u", "FLEETSCORE_NATS_PASSWORD": "wrong-password-42"})
        anonymous = subprocess.run(
            [*CLI, "ingest", "nats", "--server", srv.url, "--stream", STREAM, "--durable", DURABLE, "--member", "m3",
             "--home", str(home), "--json"], capture_output=True, timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("FLEETSCORE_NATS")})
    finally:
        srv.stop()
    for failed in (wrong, anonymous):
        text = (failed.stdout + failed.stderr).decode(errors="replace")
        assert failed.returncode != 0, text
        assert "Traceback" not in text and "refused the credentials" in text, text
        assert "wrong-password-42" not in text
    leaks = [p for p in home.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks
    for text in (out, sub.stderr_text().encode(), wrong.stdout, wrong.stderr, anonymous.stdout, anonymous.stderr):
        assert SECRET.encode() not in text


def test_bad_flags_are_input_errors(tmp_path: Path) -> None:
    from fleetscore.config.streams import NatsSettings
    from fleetscore.errors import ConfigError, InputError
    from fleetscore.ingest.nats import NatsTarget

    def build(**kw: Any) -> NatsTarget:
        args: dict[str, Any] = {"server": "nats://127.0.0.1:4222", "stream": "S", "subject": "fleet.>", "durable": "d",
                                "ack_wait_s": 30, "credentials": NatsSettings()}
        return NatsTarget.build(**(args | kw))

    assert build().server == "nats://127.0.0.1:4222" and build(server="nats://h").server == "nats://h:4222"
    assert build(server="tls://h:1").tls is not None
    for bad in ("http://h:1", "nats://", "h:4222", "nats://h:1/path", "nats://h:99999"):
        with pytest.raises(InputError):
            build(server=bad)
    with pytest.raises(InputError) as info:
        build(server=f"nats://u:{SECRET}@h:4222")
    assert SECRET not in str(info.value)
    for name in ("a.b", "", "a b", "a*"):
        with pytest.raises(InputError):
            build(stream=name)
        with pytest.raises(InputError):
            build(durable=name)
    for subject in ("", "a..b", "a.>.b", "a b", "fle*t"):
        with pytest.raises(InputError):
            build(subject=subject)
    with pytest.raises(ConfigError):
        build(credentials=NatsSettings(user="u"))
    with pytest.raises(ConfigError):
        build(credentials=NatsSettings(password=SECRET))
    with pytest.raises(ConfigError):
        build(credentials=NatsSettings(creds=str(tmp_path / "missing.creds")))
    with pytest.raises(InputError):
        build(ca_file=str(tmp_path / "missing.pem"))
