"""SIGKILL at the worst moments: the server during a stream of batches, and a compaction mid-way.

After every crash and restart, each acknowledged reading is landed exactly once, every rejected
row is quarantined exactly once, and every landed reading is counted in exactly one stream window.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from ingest_support import Proc, Server, arrow_body, key_set, landed, readings, recent_us, wait_until

pytestmark = pytest.mark.backend

ROWS = 500  # per batch: 10 keys × 50 readings 20 ms apart, one second of data per batch


def batch(start: int, b: int) -> pa.Table:
    return readings(start + b * 1_000_000, ROWS, step_us=20_000, seed=b)


class Client:
    """Threads sending numbered Arrow batches with Idempotency-Keys; knows which were acknowledged."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.acked: set[int] = set()
        self.unknown: set[int] = set()  # sent, but the answer never came
        self.next = 0
        self.lock = threading.Lock()

    def send(self, url: str, b: int) -> bool:
        try:
            r = httpx.post(f"{url}/v1/readings", content=arrow_body(batch(self.start, b)), timeout=30,
                           headers={"Content-Type": "application/vnd.apache.arrow.stream", "Idempotency-Key": f"b-{b}"})
        except httpx.TransportError:
            with self.lock:
                self.unknown.add(b)
            return False
        assert r.status_code == 202 and r.json()["accepted"] == ROWS, r.text
        with self.lock:
            self.acked.add(b)
            self.unknown.discard(b)
        return True

    def stream(self, url: str, threads: int = 3) -> list[threading.Thread]:
        def run() -> None:
            while True:
                with self.lock:
                    b, self.next = self.next, self.next + 1
                if b > 10_000 or not self.send(url, b):
                    return

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for w in workers:
            w.start()
        return workers

    def crash_after(self, server: Server, acked: int) -> None:
        workers = self.stream(server.url)
        wait_until(lambda: len(self.acked) >= acked, 60, f"{acked} acknowledged batches")
        server.kill()
        for w in workers:
            w.join(60)

    def resend_unknown(self, url: str) -> None:
        for b in sorted(self.unknown):
            assert self.send(url, b)


def open_count(home: Path) -> int:
    from fleetscore.core.stream import StreamState
    from fleetscore.ingest.checkpoint import IngestPaths, load_checkpoint
    from fleetscore.ingest.records import read_ipc_file

    paths = IngestPaths.of_home(home)
    checkpoint = load_checkpoint(paths)
    return int(StreamState.from_arrow(read_ipc_file(paths.state_dir / checkpoint.state)).count.sum())


def closed_count(home: Path) -> int:
    from fleetscore.storage.fs import open_storage
    from fleetscore.storage.windows import WindowStore

    return sum(WindowStore(open_storage(str(home / "data"))).read(60, 0, 2**62).column("count").to_pylist())


def assert_exactly_once(home: Path, sent: dict[int, pa.Table], acked: set[int]) -> pa.Table:
    stored = landed(home)
    counts = key_set(stored)
    assert max(counts.values()) == 1, "a reading was stored twice"
    all_sent = key_set(pa.concat_tables(list(sent.values())))
    assert set(counts) <= set(all_sent), "a reading nobody sent was stored"
    for b in acked:
        missing = set(key_set(sent[b])) - set(counts)
        assert not missing, f"batch {b} was acknowledged but {len(missing)} of its readings are missing"
    assert closed_count(home) + open_count(home) == stored.num_rows, "windows do not count each reading once"
    return stored


def test_server_killed_during_a_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    client = Client(recent_us())
    client.crash_after(Server(home, "--compact-interval", "1s"), acked=25)
    assert client.acked
    second = Server(home, "--compact-interval", "1s")
    client.resend_unknown(second.url)
    client.crash_after(second, acked=len(client.acked) + 25)  # killed again, compaction running meanwhile
    third = Server(home, "--compact-interval", "1s")
    client.resend_unknown(third.url)
    assert third.stop() == 0  # graceful: fsync, final compaction
    sent = {b: batch(client.start, b) for b in range(client.next)}
    stored = assert_exactly_once(home, sent, client.acked)
    assert stored.num_rows >= len(client.acked) * ROWS


def test_compaction_killed_midway_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    from fleetscore.ingest.parse import ParsedBody
    from fleetscore.ingest.service import IngestService
    from fleetscore.config.ingest import IngestSettings

    home = tmp_path / "home"
    home.mkdir()
    (home / "fleetscore.toml").write_text("[ingest]\ncompact_chunk_rows = 1500\n")
    start = recent_us()
    sent: dict[int, pa.Table] = {}
    service = IngestService(home, IngestSettings(), "http")
    bad_rows = 0
    for b in range(120):
        table = batch(start, b)
        sent[b] = table
        if b % 10 == 9:  # a client retry: a whole earlier batch again
            table = sent[b - 5]
        if b % 7 == 0:  # one bad row
            table = pa.concat_tables([table, table.slice(0, 1).set_column(3, "value", pa.array([float("nan")]))])
            bad_rows += 1
        service.append(service.admit(ParsedBody(table))).result()
    service.close()

    from fleetscore.ingest.checkpoint import IngestPaths, load_checkpoint

    paths = IngestPaths.of_home(home)
    rng = random.Random(7)
    midway = 0  # kills that hit a compaction which had started but not finished
    for _ in range(8):
        proc = Proc(["compact", "--home", str(home), "--json"], log=tmp_path / "compact.log")
        before = load_checkpoint(paths).seq
        wait_until(lambda: load_checkpoint(paths).seq > before or proc.proc.poll() is not None, 60, "a step")
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.proc.poll() is not None:
            break
        proc.kill()
        midway += 1
    final = Proc(["compact", "--home", str(home), "--json"], log=tmp_path / "compact.log")
    assert final.proc.wait(120) == 0, final.stderr_text()[-2000:]
    assert midway >= 2, "compaction finished before it could be killed twice: make the log bigger"

    acked = {b for b in sent if b % 10 != 9}
    assert_exactly_once(home, {b: sent[b] for b in acked}, acked)
    from fleetscore.api import Fleet

    fleet = Fleet.open(home)
    reasons = fleet.quarantine(100_000).column("reason").to_pylist()
    fleet.close()
    assert reasons.count("value is not finite (NaN or inf)") == bad_rows
    assert sum(r.startswith("duplicate") for r in reasons) == 12 * ROWS
