"""Where compaction stands: the ingest folders of a home and the checkpoint file.

    <home>/ingest/log/<source>/seg-*.log   the durable log of each writer (http, mqtt, kafka:…, nats:…)
    <home>/ingest/checkpoint.json          per log (segment, offset) compacted so far, the stream state file
    <home>/ingest/state/state-<seq>.arrow  open stream windows as of that checkpoint
    <home>/ingest/state/devices-<seq>.arrow  each tracked device's max event time (its watermark, lateness.py)
    <home>/ingest/staged/                  one compaction step decided but not yet applied (see compact.py)
    <home>/ingest/keys/keys-<seq>.arrow    Idempotency-Keys of the batches compacted in step <seq>
    <home>/ingest/sources/<source>.json    a stream consumer's lag and last message / commit times
    <home>/ingest/compact.lock             one compaction at a time, in whichever process

A position ``(segment, offset)`` means: every record before it is compacted. The checkpoint file
is replaced atomically (written aside, fsynced, renamed), so a crash leaves the old or the new one.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetscore.errors import StorageError
from fleetscore.storage.fs import atomic_local_write
from fleetscore.storage.layout import SOURCE_RE

Position = tuple[int, int]


@dataclass(frozen=True)
class IngestPaths:
    """The ingest folders of one home."""

    root: Path

    @classmethod
    def of_home(cls, home: Path) -> IngestPaths:
        return cls(Path(home) / "ingest")

    @property
    def log_root(self) -> Path:
        return self.root / "log"

    def log_dir(self, source: str) -> Path:
        if not SOURCE_RE.match(source):
            raise StorageError(f"bad ingest source name {source[:40]!r}")
        return self.log_root / source

    def sources(self) -> list[str]:
        try:
            return sorted(p.name for p in self.log_root.iterdir() if p.is_dir() and SOURCE_RE.match(p.name))
        except FileNotFoundError:
            return []

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def staged(self) -> Path:
        return self.root / "staged"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def status_dir(self) -> Path:
        """Stream consumers' status files (lag, last message and commit), one per source."""
        return self.root / "sources"

    @property
    def compact_lock(self) -> Path:
        return self.root / "compact.lock"


@dataclass(frozen=True)
class Checkpoint:
    """Compaction progress: step number, per-log positions, stream state file, when and how much."""

    seq: int = 0
    positions: dict[str, Position] = field(default_factory=dict)
    state: str | None = None  # file name under state/
    devices: str | None = None  # file name under state/: the device clock
    compacted_at_us: int | None = None
    totals: dict[str, int] = field(default_factory=dict)

    def position(self, source: str) -> Position:
        return self.positions.get(source, (1, 0))

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "positions": {k: list(v) for k, v in self.positions.items()}, "state": self.state,
                "devices": self.devices, "compacted_at_us": self.compacted_at_us, "totals": self.totals}


def load_checkpoint(paths: IngestPaths) -> Checkpoint:
    try:
        data = json.loads(paths.checkpoint.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Checkpoint()
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read the ingest checkpoint {paths.checkpoint}: {exc}") from exc
    try:
        return Checkpoint(
            seq=int(data["seq"]),
            positions={k: (int(v[0]), int(v[1])) for k, v in data["positions"].items()},
            state=data.get("state"),
            devices=data.get("devices"),
            compacted_at_us=data.get("compacted_at_us"),
            totals={k: int(v) for k, v in data.get("totals", {}).items()},
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StorageError(f"the ingest checkpoint {paths.checkpoint} is malformed: {exc}") from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically and durably; StorageError when that fails."""
    try:
        atomic_local_write(path, data)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc


def save_checkpoint(paths: IngestPaths, checkpoint: Checkpoint) -> None:
    write_atomic(paths.checkpoint, json.dumps(checkpoint.as_dict(), indent=1).encode())


@contextmanager
def compaction_lock(paths: IngestPaths) -> Iterator[None]:
    """Hold ``compact.lock``: one compaction (or quarantine replay) at a time per home, in any process."""
    paths.compact_lock.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.compact_lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
