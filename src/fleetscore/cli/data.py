"""Data commands: simulate, import, readings, and the ``quarantine`` group."""

from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, emit, export, handle_errors, open_fleet, parse_time_flag, table

commands = typer.Typer()
quarantine = typer.Typer(help="Rejected readings and why they were rejected.", no_args_is_help=True)


@commands.command()
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
    from datetime import datetime

    from fleetscore.core.simulate import simulate_fleet
    from fleetscore.core.times import iso, parse_duration
    from fleetscore.storage.files import write_table

    start_us = parse_time_flag(start, "--start")
    tbl = simulate_fleet(devices, sensors, datetime.fromtimestamp(start_us / 1e6, tz=UTC), hours,
                         float(parse_duration(interval)), anomaly_rate, seed)
    fmt = write_table(tbl, out)
    labels = int(sum(tbl.column("label").to_pylist())) if tbl.num_rows < 5_000_000 else None
    payload = {"out": str(out), "format": fmt, "rows": tbl.num_rows, "devices": devices, "sensors": sensors,
               "start": iso(start_us), "hours": hours, "anomalies": labels}
    emit(json_out, payload, lambda c: c.print(f"wrote {tbl.num_rows:,} readings ({labels} anomalies) to {out}"))


@commands.command("import")
@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file with readings.")],
    columns: Annotated[str | None, typer.Option(help="Column names, e.g. ts=TS,device=Device,sensor=Tag,value=Value.")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import readings from a file; bad rows go to the quarantine with their reason."""
    fleet = open_fleet(home)
    result = fleet.import_file(file, columns)

    def human(c: Any) -> None:
        c.print(f"accepted {result.accepted:,}  rejected {result.rejected:,}  duplicates {result.duplicates:,}")
        if result.quarantine:
            c.print(f"rejected rows are in: {', '.join(result.quarantine['paths'])}")
            c.print(table("reasons", ["reason", "rows"], [[k, v] for k, v in result.quarantine["reasons"].items()]))

    emit(json_out, result.as_dict(), human)


@commands.command()
@handle_errors
def readings(
    start: Annotated[str, typer.Option("--from", help="Window start (ISO 8601, inclusive).")],
    end: Annotated[str, typer.Option("--to", help="Window end (ISO 8601, exclusive).")],
    out: Annotated[Path, typer.Option("--out", help="Output file (.csv or .parquet).")],
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export the landed readings of a time window."""
    export(json_out, open_fleet(home).readings(start, end), out, "readings")


@quarantine.command("list")
@handle_errors
def quarantine_list(
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 100,
    source: Annotated[str | None, typer.Option(help="Only this source: import, http, mqtt or late.")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List quarantined readings, newest first, with the reason each was rejected."""
    rows = open_fleet(home).quarantine(limit, source).to_pylist()
    cols = ["source", "row", "ts", "device", "sensor", "value", "reason"]
    emit(json_out, {"rows": rows, "count": len(rows)},
         lambda c: c.print(table(f"quarantine ({len(rows)} rows)", cols, [[r.get(k) for k in cols] for r in rows])))


@quarantine.command("replay")
@handle_errors
def quarantine_replay(
    reason: Annotated[str, typer.Option(help="Replay the readings quarantined for this reason (late).")] = "late",
    device: Annotated[str | None, typer.Option(help="Only this device's readings.")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Land quarantined late readings (idempotently) and list the scored windows they touch, for backfill."""
    result = open_fleet(home).replay_quarantine(reason, device).as_dict()

    def human(c: Any) -> None:
        c.print(f"replayed {result['replayed']:,} readings: landed {result['landed']:,}, "
                f"already stored {result['duplicates']:,}", markup=False)
        for w in result["windows"]:
            c.print(f"scored window {w['window_from']}..{w['window_to']} changed; rescore it: {w['backfill']}",
                    markup=False)

    emit(json_out, result, human)
