"""``fleetscore serve`` under the ``[server]`` limits: slow, stalled and idle connections are closed; a flood gets 503.

Each server runs with timeouts of its own (1 s) and the tests check that the server closes the
connection; the 15 s socket timeouts only keep a broken server from hanging the test.
"""

from __future__ import annotations

import http.client
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ingest_support import CLI, Server, free_port, wait_until

GIVE_UP_S = 15.0
LONG = '"60s"'


def start(tmp_path: Path, **server: str | int) -> Server:
    home = tmp_path / "home"
    home.mkdir()
    lines = "".join(f"{key} = {value}\n" for key, value in server.items())
    (home / "fleetscore.toml").write_text(f"[server]\n{lines}")
    return Server(home)


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[Server]:
    """Short header, body and keep-alive clocks; a long silence allowance (so the clocks, not it, close)."""
    server = start(tmp_path, header_timeout='"1s"', body_timeout='"2s"', keep_alive_timeout='"1s"', idle_timeout=LONG)
    yield server
    server.stop()


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[Server]:
    """Long clocks, one second of silence allowed while a request is read."""
    server = start(tmp_path, header_timeout=LONG, body_timeout=LONG, keep_alive_timeout=LONG, idle_timeout='"1s"')
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=GIVE_UP_S)


def closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Read (sending one byte of ``trickle`` every 0.2 s) until the server closes; what it sent before."""
    got = b""
    sock.settimeout(0.2 if trickle else GIVE_UP_S)
    deadline = time.monotonic() + GIVE_UP_S
    with sock:
        while time.monotonic() < deadline:
            try:
                if trickle:
                    sock.sendall(trickle[:1])
                    trickle = trickle[1:] or b"a"
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return got
            if not data:
                return got
            got += data
    raise AssertionError(f"the server kept the connection open for {GIVE_UP_S} s (got {got[:200]!r})")


def post_head(length: int) -> bytes:
    return (f"POST /v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def health_status(conn: http.client.HTTPConnection) -> int:
    """GET /healthz on a kept-alive connection, the whole answer read."""
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    return response.status


def healthy(server: Server) -> bool:
    return httpx.get(f"{server.url}/healthz", timeout=GIVE_UP_S).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(clocked: Server) -> None:
    assert closed_by_server(connect(clocked)) == b""
    assert healthy(clocked)


def test_headers_trickled_byte_by_byte_are_cut_at_the_header_timeout(clocked: Server) -> None:
    sock = connect(clocked)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert closed_by_server(sock, trickle=b"X-Slow: " + b"a" * 1000) == b""
    assert healthy(clocked)


def test_a_body_trickled_byte_by_byte_is_cut_at_the_body_timeout(clocked: Server) -> None:
    sock = connect(clocked)
    sock.sendall(post_head(100_000) + b"[")
    assert closed_by_server(sock, trickle=b" " * 100_000) == b""
    assert healthy(clocked)


def test_an_idle_keep_alive_connection_is_closed_after_its_request(clocked: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", clocked.port, timeout=GIVE_UP_S)
    assert health_status(conn) == 200
    assert conn.sock is not None  # kept open by the client
    assert closed_by_server(conn.sock) == b""


def test_a_partial_header_then_silence_is_closed(silent: Server) -> None:
    sock = connect(silent)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half")
    assert closed_by_server(sock) == b""


def test_a_partial_body_then_silence_is_closed(silent: Server) -> None:
    sock = connect(silent)
    sock.sendall(post_head(1000) + b'[{"ts": ')
    assert closed_by_server(sock) == b""
    assert healthy(silent)


def test_connections_beyond_max_connections_get_503_and_health_returns(tmp_path: Path) -> None:
    server = start(tmp_path, max_connections=5, header_timeout=LONG, body_timeout=LONG, keep_alive_timeout=LONG,
                   idle_timeout=LONG)
    try:
        held = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=GIVE_UP_S) for _ in range(5)]
        for conn in held:  # each served once, then idle on keep-alive: all five count
            assert health_status(conn) == 200
        for _ in range(20):
            refused = closed_by_server(connect(server))
            assert refused.startswith(b"HTTP/1.1 503 ") and b"max_connections" in refused
        refused_request = http.client.HTTPConnection("127.0.0.1", server.port, timeout=GIVE_UP_S)
        assert health_status(refused_request) == 503
        for conn in held:
            conn.close()
        wait_until(lambda: healthy(server), GIVE_UP_S, "/healthz to answer 200 once the flood ends")
    finally:
        server.stop()


def test_serve_refuses_a_cap_the_open_file_limit_cannot_hold(tmp_path: Path) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600))

    done = subprocess.run([*CLI, "serve", "--home", str(tmp_path / "home"), "--port", str(free_port()), "--json"],
                          capture_output=True, text=True, timeout=60, preexec_fn=low_limit)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "max_connections = 1000 needs" in done.stdout and "ulimit -n" in done.stdout
