"""Import: tables or CSV / Parquet files → validated readings landed in storage, rejected rows quarantined.

Files are streamed in batches (`fleetscore.storage.files`), so memory stays bounded; bad rows never
abort the good ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from fleetscore.core.schema import validate_readings
from fleetscore.errors import InputError
from fleetscore.services.context import Context
from fleetscore.storage.files import parse_column_map, read_batches
from fleetscore.storage.quarantine import QuarantineStore
from fleetscore.storage.readings import ReadingStore


@dataclass
class ImportResult:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    quarantine: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def import_table(ctx: Context, table: pa.Table, source: str, row_offset: int = 0) -> ImportResult:
    """Validate and land one table of raw readings; quarantine rejected rows. Returns the counts."""
    result = ImportResult()
    validated = validate_readings(table, row_offset=row_offset)
    landed = ReadingStore(ctx.storage).land(validated.good)
    result.accepted, result.duplicates = landed.accepted, landed.duplicates
    if validated.rejected.num_rows:
        result.rejected = validated.rejected.num_rows
        result.quarantine = QuarantineStore(ctx.storage).write(validated.rejected, source, ctx.clock())
    return result


def _batches(path: Path, mapping: dict[str, str] | None, bad_rows: list[dict[str, Any]]) -> Iterator[pa.Table]:
    """The file's batches; any Arrow failure while reading (an unsupported Parquet type or codec) is an InputError."""
    try:
        yield from read_batches(path, mapping, bad_rows)
    except pa.ArrowException as exc:
        raise InputError(f"{path}: cannot read: {str(exc)[:300]}") from None


def import_file(ctx: Context, path: Path, columns: str | None = None) -> ImportResult:
    """Import a CSV or Parquet file in batches; bad rows never abort the good ones."""
    mapping = parse_column_map(columns)
    bad_rows: list[dict[str, Any]] = []
    total = ImportResult()
    quarantined: list[dict[str, Any]] = []
    offset = 0
    for batch in _batches(path, mapping, bad_rows):
        try:
            part = import_table(ctx, batch, "import", row_offset=offset)
        except InputError as exc:  # e.g. a column of a compound type: say which file
            raise InputError(f"{path}: {exc}") from None
        offset += batch.num_rows
        total.accepted += part.accepted
        total.duplicates += part.duplicates
        total.rejected += part.rejected
        if part.quarantine:
            quarantined.append(part.quarantine)
    if bad_rows:
        malformed = pa.table(
            {
                "row": pa.array([r["row"] for r in bad_rows], pa.int64()),
                "ts": pa.array([r["text"] for r in bad_rows], pa.string()),
                "device": pa.nulls(len(bad_rows), pa.string()),
                "sensor": pa.nulls(len(bad_rows), pa.string()),
                "value": pa.nulls(len(bad_rows), pa.string()),
                "reason": pa.array([r["reason"] for r in bad_rows], pa.string()),
            }
        )
        total.rejected += malformed.num_rows
        quarantined.append(QuarantineStore(ctx.storage).write(malformed, "import", ctx.clock()))
    if quarantined:
        reasons: Counter[str] = Counter()
        for q in quarantined:
            reasons.update(q["reasons"])
        total.quarantine = {
            "paths": [q["path"] for q in quarantined],
            "rows": sum(q["rows"] for q in quarantined),
            "reasons": dict(reasons.most_common()),
            "sample": [s for q in quarantined for s in q["sample"]][:20],
        }
    return total
