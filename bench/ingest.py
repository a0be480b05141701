"""Ingest throughput with durability on: HTTP (Arrow, JSON, CSV bodies of 10k readings), MQTT (1 and 100
readings per message), and the stream window engine; client and server on this machine.

    python bench/ingest.py [--source all|http|mqtt|kafka|nats] [--seconds 5] [--connections 4] [--messages 20000]

HTTP: a fresh home, ``fleetscore serve`` (compaction off during the run), each request sent once to
warm the server up, then a lean load generator (raw sockets, pre-built requests, several keep-alive
connections in separate processes) sending for ``--seconds``. Reports readings/s end to end and the
server's own CPU-seconds per million readings (from /proc, so it does not depend on the client's
cost). Every answer is checked to be 202.

MQTT: a private mosquitto, ``fleetscore ingest mqtt``, and a raw-socket QoS 1 publisher (flow
controlled on the broker's PUBACKs); the clock stops when the subscriber's log holds every reading
(written and fsynced: the subscriber acknowledges only then). Reports readings/s, messages/s and the
subscriber's CPU-seconds per million readings.

Kafka: librdkafka's Kafka-protocol broker (``tests/ingest/kafka_broker.py``), ``fleetscore ingest kafka``
with its member assigned, then a producer process sends every message; the clock stops when the
consumer's log holds every reading (durable: offsets are committed only then). 100 readings per
message as Arrow IPC and 1 per message as JSON; beside them the broker's own limit: a plain
confluent-kafka consumer that does nothing with the same messages. NATS: a private ``nats-server
-js``, ``fleetscore ingest nats --create-stream``, a publisher process, 100 readings per message.

Window engine: :func:`fleetscore.core.stream.advance` over batches of 1M readings (1,000 keys),
readings/s. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

CLI = [sys.executable, "-c", "from fleetscore.cli.main import main; main()"]
BATCH = 10_000
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def readings(start_us: int, n: int, seed: int) -> pa.Table:
    keys = 1000
    i = np.arange(n)
    return pa.table({
        "ts": pa.array(start_us + (i // keys + seed * n // keys) * 1_000_000).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array([f"dev-{k // 4:04d}" for k in i % keys]),
        "sensor": pa.array([f"s{k % 4}" for k in i % keys]),
        "value": np.random.default_rng(seed).normal(20, 2, n),
    })


def body(table: pa.Table, fmt: str) -> tuple[bytes, str]:
    if fmt == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream"
    rows = [{"ts": r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ"), "device": r["device"], "sensor": r["sensor"],
             "value": round(r["value"], 4)} for r in table.to_pylist()]
    if fmt == "json":
        return json.dumps(rows).encode(), "application/json"
    lines = ["ts,device,sensor,value"] + [f"{r['ts']},{r['device']},{r['sensor']},{r['value']}" for r in rows]
    return ("\n".join(lines) + "\n").encode(), "text/csv"


# --- HTTP load generator (runs in its own process) ---------------------------------------------

def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exchange(sock: socket.socket, request: bytes, buf: bytes) -> tuple[bool, bytes]:
    """Send one request, read its response (headers, then Content-Length bytes): (answered 202, bytes left over)."""
    sock.sendall(request)
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            total = head_end + 4 + length
            if len(buf) >= total:
                return head.startswith(b"http/1.1 202"), buf[total:]
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("server closed the connection")
        buf += chunk


def _http_client(port: int, requests: list[bytes], seconds: float, out: mp.Queue[tuple[int, int]]) -> None:
    sock = _connect(port)
    done = bad = 0
    deadline = time.monotonic() + seconds
    buf = b""
    while time.monotonic() < deadline:
        ok, buf = _exchange(sock, requests[done % len(requests)], buf)
        bad += not ok
        done += 1
    sock.close()
    out.put((done, bad))


def _warm_up(port: int, requests: list[bytes]) -> None:
    """Send each request once before the clock starts, so one-time costs of the server's first batches
    (pyarrow imports pandas on its first conversion, over a second of CPU) are not counted as ingest."""
    with _connect(port) as sock:
        buf = b""
        for request in requests:
            ok, buf = _exchange(sock, request, buf)
            if not ok:
                raise SystemExit("a warm-up request was not answered 202")


def bench_http(fmt: str, seconds: float, connections: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="fleetscore-bench-")) / "home"
    port = free_port()
    server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--home", str(home), "--compact-interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        start_us = time.time_ns() // 1000 - 3_600_000_000
        bodies = [body(readings(start_us, BATCH, seed), fmt) for seed in range(4)]
        requests = [(f"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n").encode() + data for data, ctype in bodies]
        _warm_up(port, requests)
        out: mp.Queue = mp.Queue()
        clients = [mp.Process(target=_http_client, args=(port, requests, seconds, out)) for _ in range(connections)]
        cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
        for c in clients:
            c.start()
        results = [out.get() for _ in clients]
        wall, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
        for c in clients:
            c.join()
        done, bad = sum(r[0] for r in results), sum(r[1] for r in results)
        if bad:
            raise SystemExit(f"{bad} of {done} {fmt} requests were not answered 202")
        n = done * BATCH
        return {"path": f"HTTP {fmt}, 10k/request", "readings_s": n / wall, "cpu_per_m": cpu / n * 1e6,
                "detail": f"{done} requests, {connections} connections, {wall:.1f}s"}
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
        shutil.rmtree(home.parent, ignore_errors=True)


# --- MQTT ----------------------------------------------------------------------------------------

def _mqtt_str(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _remaining(len(body)) + body


def publish_raw(port: int, messages: list[tuple[str, bytes]], window: int = 2000) -> None:
    """QoS 1 PUBLISH of every message over one connection, at most ``window`` unacknowledged."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_packet(0x10, _mqtt_str("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + _mqtt_str("bench-pub")))
    if sock.recv(4)[:1] != b"\x20":
        raise SystemExit("broker refused the connection")
    inflight, acked, buf, i = 0, 0, b"", 0
    while acked < len(messages):
        chunk = []
        while i < len(messages) and inflight < window and len(chunk) < 256:
            topic, payload = messages[i]
            mid = i % 65535 + 1
            chunk.append(_packet(0x32, _mqtt_str(topic) + mid.to_bytes(2, "big") + payload))
            i, inflight = i + 1, inflight + 1
        if chunk:
            sock.sendall(b"".join(chunk))
        data = sock.recv(65536) if inflight >= window or i >= len(messages) or not chunk else b""
        buf += data
        got = len(buf) // 4  # PUBACK: 0x40 0x02 mid mid
        buf = buf[got * 4:]
        acked += got
        inflight -= got
    sock.close()


def logged_readings(log_dir: Path, seen: dict[str, int]) -> int:
    """Readings in the log records added since the last call (``seen``: bytes read per segment)."""
    from fleetscore.ingest.log import read_frames
    from fleetscore.ingest.records import decode

    n = 0
    for path in sorted(log_dir.glob("seg-*.log")):
        frames, end = read_frames(path, seen.get(path.name, 0))
        n += sum(decode(f.payload).good.num_rows for f in frames)
        seen[path.name] = end
    return n


def bench_mqtt(per_message: int, messages: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = root / "home"
    sub = None
    try:
        wait_port(port)
        sub = subprocess.Popen([*CLI, "ingest", "mqtt", "--broker", f"mqtt://127.0.0.1:{port}", "--home", str(home),
                                "--client-id", "bench-sub", "--compact-interval", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while "subscribed" not in (sub.stderr.readline() if sub.stderr else "subscribed"):
            pass
        start_s = time.time() - 3600
        msgs = []
        for m in range(messages):
            base = start_s + m * per_message * 0.001
            payload = json.dumps([{"ts": round(base + j * 0.001, 3), "value": float(j)} for j in range(per_message)])
            msgs.append((f"fleet/dev-{m % 250:04d}/s{m % 4}", payload.encode()))
        total = messages * per_message
        cpu0, t0 = cpu_seconds(sub.pid), time.perf_counter()
        publish_raw(port, msgs)
        _wait_logged(home / "ingest" / "log" / "mqtt", total)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(sub.pid) - cpu0
        return {"path": f"MQTT {per_message}/message", "readings_s": total / wall, "cpu_per_m": cpu / total * 1e6,
                "detail": f"{messages} messages, {messages / wall:,.0f} messages/s, {wall:.1f}s"}
    finally:
        _end(root, *(sub, broker))


def _kafka_producer(bootstrap: str, topic: str, per_message: int, messages: int, fmt: str, ready: Any = None) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 2_000_000})
    payloads = _payloads(per_message, messages, fmt, "/")
    if ready is not None:
        ready.set()  # the clock starts once the messages are built
    for m, (key, value) in enumerate(payloads):
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        if m % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0


def _payloads(per_message: int, messages: int, fmt: str, sep: str) -> list[tuple[str, bytes]]:
    """``(device<sep>sensor, value)`` per message: JSON arrays or Arrow IPC streams of ts/value."""
    start_us = (time.time_ns() // 1000) - 3_600_000_000
    out = []
    for m in range(messages):
        base = start_us + m * per_message * 1000
        key = f"dev-{m % 250:04d}{sep}s{m % 4}"
        if fmt == "arrow":
            table = pa.table({"ts": pa.array(base + np.arange(per_message) * 1000, pa.timestamp("us", "UTC")),
                              "value": np.arange(per_message, dtype=np.float64)})
            out.append((key, body(table, "arrow")[0]))
        else:
            items = [{"ts": (base + j * 1000) / 1e6, "value": float(j)} for j in range(per_message)]
            out.append((key, json.dumps(items[0] if per_message == 1 else items).encode()))
    return out


def _end(root: Path, *procs: subprocess.Popen[Any] | None) -> None:
    """Kill a bench's helper processes and remove its scratch folder."""
    for proc in procs:
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    shutil.rmtree(root, ignore_errors=True)


def _wait_logged(log_dir: Path, total: int) -> None:
    seen: dict[str, int] = {}
    got = 0
    while got < total:
        got += logged_readings(log_dir, seen)
        if got < total:
            time.sleep(0.02)


def bench_kafka(per_message: int, messages: int, fmt: str) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    broker = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "tests/ingest/kafka_broker.py")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    home, sub = root / "home", None
    try:
        bootstrap = broker.stdout.readline().strip() if broker.stdout else ""
        warm = mp.Process(target=_kafka_producer, args=(bootstrap, "bench", 1, 1, fmt))  # creates the topic
        warm.start()
        warm.join()
        sub = subprocess.Popen([*CLI, "ingest", "kafka", "--bootstrap", bootstrap, "--topic", "bench", "--group", "bench",
                                "--member", "m", "--home", str(home), "--compact-interval", "0", "--format", fmt],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while "assigned" not in (sub.stderr.readline() if sub.stderr else "assigned"):
            pass
        total = messages * per_message + 1
        ready = mp.Event()
        producer = mp.Process(target=_kafka_producer, args=(bootstrap, "bench", per_message, messages, fmt, ready))
        producer.start()
        ready.wait()
        cpu0, t0 = cpu_seconds(sub.pid), time.perf_counter()
        _wait_logged(home / "ingest" / "log" / "kafka:bench:m", total)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(sub.pid) - cpu0
        producer.join()
        rows = [{"path": f"Kafka {per_message}/message ({fmt})", "readings_s": total / wall, "cpu_per_m": cpu / total * 1e6,
                 "detail": f"{messages} messages, {messages / wall:,.0f} messages/s, {wall:.1f}s, producer in its own process"}]
        rows.append(_plain_consumer(bootstrap, messages + 1, per_message))
        return rows
    finally:
        _end(root, *(sub, broker))


def _plain_consumer(bootstrap: str, messages: int, per_message: int) -> dict:
    """The broker's limit: a consumer that only counts the messages (timed from its first message)."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "plain", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe(["bench"])
    n, t0, last = 0, None, time.perf_counter()
    deadline = time.perf_counter() + 120
    while n < messages and time.perf_counter() < deadline:
        got = consumer.consume(1000, 0.5)
        if got:
            t0 = t0 or time.perf_counter()
            n += len(got)
            last = time.perf_counter()
    consumer.close()
    wall = max(last - (t0 or last), 1e-9)
    return {"path": f"  broker limit: plain consumer, {per_message}/message", "readings_s": n * per_message / wall,
            "cpu_per_m": float("nan"), "detail": f"{n} messages, {n / wall:,.0f} messages/s, does nothing with them"}


def _nats_publisher(port: int, per_message: int, messages: int, ready: Any) -> None:
    import asyncio

    import nats

    payloads = _payloads(per_message, messages, "json", ".")

    async def run() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        pending = []
        ready.set()
        for key, value in payloads:
            pending.append(js.publish(f"fleet.{key}", value))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        await nc.close()

    asyncio.run(run())


def bench_nats(per_message: int, messages: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    port = free_port()
    server = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(root / "js")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home, sub = root / "home", None
    try:
        wait_port(port)
        sub = subprocess.Popen([*CLI, "ingest", "nats", "--server", f"nats://127.0.0.1:{port}", "--stream", "BENCH",
                                "--subject", "fleet.>", "--durable", "bench", "--create-stream", "--member", "m",
                                "--home", str(home), "--compact-interval", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while "consuming" not in (sub.stderr.readline() if sub.stderr else "consuming"):
            pass
        total = messages * per_message
        ready = mp.Event()
        publisher = mp.Process(target=_nats_publisher, args=(port, per_message, messages, ready))
        publisher.start()
        ready.wait()
        cpu0, t0 = cpu_seconds(sub.pid), time.perf_counter()
        _wait_logged(home / "ingest" / "log" / "nats:bench:m", total)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(sub.pid) - cpu0
        publisher.join()
        return {"path": f"NATS JetStream {per_message}/message", "readings_s": total / wall, "cpu_per_m": cpu / total * 1e6,
                "detail": f"{messages} messages, {messages / wall:,.0f} messages/s, {wall:.1f}s, publisher in its own process"}
    finally:
        _end(root, *(sub, server))


def bench_windows(batches: int = 10, size: int = 1_000_000) -> dict:
    from fleetscore.core.stream import advance, new_state

    start_us = time.time_ns() // 1000
    tables = [readings(start_us, size, seed) for seed in range(batches)]
    state = advance(new_state(60, 300), readings(start_us - 600_000_000, size, 0)).state  # warm-up, not timed
    t0 = time.perf_counter()
    for table in tables:
        state = advance(state, table).state
    wall = time.perf_counter() - t0
    n = batches * size
    return {"path": "window engine, 1M/batch", "readings_s": n / wall, "cpu_per_m": wall / n * 1e6,
            "detail": f"{n:,} readings, 1,000 keys, 1 min windows"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--skip-mqtt", action="store_true")
    parser.add_argument("--source", choices=["all", "http", "mqtt", "kafka", "nats"], default="all")
    args = parser.parse_args()
    want = {"http", "mqtt", "kafka", "nats"} if args.source == "all" else {args.source}
    if args.skip_mqtt:
        want.discard("mqtt")
    rows = [bench_http(fmt, args.seconds, args.connections) for fmt in ("arrow", "json", "csv")] if "http" in want else []
    if "mqtt" in want:
        rows.append(bench_mqtt(1, args.messages))
        rows.append(bench_mqtt(100, max(args.messages // 3, 100)))
    if "kafka" in want:
        rows += bench_kafka(100, max(args.messages // 2, 100), "arrow")
        rows += bench_kafka(1, args.messages * 5, "json")
    if "nats" in want:
        rows.append(bench_nats(100, max(args.messages // 2, 100)))
    if args.source == "all":
        rows.append(bench_windows())
    print(f"cores: {os.cpu_count()}, durability: fsync per group commit\n")
    print("| path | readings/s | server CPU s per 1M readings | detail |")
    print("|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['path']} | {r['readings_s']:,.0f} | {r['cpu_per_m']:.2f} | {r['detail']} |")


if __name__ == "__main__":
    main()
