"""The quarantine: rejected readings with their reasons, one Parquet file per batch under
``quarantine/source=<source>/date=<day>/``. Nothing rejected is dropped: it is kept here."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pyarrow as pa

from fleetscore.errors import InputError
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage


class QuarantineStore:
    """Writes and lists quarantined rows of one storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write(self, rejected: pa.Table, source: str, day_us: int, *, batch: str | None = None) -> dict[str, Any]:
        """Store rejected rows with their reasons; returns where they went and a summary.

        ``batch`` (8-32 hex) and ``day_us`` name the file; giving both makes a retried write replace
        the same file (compaction does this) instead of adding a second copy.
        """
        key = layout.quarantine_key(source, day_us, batch or uuid.uuid4().hex)
        self.storage.write_parquet(key, rejected)
        reasons = Counter(rejected.column("reason").to_pylist())
        return {
            "path": self.storage.display(key),
            "rows": rejected.num_rows,
            "reasons": dict(reasons.most_common()),
            "sample": rejected.slice(0, 20).to_pylist(),
        }

    def files(self, source: str) -> list[str]:
        """Keys of the quarantine files of ``source``, oldest day first."""
        if not layout.SOURCE_RE.match(source):
            raise InputError(f"bad quarantine source {source[:40]!r}")
        return self.storage.list(f"quarantine/source={source}")

    def read(self, key: str) -> pa.Table:
        """The rows of one quarantine file (:data:`~fleetscore.core.schema.REJECT_SCHEMA`)."""
        return self.storage.read_parquet(key)

    def keep_only(self, key: str, remaining: pa.Table) -> None:
        """Rewrite one quarantine file with just ``remaining`` (delete it when nothing remains)."""
        if remaining.num_rows:
            self.storage.write_parquet(key, remaining)
        else:
            self.storage.delete(key)

    def recent(self, limit: int = 1000, source: str | None = None) -> pa.Table:
        """The most recent quarantined rows (of all sources, or of one: import, http, mqtt, late), newest files first."""
        keys = sorted(self.storage.list("quarantine"), reverse=True)
        if source is not None:
            keys = [k for k in keys if k.startswith(f"quarantine/source={source}/")]
        parts, rows = [], 0
        for key in keys:
            table = self.storage.read_parquet(key)
            name = key.split("/")[1].removeprefix("source=")
            parts.append(table.append_column("source", pa.array([name] * table.num_rows, pa.string())))
            rows += table.num_rows
            if rows >= limit:
                break
        if not parts:
            return pa.table({"row": pa.array([], pa.int64()), "reason": pa.array([], pa.string())})
        return pa.concat_tables(parts, promote_options="default").slice(0, limit)
