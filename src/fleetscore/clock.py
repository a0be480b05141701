"""The wall clock: the one place fleetscore reads the time of day.

A clock is a callable returning now in µs since the Unix epoch (UTC). Services and stores take one
(default :func:`wall_clock`), so tests drive time with a fake one; formats live in `core.times`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def wall_clock() -> int:
    """Now, in µs since the epoch (UTC)."""
    return time.time_ns() // 1_000
