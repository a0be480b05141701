"""Alert delivery under failures and a crash: N notifications to a local webhook that fails 30% of requests.

    python bench/alerts.py [--notifications 10000] [--fail 0.3] [--kill-at 0.5]

A fresh home with one rule and one webhook receiver (fast retries, a 3 s lease); N incidents are
queued through ``services.alerts.on_incidents`` (one firing notification each). A separate delivering
process (``deliver`` in a loop, as ``serve`` does) is killed with SIGKILL once the receiver has taken
``--kill-at`` of them, and a new process is started on the same home. The receiver answers 503 to a
random ``--fail`` share of requests and dedups by the ``Idempotency-Key`` header, as the contract asks
receivers to. Reports: delivered exactly once by key, none lost, repeats the crash caused (at least
once), failed attempts, and throughput (notifications/s over the delivery, crash and lease included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DELIVER = """
import sys
from fleetscore.api import Fleet
from fleetscore.services.delivery import deliver
fleet = Fleet.open(sys.argv[1])
while deliver(fleet.context, deadline_s=5).pending:
    pass
"""


class Receiver:
    """A webhook that fails a random share of requests and counts what it took, by idempotency key."""

    def __init__(self, fail: float, seed: int = 7) -> None:
        self.fail = fail
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.taken: dict[str, int] = {}
        self.requests = self.failed = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.random.random() < receiver.fail
                    if failing:
                        receiver.failed += 1
                    else:
                        assert json.loads(body)["idempotency_key"] == key
                        receiver.taken[key] = receiver.taken.get(key, 0) + 1
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the killed deliverer's connections reset: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def unique(self) -> int:
        with self.lock:
            return len(self.taken)


def config(url: str) -> str:
    return ('[alerts]\nlease = "3s"\npoll = 0.05\n[[alerts.rules]]\nname = "all"\nreceivers = ["hook"]\n'
            f'[[alerts.receivers]]\nname = "hook"\ntype = "webhook"\nurl = "{url}"\ntimeout = "5s"\n'
            'max_attempts = 100\nbackoff = 0.01\nmax_backoff = 0.2\n')


def queue(home: Path, n: int) -> float:
    """Queue one firing notification for each of n incidents; seconds it took."""
    from fleetscore.api import Fleet
    from fleetscore.core.incidents import Incident, SensorShare
    from fleetscore.services.alerts import on_incidents

    t0_us = 1_767_225_600_000_000
    incidents = [Incident(id=f"inc-{i:06d}", device=f"pump-{i % 977}", start_us=t0_us, last_us=t0_us + 600_000_000,
                          status="open", severity=80.0, flags=5, sensors=(SensorShare("pressure", 5),),
                          updated_us=t0_us) for i in range(n)]
    fleet = Fleet.open(home)
    start = time.perf_counter()
    queued = on_incidents(fleet.context, incidents)
    elapsed = time.perf_counter() - start
    assert queued == n, queued
    fleet.close()
    return elapsed


def start_deliverer(home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", DELIVER, str(home)], env=os.environ | {"FLEETSCORE_HOME": str(home)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notifications", type=int, default=10_000)
    parser.add_argument("--fail", type=float, default=0.3)
    parser.add_argument("--kill-at", type=float, default=0.5)
    args = parser.parse_args()
    n = args.notifications
    receiver = Receiver(args.fail)
    with tempfile.TemporaryDirectory(prefix="fleetscore-bench-alerts-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        (home / "fleetscore.toml").write_text(config(receiver.url))
        queue_s = queue(home, n)
        start = time.perf_counter()
        proc = start_deliverer(home)
        while receiver.unique() < n * args.kill_at:
            assert proc.poll() is None, "the deliverer ended before the kill"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        at_kill = receiver.unique()
        restarted = start_deliverer(home)
        assert restarted.wait(600) == 0
        elapsed = time.perf_counter() - start

        from fleetscore.api import Fleet

        counts = Fleet.open(home).alert_counts()
    unique = receiver.unique()
    repeats = sum(c - 1 for c in receiver.taken.values())
    print("| measure | value |\n|---|---|")
    for name, value in [
        ("notifications queued", f"{n:,} (in {queue_s:.2f} s, {n / queue_s:,.0f}/s)"),
        ("receiver failure rate", f"{args.fail:.0%} ({receiver.failed:,} of {receiver.requests:,} requests got 503)"),
        ("deliverer killed -9 at", f"{at_kill:,} delivered; restarted on the same home"),
        ("delivered (unique idempotency keys)", f"{unique:,}"),
        ("lost", f"{n - unique:,}"),
        ("repeats of a delivered key (at least once; the receiver dedups)", f"{repeats:,}"),
        ("outbox after", ", ".join(f"{k} {v:,}" for k, v in counts.items())),
        ("delivery wall time (incl. kill, restart, 3 s lease)", f"{elapsed:.1f} s"),
        ("throughput", f"{n / elapsed:,.0f} notifications/s"),
    ]:
        print(f"| {name} | {value} |")
    ok = unique == n and counts["sent"] == n and counts["pending"] == 0 and counts["dead"] == 0
    print("\nOK: every notification delivered exactly once by key, none lost" if ok else "\nFAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
