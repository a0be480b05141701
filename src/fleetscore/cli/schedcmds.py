"""Scheduling commands: the ``schedule`` group (add, list, windows, pause, resume, remove), ``scheduler`` and ``gc``."""

from typing import Annotated, Any

import typer

from fleetscore.cli.output import (
    MAX_KEEP_S,
    HomeOpt,
    JsonOpt,
    MaxFailedOpt,
    NowOpt,
    WorkersOpt,
    duration,
    emit,
    exit_for,
    handle_errors,
    open_fleet,
    parse_time_flag,
    table,
)

commands = typer.Typer()
schedule = typer.Typer(help="Cron schedules that score (or train) every window on their own.", no_args_is_help=True)

SCHEDULE_COLUMNS = ["name", "kind", "cron", "window", "version", "paused", "next_fire", "last_status"]
WINDOW_COLUMNS = ["schedule", "window_from", "window_to", "status", "run_id", "version", "attempts", "error"]


@schedule.command("add")
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="Schedule name (letters, digits, '_', '.', '-').")],
    cron: Annotated[str, typer.Option(help="When it fires, 5-field cron in UTC, e.g. '5 * * * *' (or @hourly).")],
    window: Annotated[str, typer.Option(help="Window each fire runs: scoring window, or training span with --train.")] = "1h",
    lag: Annotated[str, typer.Option(help="Run the latest window that ended at least this long before the fire.")] = "0s",
    version: Annotated[str | None, typer.Option(help="Score with this model version.")] = None,
    released: Annotated[bool, typer.Option("--released", help="Score with the version released at run time (default).")] = False,
    train: Annotated[bool, typer.Option("--train", help="Train a new version on the window instead of scoring.")] = False,
    no_release: Annotated[bool, typer.Option("--no-release", help="With --train: do not release the new version.")] = False,
    start: Annotated[str | None, typer.Option(
        help="Fires after this time are due (default: now); missed ones are caught up.")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a schedule: every fire of its cron runs one window (scoring, or training with --train)."""
    from fleetscore.core.schedule import new_schedule

    fleet = open_fleet(home)
    spec = new_schedule(name, cron, duration(window, "--window"), duration(lag, "--lag", allow_zero=True),
                        train=train, version=version, released=released, release=not no_release,
                        cursor_us=fleet.clock() if start is None else parse_time_flag(start, "--start"))
    fleet.add_schedule(spec)
    payload = _schedule_row(spec, None, fleet.clock()) | {"cursor": spec.cursor_us}
    emit(json_out, payload, lambda c: c.print(
        f"added schedule {spec.name}: {spec.kind} {_human_s(spec.window_s)} windows on '{spec.cron}', "
        f"next fire {payload['next_fire']}"))


@schedule.command("list")
@handle_errors
def list_schedules(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """List schedules with their next fire and the status of their latest window."""
    fleet = open_fleet(home)
    store, now = fleet.schedules(), fleet.clock()
    rows = [_schedule_row(s, next(iter(store.windows(s.name, 1)), None), now) for s in store.all()]
    emit(json_out, {"schedules": rows},
         lambda c: c.print(table("schedules", SCHEDULE_COLUMNS, [[r[k] for k in SCHEDULE_COLUMNS] for r in rows])))


@schedule.command("windows")
@handle_errors
def windows(
    name: Annotated[str | None, typer.Argument(help="Schedule (default: all).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many windows, newest first.")] = 50,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the windows schedules planned: status, run, attempts, error."""
    store = open_fleet(home).schedules()
    if name is not None:
        store.get(name)
    rows = [w.as_dict() for w in store.windows(name, limit)]
    emit(json_out, {"windows": rows},
         lambda c: c.print(table("schedule windows", WINDOW_COLUMNS, [window_cells(r) for r in rows])))


def _set_paused(name: str, paused: bool, home: Any, json_out: bool) -> None:
    spec = open_fleet(home).schedules().set_paused(name, paused)
    emit(json_out, {"name": spec.name, "paused": spec.paused},
         lambda c: c.print(f"{'paused' if paused else 'resumed'} schedule {spec.name}"))


@schedule.command("pause")
@handle_errors
def pause(name: Annotated[str, typer.Argument(help="Schedule name.")], home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Pause a schedule: it plans and runs nothing until resumed."""
    _set_paused(name, True, home, json_out)


@schedule.command("resume")
@handle_errors
def resume(name: Annotated[str, typer.Argument(help="Schedule name.")], home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Resume a paused schedule; windows missed while paused are caught up (up to max_catch_up)."""
    _set_paused(name, False, home, json_out)


@schedule.command("remove")
@handle_errors
def remove(name: Annotated[str, typer.Argument(help="Schedule name.")], home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a schedule and its window bookkeeping (its runs and predictions stay)."""
    open_fleet(home).schedules().remove(name)
    emit(json_out, {"name": name, "removed": True}, lambda c: c.print(f"removed schedule {name}"))


@commands.command()
@handle_errors
def scheduler(
    once: Annotated[bool, typer.Option("--once", help="Run what is due now, then exit (for cron or CI).")] = False,
    max_catch_up: Annotated[int | None, typer.Option(
        "--max-catch-up", help="After downtime, run at most this many missed windows per schedule (default 24).",
        min=1, max=10_000)] = None,
    poll: Annotated[str | None, typer.Option(help="Look at the schedules at least this often (default 30s).")] = None,
    lease: Annotated[str | None, typer.Option(
        help="Lease on a running window; a crashed scheduler's windows are taken over after it (default 60s).")] = None,
    workers: WorkersOpt = None,
    max_failed_models: MaxFailedOpt = None,
    now: NowOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the schedules: each due window once, oldest first, never two runs of a window at once."""
    from fleetscore.clock import wall_clock
    from fleetscore.core.times import iso
    from fleetscore.schedule.scheduler import Scheduler, TickReport, run_until_signalled

    fleet = open_fleet(home, max_failed_models=max_failed_models)
    settings = fleet.config.schedule.with_overrides(
        max_catch_up=max_catch_up, poll_s=None if poll is None else duration(poll, "--poll"),
        lease_s=None if lease is None else duration(lease, "--lease"))

    def say(message: str) -> None:
        typer.echo(f"{iso(wall_clock() // 1_000_000 * 1_000_000)} {message}", err=True)

    frozen = None if now is None else parse_time_flag(now, "--now")
    clock = fleet.clock if frozen is None else (lambda: frozen)
    sched = Scheduler(fleet, clock=clock, settings=settings, workers=workers, say=say)
    try:
        total = sched.tick() if once else run_until_signalled(sched, TickReport())
    finally:
        sched.close()
    emit(json_out, total.as_dict(), lambda c: c.print(table(
        "windows run", WINDOW_COLUMNS, [window_cells(r.as_dict()) for r in total.ran])))
    if once:
        exit_for(*(r.status for r in total.ran))


@commands.command()
@handle_errors
def gc(
    keep: Annotated[str, typer.Option(help="Keep this much history, e.g. 30d; older predictions, logs, runs and versions go.")],
    readings: Annotated[bool, typer.Option(
        "--readings", help="Also delete old readings (never those a schedule still needs).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be deleted.")] = False,
    now: NowOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete what is older than --keep by the retention policy; never the released version or what a schedule needs."""
    result = open_fleet(home, now).gc(duration(keep, "--keep", MAX_KEEP_S), readings=readings, dry_run=dry_run)
    payload = result.as_dict()

    def human(c: Any) -> None:
        verb = "would delete" if dry_run else "deleted"
        counts = ", ".join(f"{n} {what}" for what, n in result.plan.counts().items())
        c.print(f"{verb} (older than {payload['cutoff']}): {counts}")
        if result.plan.kept:
            c.print(table("kept", ["what", "why"], [[k, v] for k, v in result.plan.kept.items()]))

    emit(json_out, payload, human)


def _human_s(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _schedule_row(spec: Any, last: Any, now_us: int) -> dict[str, Any]:
    from fleetscore.core.schedule import next_fire
    from fleetscore.core.times import iso

    return {"name": spec.name, "kind": spec.kind, "cron": spec.cron, "window": _human_s(spec.window_s),
            "lag": _human_s(spec.lag_s) if spec.lag_s else "0s",
            "version": spec.version or ("(new)" if spec.kind == "train" else "released"), "paused": spec.paused,
            "release": spec.release, "next_fire": iso(next_fire(spec, max(now_us, spec.cursor_us))),
            "last_window": iso(last.window_from) if last else None, "last_status": last.status if last else None}


def window_cells(row: dict[str, Any]) -> list[Any]:
    """A window row for a table: the error cut short (the run's logs and `runs show` have it whole)."""
    return [row[k] for k in WINDOW_COLUMNS[:-1]] + [(row["error"] or "")[:60]]
