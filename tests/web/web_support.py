"""Shared by the web tests: hostile ids in the test fleet, and reading the dashboard's HTML (``data-field`` texts, links)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

#: Start of the simulated readings in the test fleets.
T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: (device, sensor) ids an attacker or a careless integrator could send; the dashboard must show them escaped.
HOSTILE_IDS = (("<b>pump</b>/../7", "temp~/x"), ("..", "a b&c\"'"))
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class PageFields(HTMLParser):
    """``fields[name]``: texts of the elements marked ``data-field="name"``, in document order; ``links``: hrefs."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.fields: dict[str, list[str]] = {}
        self.links: list[str] = []
        self._stack: list[str] = []
        self._open: list[tuple[int, str, list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag in VOID:
            return
        self._stack.append(tag)
        if a.get("data-field"):
            self._open.append((len(self._stack), a["data-field"] or "", []))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or not self._stack:
            return
        depth = len(self._stack)
        self._stack.pop()
        while self._open and self._open[-1][0] >= depth:
            _, name, buf = self._open.pop()
            self.fields.setdefault(name, []).append("".join(buf).strip())

    def handle_data(self, data: str) -> None:
        for _, _, buf in self._open:
            buf.append(data)

    def one(self, name: str) -> str:
        values = self.fields.get(name, [])
        assert len(values) == 1, f"expected one data-field={name!r}, found {values}"
        return values[0]


def as_int(text: str) -> int:
    """'1,080' → 1080 (numbers as the pages print them)."""
    return int(text.replace(",", ""))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Run ``app`` on a real uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
