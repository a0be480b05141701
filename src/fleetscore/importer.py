"""File import: CSV or Parquet → validated readings landed in storage, rejected rows quarantined.

Files are streamed in batches so memory stays bounded for large files. CSV columns are read as
text, so a bad cell rejects its row (with the reason) instead of failing the whole file.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from fleetscore.core.schema import REQUIRED_COLUMNS, validate_readings
from fleetscore.errors import InputError
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage
from fleetscore.storage.readings import ReadingStore

BATCH_ROWS = 1_000_000
#: Header names recognised without --columns (case-insensitive), incl. the classic TS,Device,Tag,Value.
ALIASES = {
    "ts": ("ts", "timestamp", "time"),
    "device": ("device", "device_id"),
    "sensor": ("sensor", "tag", "sensor_id"),
    "value": ("value", "val"),
}


@dataclass
class ImportResult:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    quarantine: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_column_map(text: str | None) -> dict[str, str] | None:
    """``ts=TS,device=Device,sensor=Tag,value=Value`` → {canonical: file column}."""
    if not text:
        return None
    mapping: dict[str, str] = {}
    for part in text.split(","):
        name, sep, source = part.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or name not in REQUIRED_COLUMNS or not source:
            raise InputError(f"--columns: {part!r} should be NAME=COLUMN with NAME one of ts, device, sensor, value")
        mapping[name] = source
    missing = [c for c in REQUIRED_COLUMNS if c not in mapping]
    if missing:
        raise InputError(f"--columns: no mapping for {', '.join(missing)}")
    return mapping


def resolve_columns(names: list[str], mapping: dict[str, str] | None) -> dict[str, str]:
    """Map canonical names to the file's column names, by --columns or by known aliases."""
    if mapping:
        absent = [src for src in mapping.values() if src not in names]
        if absent:
            raise InputError(f"--columns names {', '.join(absent)} which the file does not have (it has {', '.join(names)})")
        return mapping
    lower = {n.strip().lower(): n for n in names}
    found: dict[str, str] = {}
    for canonical, aliases in ALIASES.items():
        match = next((lower[a] for a in aliases if a in lower), None)
        if match is None:
            raise InputError(
                f"cannot find a {canonical} column among {', '.join(names)[:200]}; "
                "name them with --columns ts=...,device=...,sensor=...,value=..."
            )
        found[canonical] = match
    return found


def _csv_batches(path: Path, mapping: dict[str, str] | None, bad_rows: list[dict[str, Any]]) -> Iterator[pa.Table]:
    import pyarrow.csv as pacsv

    with open(path, "rb") as fh:
        header = fh.readline()
    try:
        names = pacsv.read_csv(pa.py_buffer(header)).schema.names
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from exc
    cols = resolve_columns(names, mapping)

    def on_bad_row(row: Any) -> str:
        bad_rows.append({"row": row.number, "text": (row.text or "")[:1024], "reason": f"malformed CSV row: {row.actual_columns} columns, expected {row.expected_columns}"})
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=32 << 20),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_bad_row, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, include_columns=list(cols.values()),
                strings_can_be_null=False,
            ),
        )
        for batch in reader:
            yield _rename(pa.Table.from_batches([batch]), cols)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse CSV: {exc}") from exc


def _parquet_batches(path: Path, mapping: dict[str, str] | None) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    cols = resolve_columns(pf.schema_arrow.names, mapping)
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=list(cols.values())):
            yield _rename(pa.Table.from_batches([batch]), cols)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read Parquet: {exc}") from exc


def _rename(table: pa.Table, cols: dict[str, str]) -> pa.Table:
    return pa.table({canonical: table.column(source) for canonical, source in cols.items()})


def read_batches(path: Path, mapping: dict[str, str] | None, bad_rows: list[dict[str, Any]]) -> Iterator[pa.Table]:
    """Batches of a CSV or Parquet file with columns ts, device, sensor, value (raw types)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1" or path.suffix.lower() in (".parquet", ".pq"):
        return _parquet_batches(path, mapping)
    return _csv_batches(path, mapping, bad_rows)


def import_table(storage: Storage, table: pa.Table, source: str, row_offset: int = 0) -> ImportResult:
    """Validate and land one table of raw readings; quarantine rejected rows. Returns the counts."""
    result = ImportResult()
    validated = validate_readings(table, row_offset=row_offset)
    landed = ReadingStore(storage).land(validated.good)
    result.accepted, result.duplicates = landed.accepted, landed.duplicates
    if validated.rejected.num_rows:
        result.rejected = validated.rejected.num_rows
        result.quarantine = write_quarantine(storage, validated.rejected, source)
    return result


def write_quarantine(storage: Storage, rejected: pa.Table, source: str, *, batch: str | None = None,
                     day: datetime | None = None) -> dict[str, Any]:
    """Store rejected rows with their reasons; returns where they went and a summary.

    ``batch`` (8-32 hex) and ``day`` name the file; giving both makes a retried write replace the
    same file (compaction does this) instead of adding a second copy.
    """
    key = layout.quarantine_key(source, day or datetime.now(timezone.utc), batch or uuid.uuid4().hex)
    storage.write_parquet(key, rejected)
    reasons = Counter(rejected.column("reason").to_pylist())
    return {
        "path": storage.display(key),
        "rows": rejected.num_rows,
        "reasons": dict(reasons.most_common()),
        "sample": rejected.slice(0, 20).to_pylist(),
    }


def import_file(storage: Storage, path: Path, columns: str | None = None) -> ImportResult:
    """Import a CSV or Parquet file in batches; bad rows never abort the good ones."""
    mapping = parse_column_map(columns)
    bad_rows: list[dict[str, Any]] = []
    total = ImportResult()
    quarantined: list[dict[str, Any]] = []
    offset = 0
    for batch in read_batches(path, mapping, bad_rows):
        part = import_table(storage, batch, "import", row_offset=offset)
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
        quarantined.append(write_quarantine(storage, malformed, "import"))
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
