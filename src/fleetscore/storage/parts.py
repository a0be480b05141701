"""Immutable part files of one bucket-hour of readings: their names, which are visible, what to merge.

Every land writes a new part (sorted by device, sensor, ts) instead of rewriting the hour, so
landing in chunks stays linear. A part's name says everything planning needs, without opening it:

    part-<seq_lo>-<seq_hi>-<t_lo>-<t_hi>-<rows>-<tag>.parquet

``seq`` numbers the lands of a bucket-hour (a merged part covers the range of the parts it
replaces), ``t_lo``/``t_hi`` are the first and last reading's µs offset from the hour (so dedup
and reads skip parts outside a time range), ``rows`` sizes merges and ``tag`` is random. A merge
writes the merged part first and deletes its inputs after: a part whose seq range lies inside
another part's wider range is superseded and never read, so a crash between the two steps never
shows a reading twice. Names hold no ids, only numbers.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

#: Small parts are merged in groups of this many (size-tiered: each tier is this many times bigger).
MERGE_PARTS = 8
#: Parts with this many rows or more are final: merging never rewrites them again.
MERGE_ROWS = 1 << 20
_TIER_ROWS = 1024  # parts up to this size are all in the lowest tier

_NAME_RE = re.compile(r"^part-(\d{8})-(\d{8})-(\d{10})-(\d{10})-(\d{10})-([0-9a-f]{8})\.parquet$")


@dataclass(frozen=True, order=True)
class Part:
    """One part file of a bucket-hour, as its name describes it."""

    seq_lo: int
    seq_hi: int
    t_lo: int  # µs after the hour of the first reading
    t_hi: int  # µs after the hour of the last reading
    rows: int
    tag: str

    @property
    def name(self) -> str:
        return (f"part-{self.seq_lo:08d}-{self.seq_hi:08d}-{self.t_lo:010d}-{self.t_hi:010d}-"
                f"{self.rows:010d}-{self.tag}.parquet")

    @classmethod
    def parse(cls, name: str) -> Part | None:
        """The part a file name describes, or None for a name that is not a part's."""
        m = _NAME_RE.match(name)
        if m is None:
            return None
        seq_lo, seq_hi, t_lo, t_hi, rows = (int(g) for g in m.groups()[:5])
        return cls(seq_lo, seq_hi, t_lo, t_hi, rows, m.group(6))

    @classmethod
    def new(cls, seq_lo: int, seq_hi: int, t_lo: int, t_hi: int, rows: int) -> Part:
        return cls(seq_lo, seq_hi, t_lo, t_hi, rows, uuid.uuid4().hex[:8])

    def covers(self, other: Part) -> bool:
        """True when this part's seq range strictly contains ``other``'s (it replaced ``other``)."""
        return (self.seq_lo <= other.seq_lo and other.seq_hi <= self.seq_hi
                and (self.seq_lo, self.seq_hi) != (other.seq_lo, other.seq_hi))

    def overlaps(self, t_lo: int, t_hi: int) -> bool:
        """True when the part may hold readings at offsets in [t_lo, t_hi] (inclusive)."""
        return self.t_lo <= t_hi and t_lo <= self.t_hi


def visible(parts: list[Part]) -> tuple[list[Part], list[Part]]:
    """(visible parts in seq order, superseded parts that are left to delete)."""
    ordered = sorted(parts)
    live = [p for p in ordered if not any(q.covers(p) for q in ordered)]
    return live, [p for p in ordered if p not in live]


def next_seq(parts: list[Part]) -> int:
    return max((p.seq_hi for p in parts), default=0) + 1


def _tier(rows: int) -> int:
    tier, size = 0, _TIER_ROWS
    while rows > size:
        tier, size = tier + 1, size * MERGE_PARTS
    return tier


def to_merge(live: list[Part]) -> list[Part]:
    """The newest parts to merge into one (at least MERGE_PARTS of them), or [] when none is due.

    Size-tiered: starting at the newest part, take parts back in time while they are small
    (< MERGE_ROWS) and no bigger a tier than the newest, so each reading is rewritten about once
    per tier however many chunks an hour arrives in, and a bucket-hour keeps few parts. Call again
    after a merge: the merged part may complete a group of the next tier.
    """
    if not live or live[-1].rows >= MERGE_ROWS:
        return []
    top = _tier(live[-1].rows)
    group: list[Part] = []
    for part in reversed(live):
        if part.rows >= MERGE_ROWS or _tier(part.rows) > top:
            break
        group.append(part)
    return list(reversed(group)) if len(group) >= MERGE_PARTS else []
