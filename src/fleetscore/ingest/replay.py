"""Replay quarantined late readings into the store, and name the scored windows they touch.

A reading quarantined as ``late`` was valid: it only came after its device's watermark had moved
on (see :mod:`fleetscore.ingest.lateness`). Replaying lands it (idempotent: a key already stored is
a duplicate, never a second copy) and then rewrites its quarantine file without it, one file at a
time under the compaction lock, so a crash between the two only makes the next replay find keys
already stored. The windows whose predictions it changes are listed for ``fleetscore backfill``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.schema import validate_readings
from fleetscore.core.times import iso
from fleetscore.errors import InputError
from fleetscore.ingest.checkpoint import IngestPaths, compaction_lock
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage
from fleetscore.storage.quarantine import QuarantineStore
from fleetscore.storage.readings import ReadingStore

#: Quarantine reasons that can be replayed, each with the quarantine source its rows are kept under.
REPLAYABLE = {"late": "late"}


@dataclass
class ReplayResult:
    """What a replay did: rows taken out of the quarantine, landed or already stored, windows touched."""

    reason: str
    device: str | None
    replayed: int = 0
    landed: int = 0
    duplicates: int = 0
    files: int = 0
    windows: list[tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        windows = [{"window_from": iso(lo), "window_to": iso(hi),
                    "backfill": f"fleetscore backfill --from {iso(lo)} --to {iso(hi)} --every {(hi - lo) // 1_000_000}s"}
                   for lo, hi in self.windows]
        return {"reason": self.reason, "device": self.device, "replayed": self.replayed, "landed": self.landed,
                "duplicates": self.duplicates, "files": self.files, "windows": windows}


def replay_quarantine(storage: Storage, home: Path, reason: str = "late", device: str | None = None) -> ReplayResult:
    """Land the quarantined readings rejected for ``reason`` (of one ``device``, or all) and list the
    scored windows they fall in; replayed rows leave the quarantine, so a second replay finds none."""
    if reason not in REPLAYABLE:
        raise InputError(f"--reason {reason!r}: only {', '.join(sorted(REPLAYABLE))} readings can be replayed "
                         "(the others were refused for what they contain)")
    result = ReplayResult(reason, device)
    store, readings = QuarantineStore(storage), ReadingStore(storage)
    touched: list[np.ndarray] = []
    with compaction_lock(IngestPaths.of_home(home)):
        for key in store.files(REPLAYABLE[reason]):
            table = store.read(key)
            pick = _selected(table, reason, device)
            if not pick.any():
                continue
            valid = validate_readings(table.filter(pa.array(pick)).select(["ts", "device", "sensor", "value"]))
            landed = readings.land(valid.good)
            keep = ~pick
            keep[np.flatnonzero(pick)[valid.rejected.column("row").to_numpy()]] = True  # unreadable: stays
            store.keep_only(key, table.filter(pa.array(keep)))
            result.files += 1
            result.replayed += valid.good.num_rows
            result.landed += landed.accepted
            result.duplicates += landed.duplicates
            touched.append(valid.good.column("ts").cast(pa.int64()).to_numpy())
    if touched:
        result.windows = scored_windows(storage, np.sort(np.concatenate(touched)))
    return result


def _selected(table: pa.Table, reason: str, device: str | None) -> np.ndarray:
    """Rows of a quarantine file rejected for ``reason`` (and of ``device``, when given)."""
    pick = pc.starts_with(table.column("reason"), reason)
    if device is not None:
        pick = pc.and_(pick, pc.equal(table.column("device"), device))
    mask: np.ndarray = pc.fill_null(pick, False).to_numpy(zero_copy_only=False)
    return mask


def scored_windows(storage: Storage, ts_us: np.ndarray) -> list[tuple[int, int]]:
    """The windows with committed predictions that hold at least one of the sorted times ``ts_us``."""
    found = []
    for name in storage.list_dirs("predictions"):
        bounds = layout.window_bounds(name)
        if bounds is None or not storage.exists(layout.commit_key(*bounds)):
            continue
        lo, hi = bounds
        if np.searchsorted(ts_us, hi) > np.searchsorted(ts_us, lo):
            found.append(bounds)
    return sorted(found)
