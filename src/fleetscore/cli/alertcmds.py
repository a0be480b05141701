"""Alerting commands: the ``alerts`` group (rules, test, deliver, silence add|list|remove, dead-letters list|retry)."""

from typing import Annotated, Any

import typer

from fleetscore.cli.groups import Group
from fleetscore.cli.output import EXIT_FAILURE, HomeOpt, JsonOpt, emit, handle_errors, open_fleet, table

alerts = typer.Typer(help="Alert rules and receivers (fleetscore.toml), silences, delivery and dead letters.",
                     no_args_is_help=True)
silence = typer.Typer(help="Silences and maintenance windows: matching incidents notify nobody.", no_args_is_help=True)
dead_letters = typer.Typer(help="Notifications whose receiver kept failing: list them, send them again.",
                           no_args_is_help=True)
alerts.add_typer(silence, name="silence", cls=Group)
alerts.add_typer(dead_letters, name="dead-letters", cls=Group)

RULE_COLUMNS = ["name", "device", "sensor", "min_severity", "min_duration_s", "min_flags", "trigger_window_s",
                "recovery_window_s", "receivers"]
RECEIVER_COLUMNS = ["name", "type", "url", "timeout_s", "max_attempts", "backoff_s", "auth", "secret_set"]
SILENCE_COLUMNS = ["id", "device", "sensor", "start", "end", "note", "created_by"]
LETTER_COLUMNS = ["id", "rule", "receiver", "incident", "device", "state", "attempts", "error", "created_at"]
#: Longest pattern and note a silence takes.
MAX_PATTERN, MAX_NOTE = 256, 2000


def _cells(row: dict[str, Any], columns: list[str]) -> list[Any]:
    return [", ".join(v) if isinstance(v := row[c], list) else v for c in columns]


@alerts.command("rules")
@handle_errors
def rules(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """List the alert rules and receivers of fleetscore.toml (receiver secrets: only whether they are set)."""
    settings = open_fleet(home).alert_settings()
    payload = {"rules": [r.as_dict() for r in settings.rules], "receivers": [r.as_dict() for r in settings.receivers]}

    def human(c: Any) -> None:
        if not settings.rules and not settings.receivers:
            c.print("no alert rules: add [[alerts.rules]] and [[alerts.receivers]] to fleetscore.toml")
            return
        c.print(table("rules", RULE_COLUMNS, [_cells(r, RULE_COLUMNS) for r in payload["rules"]]))
        c.print(table("receivers", RECEIVER_COLUMNS, [_cells(r, RECEIVER_COLUMNS) for r in payload["receivers"]]))

    emit(json_out, payload, human)


@alerts.command("test")
@handle_errors
def test(rule: Annotated[str, typer.Argument(help="Rule name (see `fleetscore alerts rules`).")],
         home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Send a test notification to each receiver of RULE now; exit 1 if any receiver did not take it."""
    results = open_fleet(home).test_alert(rule)
    payload = {"rule": rule, "results": [r.as_dict() for r in results]}
    emit(json_out, payload, lambda c: c.print(table(f"test of rule {rule}", ["receiver", "ok", "error"],
                                                    [[r.receiver, r.ok, r.error] for r in results])))
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_FAILURE)


@alerts.command("deliver")
@handle_errors
def deliver(
    wait: Annotated[str, typer.Option(help="Keep delivering (and waiting for retries) at most this long.")] = "10s",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Deliver the due notifications now (what `serve` and `scheduler` do continuously)."""
    from fleetscore.cli.output import duration

    result = open_fleet(home).deliver_alerts(float(duration(wait, "--wait", allow_zero=True)))
    emit(json_out, result.as_dict(), lambda c: c.print(
        f"sent {result.sent}, failed {result.failed} (to retry), dead-lettered {result.dead}, pending {result.pending}"))


def _pattern(value: str | None, option: str) -> str | None:
    from fleetscore.errors import InputError

    if value is None:
        return None
    if not value or len(value) > MAX_PATTERN or not value.isprintable():
        raise InputError(f"{option}: expected a device/sensor pattern like 'pump-*' (printable, at most "
                         f"{MAX_PATTERN} characters), got {value[:80]!r}")
    return value


@silence.command("add")
@handle_errors
def silence_add(
    device: Annotated[str, typer.Option(help="Device pattern (fnmatch: pump-*, *).")],
    start: Annotated[str, typer.Option(help="Silence from (ISO 8601).")],
    end: Annotated[str, typer.Option(help="Silence until (ISO 8601, exclusive).")],
    sensor: Annotated[str | None, typer.Option(help="Sensor pattern (default: every sensor).")] = None,
    note: Annotated[str, typer.Option(help="Why (shown in lists).")] = "",
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a silence / maintenance window: incidents of matching devices and sensors notify nobody in it."""
    import getpass

    from fleetscore.errors import InputError

    if len(note) > MAX_NOTE:
        raise InputError(f"--note: at most {MAX_NOTE} characters, got {len(note)}")
    author = by if by is not None else getpass.getuser()
    if not author or len(author) > 64 or not author.isprintable():
        raise InputError(f"--by: expected a name of at most 64 printable characters, got {author[:80]!r}")
    found = open_fleet(home).add_silence(_pattern(device, "--device") or "", start, end,
                                         sensor=_pattern(sensor, "--sensor"), note=note, by=author)
    emit(json_out, found.as_dict(), lambda c: c.print(
        f"added silence {found.id}: {found.device} / {found.sensor or '*'} from {_iso(found.start_us)} "
        f"to {_iso(found.end_us)}"))


def _iso(us: int) -> str:
    from fleetscore.core.times import iso

    return iso(us)


@silence.command("list")
@handle_errors
def silence_list(
    active: Annotated[bool, typer.Option("--active", help="Only silences not over yet.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List silences and maintenance windows, by start."""
    rows = [s.as_dict() for s in open_fleet(home).silences(active)]
    emit(json_out, {"silences": rows},
         lambda c: c.print(table("silences", SILENCE_COLUMNS, [_cells(r, SILENCE_COLUMNS) for r in rows])))


@silence.command("remove")
@handle_errors
def silence_remove(silence_id: Annotated[int, typer.Argument(metavar="ID", help="Silence id.")],
                   home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a silence (notifications it suppressed stay unsent)."""
    found = open_fleet(home).remove_silence(silence_id)
    emit(json_out, {"id": found.id, "removed": True}, lambda c: c.print(f"removed silence {found.id}"))


@dead_letters.command("list")
@handle_errors
def letters_list(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1, max=100_000)] = 100,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List dead letters with the reason their receiver did not take them."""
    rows = [n.as_dict() for n in open_fleet(home).dead_letters(limit)]
    emit(json_out, {"dead_letters": rows},
         lambda c: c.print(table("dead letters", LETTER_COLUMNS, [_cells(r, LETTER_COLUMNS) for r in rows])))


@dead_letters.command("retry")
@handle_errors
def letters_retry(
    letter_id: Annotated[int | None, typer.Argument(metavar="[ID]", help="Dead letter id (or --all).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Queue dead letters again with fresh attempts and deliver them (for at most ``[alerts] deliver_wait``)."""
    from fleetscore.errors import InputError

    if (letter_id is None) == (not every):
        raise InputError("give a dead letter ID or --all (not both)")
    fleet = open_fleet(home)
    count = fleet.retry_dead_letters(None if every else [letter_id])
    result = fleet.deliver_alerts()
    emit(json_out, {"requeued": count, "delivery": result.as_dict()}, lambda c: c.print(
        f"queued {count} dead letter(s) again; sent {result.sent}, dead-lettered {result.dead}, "
        f"pending {result.pending}"))
