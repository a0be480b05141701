"""Helpers for the ingest tests: readings with unique keys, real server / subscriber processes, checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

CLI = [sys.executable, "-c", "from fleetscore.cli.main import main; main()"]
HOUR_US = 3_600_000_000


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def recent_us() -> int:
    """A start time an hour ago, on a whole minute: readings from here on are neither future nor late."""
    us = time.time_ns() // 1000 - HOUR_US
    return us - us % 60_000_000


def readings(start_us: int, n: int, devices: int = 5, sensors: int = 2, step_us: int = 1_000_000,
             seed: int = 0) -> pa.Table:
    """``n`` readings on a grid: row i is key i % (devices·sensors), time start + (i // keys)·step."""
    keys = devices * sensors
    i = np.arange(n)
    rng = np.random.default_rng(seed)
    return pa.table({
        "ts": pa.array(start_us + (i // keys) * step_us).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array([f"dev-{k // sensors:03d}" for k in i % keys]),
        "sensor": pa.array([f"s{k % sensors}" for k in i % keys]),
        "value": rng.normal(20.0, 2.0, n),
    })


def arrow_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def key_set(table: pa.Table) -> Counter:
    """Counter of (device, sensor, ts µs) over a table."""
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    return Counter(zip(table.column("device").to_pylist(), table.column("sensor").to_pylist(), ts))


def landed(home: Path) -> pa.Table:
    """Every landed reading of the last and the next two years."""
    from fleetscore.api import Fleet
    from fleetscore.core.times import iso

    now = time.time_ns() // 1000
    fleet = Fleet.open(home)
    try:
        return fleet.readings(iso(now - 365 * 24 * HOUR_US), iso(now + 2 * 365 * 24 * HOUR_US))
    finally:
        fleet.close()


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen[Any] | None) -> None:
    """End a helper server (SIGTERM) and wait for it, if it still runs."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(20)


def wait_until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Proc:
    """A fleetscore CLI process that is always ended at teardown (SIGKILL when it does not stop)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.log = log
        err = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=err,
                                     env={**os.environ, **(env or {})})

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (a graceful stop: the last records fsynced and compacted)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stderr_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


class Server(Proc):
    """``fleetscore serve`` on a free loopback port, ready when /healthz answers."""

    def __init__(self, home: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), "--home", str(home), *extra], env,
                         log=home.parent / f"serve-{self.port}.log")
        import httpx

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.stderr_text()[-2000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "the server to answer /healthz")
