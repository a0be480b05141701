"""Device and sensor ids in URLs: one percent-encoded path segment each, reversibly (ids may hold ``/``)."""

from __future__ import annotations

import re
from urllib.parse import quote

_SEGMENT_ESCAPE = re.compile(r"~([0-9A-F]{2})")


def id_segment(value: str) -> str:
    """A device or sensor id as one percent-encoded URL path segment."""
    text = value.replace("~", "~7E").replace("/", "~2F")
    if text and set(text) == {"."}:
        text = "~2E" * len(text)
    return quote(text, safe="")


def segment_id(segment: str) -> str:
    """The id :func:`id_segment` encoded (the segment as the router decoded it)."""
    return _SEGMENT_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), segment)
