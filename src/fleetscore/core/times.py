"""Time values as integer microseconds since the Unix epoch (UTC), and every text form fleetscore writes.

Inside the program times are µs (int); these functions are the one place that turns them into text
(ISO 8601 at the edges: JSON, CSV, pages, catalog columns, log lines, file names) and back.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from fleetscore.errors import InputError

SECOND_US = 1_000_000
HOUR_US = 3_600 * SECOND_US
#: Longest accepted window / duration: 7 days.
MAX_DURATION_S = 7 * 86_400

_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")


def parse_time(text: str | datetime, what: str = "time") -> int:
    """``2026-01-01T00:00:00Z`` (or without zone = UTC, or a datetime) → µs; InputError if bad."""
    if isinstance(text, datetime):
        dt = text if text.tzinfo else text.replace(tzinfo=timezone.utc)
        return int(round(dt.timestamp() * SECOND_US))
    us = parse_time_us(text) if isinstance(text, str) else None
    if us is None:
        raise InputError(f"{what}: {str(text)[:80]!r} is not an ISO 8601 time like 2026-01-01T00:00:00Z")
    return us


def parse_window(start: str | datetime, end: str | datetime) -> tuple[int, int]:
    """A [from, to) window in µs; InputError when it is empty or reversed."""
    lo, hi = parse_time(start, "--from"), parse_time(end, "--to")
    if hi <= lo:
        raise InputError(f"--to ({iso(hi)}) must be after --from ({iso(lo)})")
    return lo, hi


def iso(us: int) -> str:
    """µs → ``2026-01-01T00:00:00Z`` (fractional seconds only when present)."""
    dt = datetime.fromtimestamp(us // SECOND_US, tz=timezone.utc)
    frac = us % SECOND_US
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:06d}Z" if frac else f"{text}Z"


def iso_us(us: int) -> str:
    """µs → ``2026-01-01T00:00:00.000000Z``: always six fractional digits (catalog stamps, log lines)."""
    return _utc(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_s(us: int) -> str:
    """µs → ``2026-01-01T00:00:00Z``, to the second (model training stamps)."""
    return _utc(us).strftime("%Y-%m-%dT%H:%M:%SZ")


def compact_stamp(us: int) -> str:
    """µs → ``20260101T000000.000000Z``: sortable, no separators that file names or URLs dislike."""
    return _utc(us).strftime("%Y%m%dT%H%M%S.%fZ")


def day_text(us: int) -> str:
    """µs → ``2026-01-01``, the UTC day."""
    return _utc(us).strftime("%Y-%m-%d")


def _utc(us: int) -> datetime:
    return datetime.fromtimestamp(us // SECOND_US, tz=timezone.utc).replace(microsecond=us % SECOND_US)


def parse_time_us(text: str) -> int | None:
    """Parse one ISO 8601 time (no zone means UTC) to µs since the epoch, or None if invalid."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_duration(text: str, max_s: int = MAX_DURATION_S) -> int:
    """Duration text to whole seconds: ``30s``, ``1m``, ``5m``, ``1h``, ``2h30m``, ``1d``, ``90``.

    Units are d, h, m, s, each at most once and in that order; a bare integer means seconds.
    Zero, negative, fractional or unparseable values and anything over ``max_s`` (default 7 days)
    raise :class:`~fleetscore.errors.InputError` (``bad duration '...': why``).
    """
    if not isinstance(text, str):
        raise InputError(f"bad duration {text!r}: expected text like '30s', '5m', '1h', '2h30m' or '1d'")
    shown = text if len(text) <= 40 else text[:37] + "..."
    s = text.strip().lower()
    if len(s) > 32:
        raise InputError(f"bad duration '{shown}': too long to be a duration")
    if s.isascii() and s.isdigit():
        seconds = int(s)
    else:
        m = _DURATION_RE.fullmatch(s)
        if not s or m is None or not any(m.groups()):
            why = "negative durations are not allowed" if s.startswith("-") else (
                "expected a whole number with unit d, h, m or s in that order, e.g. '30s', '5m', '2h30m', '1d'"
            )
            raise InputError(f"bad duration '{shown}': {why}")
        seconds = sum(int(g) * size for g, size in zip(m.groups(), _UNITS.values()) if g is not None)
    if seconds <= 0:
        raise InputError(f"bad duration '{shown}': must be longer than 0 seconds")
    if seconds > max_s:
        limit = f"{max_s // 86_400} days" if max_s % 86_400 == 0 else f"{max_s} seconds"
        raise InputError(f"bad duration '{shown}': longer than the maximum of {limit}")
    return seconds
