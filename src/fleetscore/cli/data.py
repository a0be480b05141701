"""Data commands: simulate, import, readings, quarantine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, emit, handle_errors, open_fleet, table


def write_table(table, out: Path, fmt: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """Write an Arrow table to CSV or Parquet (by ``fmt`` or the file's extension), atomically."""
    import os

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from fleetscore.errors import InputError

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


def _csv_ready(table):  # type: ignore[no-untyped-def]
    """Timestamps as ISO 8601 with Z, so a CSV round-trips unambiguously."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for field, col in zip(table.schema, table.columns):
        if pa.types.is_timestamp(field.type):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%S.%fZ") if _has_fraction(col) else pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _has_fraction(col) -> bool:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    us = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return bool((us % 1_000_000 != 0).any())


def register(app: typer.Typer) -> None:
    quarantine_app = typer.Typer(help="Rejected readings and why they were rejected.", no_args_is_help=True)
    app.add_typer(quarantine_app, name="quarantine")

    @app.command()
    @handle_errors
    def simulate(
        out: Annotated[Path, typer.Option("--out", help="Output file (.csv or .parquet).")],
        devices: Annotated[int, typer.Option(help="Number of devices.")] = 10,
        sensors: Annotated[int, typer.Option(help="Sensors per device.")] = 4,
        start: Annotated[str, typer.Option("--start", help="First timestamp (ISO 8601).")] = "2026-01-01T00:00:00Z",
        hours: Annotated[float, typer.Option(help="Hours of readings.")] = 24.0,
        interval: Annotated[str, typer.Option(help="Time between readings, e.g. 60s, 5m.")] = "60s",
        anomaly_rate: Annotated[float, typer.Option(help="Fraction of readings that are injected anomalies.")] = 0.01,
        seed: Annotated[int, typer.Option(help="Random seed (same seed, same fleet).")] = 0,
        json_out: JsonOpt = False,
    ) -> None:
        """Simulate a fleet's readings with labelled anomalies (columns ts,device,sensor,value,label,anomaly_kind)."""
        from fleetscore.core.simulate import simulate_fleet
        from fleetscore.core.times import iso, parse_time
        from fleetscore.core.windows import parse_duration

        start_us = parse_time(start, "--start")
        from datetime import datetime, timezone

        tbl = simulate_fleet(devices, sensors, datetime.fromtimestamp(start_us / 1e6, tz=timezone.utc), hours,
                             float(parse_duration(interval)), anomaly_rate, seed)
        fmt = write_table(tbl, out)
        labels = int(sum(tbl.column("label").to_pylist())) if tbl.num_rows < 5_000_000 else None
        payload = {"out": str(out), "format": fmt, "rows": tbl.num_rows, "devices": devices, "sensors": sensors,
                   "start": iso(start_us), "hours": hours, "anomalies": labels}
        emit(json_out, payload, lambda c: c.print(f"wrote {tbl.num_rows:,} readings ({labels} anomalies) to {out}"))

    @app.command("import")
    @handle_errors
    def import_(
        file: Annotated[Path, typer.Argument(help="CSV or Parquet file with readings.")],
        columns: Annotated[Optional[str], typer.Option(help="Column names, e.g. ts=TS,device=Device,sensor=Tag,value=Value.")] = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Import readings from a file; bad rows go to the quarantine with their reason."""
        fleet = open_fleet(home)
        result = fleet.import_file(file, columns)

        def human(c) -> None:  # type: ignore[no-untyped-def]
            c.print(f"accepted {result.accepted:,}  rejected {result.rejected:,}  duplicates {result.duplicates:,}")
            if result.quarantine:
                c.print(f"rejected rows are in: {', '.join(result.quarantine['paths'])}")
                c.print(table("reasons", ["reason", "rows"], [[k, v] for k, v in result.quarantine["reasons"].items()]))

        emit(json_out, result.as_dict(), human)

    @app.command()
    @handle_errors
    def readings(
        start: Annotated[str, typer.Option("--from", help="Window start (ISO 8601, inclusive).")],
        end: Annotated[str, typer.Option("--to", help="Window end (ISO 8601, exclusive).")],
        out: Annotated[Path, typer.Option("--out", help="Output file (.csv or .parquet).")],
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Export the landed readings of a time window."""
        tbl = open_fleet(home).readings(start, end)
        fmt = write_table(tbl, out)
        emit(json_out, {"out": str(out), "format": fmt, "rows": tbl.num_rows},
             lambda c: c.print(f"wrote {tbl.num_rows:,} readings to {out}"))

    @quarantine_app.command("list")
    @handle_errors
    def quarantine_list(
        limit: Annotated[int, typer.Option(help="At most this many rows.")] = 100,
        source: Annotated[Optional[str], typer.Option(help="Only this source: import, http, mqtt or late.")] = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List quarantined readings, newest first, with the reason each was rejected."""
        rows = open_fleet(home).quarantine(limit, source).to_pylist()
        cols = ["source", "row", "ts", "device", "sensor", "value", "reason"]
        emit(json_out, {"rows": rows, "count": len(rows)},
             lambda c: c.print(table(f"quarantine ({len(rows)} rows)", cols, [[r.get(k) for k in cols] for r in rows])))
