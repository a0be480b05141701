"""Shared by the web tests: hostile ids in the test fleet, and reading the dashboard's HTML (``data-field`` texts, links)."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser

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
