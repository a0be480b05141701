"""Incident commands: the ``incidents`` group (list, show, ack, mark)."""

from typing import Annotated, Any

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, emit, handle_errors, open_fleet, table

incidents = typer.Typer(help="Incidents: a device's flags grouped into what an operator acts on; acknowledge and mark them.",
                        no_args_is_help=True)

LIST_COLUMNS = ["id", "device", "status", "start", "end", "severity", "flags", "sensors", "mark"]
SHOW_FIELDS = ["id", "device", "status", "start", "last_flag", "end", "severity", "flags", "interval_s",
               "acknowledged_by", "acknowledged_at", "resolved_at", "superseded_by", "updated_at"]
IdArg = Annotated[str, typer.Argument(help="Incident id (see `fleetscore incidents list`).")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who you are (default: the OS user).")]


def _sensors(row: dict[str, Any]) -> str:
    return ", ".join(f"{s['sensor']} ({s['flags']})" for s in row["sensors"])


@incidents.command("list")
@handle_errors
def list_incidents(
    status: Annotated[str | None, typer.Option(
        help="open, acknowledged, resolved, superseded or active (default: all but superseded).")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device's incidents.")] = None,
    sensor: Annotated[str | None, typer.Option(help="Only incidents involving this sensor.")] = None,
    since: Annotated[str | None, typer.Option(help="Only incidents with a flag at or after this time (ISO 8601).")] = None,
    min_severity: Annotated[float | None, typer.Option("--min-severity", help="Only incidents whose peak is at least this.",
                                                       min=0, max=100)] = None,
    limit: Annotated[int, typer.Option(help="At most this many, active first, then newest.", min=1, max=100_000)] = 100,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List incidents: open and acknowledged ones first, then the newest."""
    found = open_fleet(home).incidents(status=status, device=device, since=since, limit=limit, sensor=sensor,
                                       min_severity=min_severity)
    rows = [i.as_dict() for i in found]
    emit(json_out, {"incidents": rows}, lambda c: c.print(table(
        f"incidents: {len(rows)}", LIST_COLUMNS,
        [[r[k] if k != "sensors" else _sensors(r) for k in LIST_COLUMNS] for r in rows])))


@incidents.command("show")
@handle_errors
def show(incident_id: IdArg, home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Show one incident: its span, status, sensors and marks."""
    _print(json_out, open_fleet(home).incident(incident_id).as_dict())


@incidents.command("ack")
@handle_errors
def ack(incident_id: IdArg, by: ByOpt = None, home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Acknowledge an incident: you have taken it (it stays acknowledged until it resolves)."""
    _print(json_out, open_fleet(home).ack_incident(incident_id, _who(by)).as_dict())


@incidents.command("mark")
@handle_errors
def mark(
    incident_id: IdArg,
    mark_as: Annotated[str, typer.Option("--as", help="true (a real problem), false (a false alarm) or ignore.")],
    note: Annotated[str, typer.Option(help="Why (kept with the mark).")] = "",
    by: ByOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Mark an incident true, false or ignore, with a note; marks are kept with their time and name."""
    _print(json_out, open_fleet(home).mark_incident(incident_id, mark_as, note, _who(by)).as_dict())


def _who(by: str | None) -> str:
    """``--by``, else the OS user; InputError when neither is known."""
    if by is not None:
        return by
    import getpass

    from fleetscore.errors import InputError

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise InputError("cannot tell who you are from the OS: give --by NAME") from None


def _print(json_out: bool, row: dict[str, Any]) -> None:
    def human(c: Any) -> None:
        c.print(table(f"incident {row['id']}", ["field", "value"],
                      [[k, ", ".join(row[k]) if k == "superseded_by" else row[k]] for k in SHOW_FIELDS]))
        c.print(table("sensors", ["sensor", "flags"], [[s["sensor"], s["flags"]] for s in row["sensors"]]))
        if row["marks"]:
            c.print(table("marks", ["mark", "by", "at", "note"], [[m["mark"], m["by"], m["at"], m["note"]]
                                                                   for m in row["marks"]]))

    emit(json_out, row, human)
