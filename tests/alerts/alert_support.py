"""Helpers of the alert tests: a real local webhook in a thread, a real Alertmanager process, configs, incidents."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ALERTMANAGER = shutil.which("prometheus-alertmanager")


@dataclass
class Hook:
    """What a local webhook saw: every request (headers, body) and the bodies it accepted, by idempotency key."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def accepted_keys(self) -> list[str]:
        return [k for k, bodies in self.accepted.items() for _ in bodies]


@contextmanager
def webhook(answer: Callable[[int], int] = lambda n: 200) -> Iterator[Hook]:
    """A webhook on a free loopback port; ``answer(n)`` is the status of its n-th request (from 1)."""
    lock = threading.Lock()
    hook = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                hook.requests.append({"headers": dict(self.headers), "body": body})
                status = answer(len(hook.requests))
                if status < 300:
                    hook.accepted.setdefault(self.headers.get("Idempotency-Key", ""), []).append(body)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no" if status >= 300 else b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops connections that several senders open at once
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def alertmanager(tmp: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port (gossip off); yields its base URL."""
    import httpx

    assert ALERTMANAGER is not None
    (tmp / "am.yml").write_text("route: {receiver: hook}\nreceivers: [{name: hook}]\n")
    port = free_port()
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={tmp / 'am.yml'}", f"--storage.path={tmp / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=(tmp / "am.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp / "am.log").read_text()
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def write_config(home: Path, body: str) -> None:
    """Write ``body`` as the home's fleetscore.toml."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "fleetscore.toml").write_text(body)


def hook_config(url: str, *, rule: str = 'name = "all"', max_attempts: int = 8, extra: str = "") -> str:
    """A toml with one rule sending to one webhook receiver ``hook`` (fast retries for tests)."""
    return (f'[alerts]\npoll = 0.1\n{extra}\n[[alerts.rules]]\n{rule}\nreceivers = ["hook"]\n\n'
            f'[[alerts.receivers]]\nname = "hook"\ntype = "webhook"\nurl = "{url}"\ntimeout = "2s"\n'
            f'max_attempts = {max_attempts}\nbackoff = 0.01\nmax_backoff = 0.05\n')


T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
MINUTE = 60_000_000


def incident(id: str = "inc-1", device: str = "pump-1", *, minutes: float = 20, flags: int = 10,
             severity: float | None = 80.0, status: str = "open", sensors: dict[str, int] | None = None) -> Any:
    """An Incident value as the incidents service would pass it."""
    from fleetscore.core.incidents import Incident, SensorShare

    shares = tuple(SensorShare(s, n) for s, n in (sensors or {"pressure": flags}).items())
    return Incident(id=id, device=device, start_us=T0, last_us=T0 + int(minutes * MINUTE), status=status,
                    severity=severity, flags=sum(s.flags for s in shares), sensors=shares, updated_us=T0)
