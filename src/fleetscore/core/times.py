"""Time values as integer microseconds since the Unix epoch (UTC), and their ISO 8601 text form."""

from __future__ import annotations

from datetime import datetime, timezone

from fleetscore.core.schema import parse_time_us
from fleetscore.errors import InputError

SECOND_US = 1_000_000
HOUR_US = 3_600 * SECOND_US


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


def floor_hour(us: int) -> int:
    return us - us % HOUR_US
