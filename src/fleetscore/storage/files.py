"""Local files in and out: CSV/Parquet readers for import (column names by alias or --columns) and writers for export.

Reading streams a file in batches, so memory stays bounded for large files; CSV cells are read as
text, so a bad cell rejects its row (with the reason) instead of failing the whole file. Writing is
atomic (a temporary file renamed into place).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.schema import REQUIRED_COLUMNS
from fleetscore.errors import InputError

BATCH_ROWS = 1_000_000
#: Header names recognised without --columns (case-insensitive), incl. the classic TS,Device,Tag,Value.
ALIASES = {
    "ts": ("ts", "timestamp", "time"),
    "device": ("device", "device_id"),
    "sensor": ("sensor", "tag", "sensor_id"),
    "value": ("value", "val"),
}



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


def resolve_columns(names: list[str], mapping: dict[str, str] | None, optional: tuple[str, ...] = ()) -> dict[str, str]:
    """Map canonical names to the file's column names, by --columns or by known aliases; an ``optional``
    column may be absent (it is then left out of the mapping)."""
    if mapping:
        absent = [src for src in mapping.values() if src not in names]
        if absent:
            raise InputError(f"--columns names {', '.join(absent)} which the file does not have (it has {', '.join(names)})")
        return mapping
    lower = {n.strip().lower(): n for n in names}
    found: dict[str, str] = {}
    for canonical, aliases in ALIASES.items():
        match = next((lower[a] for a in aliases if a in lower), None)
        if match is None and canonical in optional:
            continue
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
        reason = f"malformed CSV row: {row.actual_columns} columns, expected {row.expected_columns}"
        bad_rows.append({"row": row.number, "text": (row.text or "")[:1024], "reason": reason})
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


def write_table(table: pa.Table, out: Path, fmt: str | None = None) -> str:
    """Write an Arrow table to CSV or Parquet (by ``fmt`` or the file's extension), atomically; the format."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fmt = fmt or ("parquet" if out.suffix.lower() in (".parquet", ".pq") else "csv" if out.suffix.lower() == ".csv" else None)
    if fmt not in ("csv", "parquet"):
        raise InputError(f"--out {out}: use a .csv or .parquet file name")
    if out.parent and not out.parent.exists():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp, compression="zstd")
        else:
            pacsv.write_csv(_csv_ready(table), tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return fmt


def _csv_ready(table: pa.Table) -> pa.Table:
    """Timestamps as ISO 8601 with Z, so a CSV round-trips unambiguously; lists (``top_sensors``) as
    their items joined by ``|`` (CSV has no lists; null stays empty)."""
    cols = []
    for field, col in zip(table.schema, table.columns):
        if pa.types.is_timestamp(field.type):
            fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if _has_fraction(col) else "%Y-%m-%dT%H:%M:%SZ"
            col = pc.strftime(col, format=fmt)
        elif pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            col = pc.binary_join(pc.cast(col, pa.list_(pa.string())), "|")
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _has_fraction(col: pa.ChunkedArray) -> bool:
    us = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return bool((us % 1_000_000 != 0).any())


def reference_table(predictions: pa.Table) -> pa.Table:
    """Predictions in the classic design's CSV layout: ``TS,Device,Tag,Val,Prediction`` (1 = anomaly)."""
    ts = _csv_ready(predictions.select(["ts"])).column("ts")
    return pa.table({"TS": ts, "Device": predictions.column("device"), "Tag": predictions.column("sensor"),
                     "Val": predictions.column("value"),
                     "Prediction": pc.cast(predictions.column("is_anomaly"), pa.int8())})
