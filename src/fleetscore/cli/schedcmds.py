"""Scheduling and operations commands: schedule add/list/remove/pause/resume, scheduler, backfill, gc,
and ``runs retry`` / ``runs cancel`` / ``runs logs`` (added to the ``runs`` group of :mod:`runcmds`)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from fleetscore.cli.output import (
    EXIT_FAILURE,
    EXIT_PARTIAL,
    HomeOpt,
    JsonOpt,
    emit,
    handle_errors,
    open_fleet,
    progress_bar,
    table,
)

SCHEDULE_COLUMNS = ["name", "kind", "cron", "window", "version", "paused", "next_fire", "last_status"]
WINDOW_COLUMNS = ["schedule", "window_from", "window_to", "status", "run_id", "version", "attempts", "error"]
#: Longest schedule window (a training span) and retention period.
MAX_WINDOW_S = 366 * 86_400
MAX_KEEP_S = 100 * 366 * 86_400

NowOpt = Annotated[Optional[str], typer.Option(
    "--now", help="Act as if the time were T (ISO 8601), e.g. to replay a day; the clock then stands still.")]
WorkersOpt = Annotated[Optional[int], typer.Option(help="Worker processes (default: cores).", min=1, max=1024)]


def _duration(text: str, option: str, max_s: int = MAX_WINDOW_S) -> int:
    from fleetscore.core.windows import parse_duration
    from fleetscore.errors import InputError

    try:
        return parse_duration(text, max_s)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


def _now(now: str | None) -> int:
    from fleetscore.core.times import parse_time
    from fleetscore.schedule.scheduler import wall_clock

    return wall_clock() if now is None else parse_time(now, "--now")


def _human_s(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _exit_for_statuses(statuses: list[str]) -> None:
    if "failed" in statuses:
        raise typer.Exit(EXIT_FAILURE)
    if "partial" in statuses:
        raise typer.Exit(EXIT_PARTIAL)


def _runs_group(app: typer.Typer) -> typer.Typer:
    for group in app.registered_groups:
        if group.name == "runs" and group.typer_instance is not None:
            return group.typer_instance
    raise RuntimeError("the `runs` command group must be registered (cli.runcmds) before cli.schedcmds")


def register(app: typer.Typer) -> None:
    schedule_app = typer.Typer(help="Cron schedules that score (or train) every window on their own.", no_args_is_help=True)
    app.add_typer(schedule_app, name="schedule")
    runs_app = _runs_group(app)

    @schedule_app.command("add")
    @handle_errors
    def add(
        name: Annotated[str, typer.Argument(help="Schedule name (letters, digits, '_', '.', '-').")],
        cron: Annotated[str, typer.Option(help="When it fires, 5-field cron in UTC, e.g. '5 * * * *' (or @hourly).")],
        window: Annotated[str, typer.Option(help="Window each fire runs: scoring window, or training span with --train.")] = "1h",
        lag: Annotated[str, typer.Option(help="Run the latest window that ended at least this long before the fire.")] = "0s",
        version: Annotated[Optional[str], typer.Option(help="Score with this model version.")] = None,
        released: Annotated[bool, typer.Option("--released", help="Score with the version released at run time (default).")] = False,
        train: Annotated[bool, typer.Option("--train", help="Train a new version on the window instead of scoring.")] = False,
        no_release: Annotated[bool, typer.Option("--no-release", help="With --train: do not release the new version.")] = False,
        start: Annotated[Optional[str], typer.Option(help="Fires after this time are due (default: now); missed ones are caught up.")] = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Add a schedule: every fire of its cron runs one window (scoring, or training with --train)."""
        from fleetscore.catalog.schedules import ScheduleStore
        from fleetscore.catalog.sql import now_iso
        from fleetscore.errors import InputError
        from fleetscore.schedule.plan import ScheduleSpec, check_cron, check_name
        from fleetscore.storage import layout

        if version and released:
            raise InputError("give --version V or --released, not both")
        if train and version:
            raise InputError("--version is for scoring schedules; a --train schedule makes new versions")
        if no_release and not train:
            raise InputError("--no-release only applies to --train schedules")
        lag_s = 0 if lag.strip() in ("0", "0s") else _duration(lag, "--lag")
        spec = ScheduleSpec(
            name=check_name(name), cron=check_cron(cron), window_s=_duration(window, "--window"), lag_s=lag_s,
            kind="train" if train else "score", version=layout.check_version(version) if version else None,
            release=not no_release, cursor_us=_now(start), created_at=now_iso(),
        )
        fleet = open_fleet(home)
        if spec.version:
            fleet.version(spec.version)  # must exist
        ScheduleStore(fleet.catalog).add(spec)
        payload = _schedule_row(spec, None, _now(None)) | {"cursor": spec.cursor_us}
        emit(json_out, payload, lambda c: c.print(
            f"added schedule {spec.name}: {spec.kind} {_human_s(spec.window_s)} windows on '{spec.cron}', "
            f"next fire {payload['next_fire']}"))

    @schedule_app.command("list")
    @handle_errors
    def list_schedules(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
        """List schedules with their next fire and the status of their latest window."""
        from fleetscore.catalog.schedules import ScheduleStore

        store = ScheduleStore(open_fleet(home).catalog)
        now = _now(None)
        rows = [_schedule_row(s, next(iter(store.windows(s.name, 1)), None), now) for s in store.all()]
        emit(json_out, {"schedules": rows},
             lambda c: c.print(table("schedules", SCHEDULE_COLUMNS, [[r[k] for k in SCHEDULE_COLUMNS] for r in rows])))

    @schedule_app.command("windows")
    @handle_errors
    def windows(
        name: Annotated[Optional[str], typer.Argument(help="Schedule (default: all).")] = None,
        limit: Annotated[int, typer.Option(help="At most this many windows, newest first.")] = 50,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List the windows schedules planned: status, run, attempts, error."""
        from fleetscore.catalog.schedules import ScheduleStore

        store = ScheduleStore(open_fleet(home).catalog)
        if name is not None:
            store.get(name)
        rows = [w.as_dict() for w in store.windows(name, limit)]
        emit(json_out, {"windows": rows},
             lambda c: c.print(table("schedule windows", WINDOW_COLUMNS, [_window_cells(r) for r in rows])))

    def _set_paused(name: str, paused: bool, home: Any, json_out: bool) -> None:
        from fleetscore.catalog.schedules import ScheduleStore

        spec = ScheduleStore(open_fleet(home).catalog).set_paused(name, paused)
        emit(json_out, {"name": spec.name, "paused": spec.paused},
             lambda c: c.print(f"{'paused' if paused else 'resumed'} schedule {spec.name}"))

    @schedule_app.command("pause")
    @handle_errors
    def pause(name: Annotated[str, typer.Argument(help="Schedule name.")], home: HomeOpt = None, json_out: JsonOpt = False) -> None:
        """Pause a schedule: it plans and runs nothing until resumed."""
        _set_paused(name, True, home, json_out)

    @schedule_app.command("resume")
    @handle_errors
    def resume(name: Annotated[str, typer.Argument(help="Schedule name.")], home: HomeOpt = None, json_out: JsonOpt = False) -> None:
        """Resume a paused schedule; windows missed while paused are caught up (up to max_catch_up)."""
        _set_paused(name, False, home, json_out)

    @schedule_app.command("remove")
    @handle_errors
    def remove(name: Annotated[str, typer.Argument(help="Schedule name.")], home: HomeOpt = None, json_out: JsonOpt = False) -> None:
        """Remove a schedule and its window bookkeeping (its runs and predictions stay)."""
        from fleetscore.catalog.schedules import ScheduleStore

        ScheduleStore(open_fleet(home).catalog).remove(name)
        emit(json_out, {"name": name, "removed": True}, lambda c: c.print(f"removed schedule {name}"))

    @app.command()
    @handle_errors
    def scheduler(
        once: Annotated[bool, typer.Option("--once", help="Run what is due now, then exit (for cron or CI).")] = False,
        max_catch_up: Annotated[Optional[int], typer.Option("--max-catch-up", help="After downtime, run at most this many missed windows per schedule (default 24).", min=1, max=10_000)] = None,
        poll: Annotated[Optional[str], typer.Option(help="Look at the schedules at least this often (default 30s).")] = None,
        lease: Annotated[Optional[str], typer.Option(help="Lease on a running window; a crashed scheduler's windows are taken over after it (default 60s).")] = None,
        workers: WorkersOpt = None,
        now: NowOpt = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Run the schedules: each due window once, oldest first, never two runs of a window at once."""
        import signal
        import threading

        from fleetscore.core.times import iso
        from fleetscore.schedule.scheduler import Scheduler, TickReport, wall_clock
        from fleetscore.schedule.settings import ops_settings

        fleet = open_fleet(home)
        settings = ops_settings(fleet.config).with_overrides(
            max_catch_up=max_catch_up, poll_s=None if poll is None else _duration(poll, "--poll"),
            lease_s=None if lease is None else _duration(lease, "--lease"))
        frozen = None if now is None else _now(now)

        def say(message: str) -> None:
            typer.echo(f"{iso(wall_clock() // 1_000_000 * 1_000_000)} {message}", err=True)

        sched = Scheduler(fleet, clock=wall_clock if frozen is None else (lambda: frozen), settings=settings,
                          workers=workers, say=say)
        total = TickReport()
        try:
            if once:
                total = sched.tick()
            else:
                stop = threading.Event()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, lambda *_: stop.set())
                say(f"scheduler started (poll {settings.poll_s:g}s, lease {settings.lease_s:g}s, "
                    f"max catch-up {settings.max_catch_up})")
                sched.run(stop, on_tick=total.add)
                say("scheduler stopped")
        finally:
            sched.close()
        payload = total.as_dict()
        emit(json_out, payload, lambda c: c.print(table(
            "windows run", WINDOW_COLUMNS, [_window_cells(r.as_dict()) for r in total.ran])))
        if once:
            _exit_for_statuses([r.status for r in total.ran])

    @app.command()
    @handle_errors
    def backfill(
        start: Annotated[str, typer.Option("--from", help="First window start (ISO 8601).")],
        end: Annotated[str, typer.Option("--to", help="Last window end (ISO 8601, exclusive).")],
        every: Annotated[str, typer.Option(help="Window length: one run per window.")] = "1h",
        version: Annotated[Optional[str], typer.Option(help="Model version (default: the released one).")] = None,
        workers: WorkersOpt = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Score every window of [--from, --to): one run each; re-running replaces each window's predictions."""
        from fleetscore.core.times import parse_window
        from fleetscore.errors import InputError
        from fleetscore.schedule.runner import backfill as run_backfill

        lo, hi = parse_window(start, end)
        fleet = open_fleet(home)
        record = fleet.version(version)
        if record.status != "ready":
            raise InputError(f"model version {record.version} is {record.status}; it cannot score")
        executor = fleet.executor(workers=workers)
        try:
            with progress_bar(json_out, "backfilling windows") as progress:
                done = []

                def on_run(run: Any) -> None:
                    done.append(run)
                    if progress:
                        progress(len(done), None)

                result = run_backfill(fleet, executor, lo, hi, _duration(every, "--every"), record.version, on_run)
        finally:
            executor.close()
        payload = result.as_dict()

        def human(c: Any) -> None:
            cols = ["run_id", "window_from", "window_to", "status", "rows", "anomalies", "failed_models", "elapsed_s"]
            c.print(table(f"backfill: {len(result.runs)} runs", cols, [[r.as_dict()[k] for k in cols] for r in result.runs]))
            for e in result.errors:
                c.print(f"[red]{e['window_from']}..{e['window_to']}: {e['error']}[/]")

        emit(json_out, payload, human)
        _exit_for_statuses([r.status.value for r in result.runs] + ["failed"] * bool(result.errors))

    @app.command()
    @handle_errors
    def gc(
        keep: Annotated[str, typer.Option(help="Keep this much history, e.g. 30d; older predictions, logs, runs and versions go.")],
        readings: Annotated[bool, typer.Option("--readings", help="Also delete old readings (never those a schedule still needs).")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be deleted.")] = False,
        now: NowOpt = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Delete what is older than --keep by the retention policy; never the released version or what a schedule needs."""
        from fleetscore.schedule.retention import gc as run_gc

        result = run_gc(open_fleet(home), _duration(keep, "--keep", MAX_KEEP_S), _now(now), readings=readings,
                        dry_run=dry_run)
        payload = result.as_dict()

        def human(c: Any) -> None:
            verb = "would delete" if dry_run else "deleted"
            counts = ", ".join(f"{n} {what}" for what, n in result.plan.counts().items())
            c.print(f"{verb} (older than {payload['cutoff']}): {counts}")
            if result.plan.kept:
                c.print(table("kept", ["what", "why"], [[k, v] for k, v in result.plan.kept.items()]))

        emit(json_out, payload, human)

    @runs_app.command("retry")
    @handle_errors
    def retry(
        run_id: Annotated[str, typer.Argument(help="Run id.")],
        workers: WorkersOpt = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Re-run only the failed (or unfinished) tasks of a run into the same run, then commit its window again."""
        from fleetscore.cli.runcmds import exit_for
        from fleetscore.schedule.runner import retry_run

        fleet = open_fleet(home)
        executor = fleet.executor(workers=workers)
        try:
            with progress_bar(json_out, "retrying tasks") as progress:
                result = retry_run(fleet, run_id, executor, progress)
        finally:
            executor.close()
        run = result.run
        emit(json_out, result.as_dict(), lambda c: c.print(
            f"run {run.run_id}: re-ran {len(result.retried)} task(s) {result.retried}; now {run.status.value}, "
            f"{run.rows:,} rows, {run.failed_models} failed models"))
        exit_for(run.status.value)

    @runs_app.command("cancel")
    @handle_errors
    def cancel(
        run_id: Annotated[str, typer.Argument(help="Run id.")],
        wait: Annotated[str, typer.Option(help="Wait this long for the run to stop.")] = "30s",
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Cancel a running run: it stops between tasks (tasks already running finish)."""
        from fleetscore.schedule.runner import cancel_run

        run = cancel_run(open_fleet(home), run_id, _duration(wait, "--wait") if wait.strip() not in ("0", "0s") else 0)
        status = run.status.value if run.status.finished else "cancelling"
        emit(json_out, {"run_id": run.run_id, "status": status},
             lambda c: c.print(f"run {run.run_id}: {status}" + ("" if run.status.finished else
                                                               " (it stops after its current tasks)")))

    @runs_app.command("logs")
    @handle_errors
    def logs(
        run_id: Annotated[str, typer.Argument(help="Run id.")],
        task: Annotated[Optional[int], typer.Option(help="Show this task's attempts: log lines, stdout, stderr.", min=0)] = None,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Print a run's structured log (or one task's), kept in storage next to its outputs."""
        from fleetscore.storage import layout
        from fleetscore.storage.logs import LogStore

        layout.check_run_id(run_id)
        fleet = open_fleet(home)
        fleet.catalog.get_run(run_id)  # unknown run: exit 2
        store = LogStore(fleet.storage)
        if task is not None:
            attempts = store.task_attempts(run_id, task)
            emit(json_out, {"run_id": run_id, "task": task, "attempts": [a.as_dict() for a in attempts]},
                 lambda c: _print_attempts(c, attempts))
            return
        if not follow:
            lines = store.run_lines(run_id)
            emit(json_out, {"run_id": run_id, "lines": lines}, lambda c: _print_lines(c, lines))
            return
        finished = lambda: fleet.catalog.get_run(run_id).status.finished  # noqa: E731
        if json_out:
            emit(True, {"run_id": run_id, "lines": list(store.follow(run_id, finished))}, lambda c: None)
            return
        from fleetscore.cli.output import console

        out = console()
        for line in store.follow(run_id, finished):
            _print_lines(out, [line])


def _schedule_row(spec: Any, last: Any, now_us: int) -> dict[str, Any]:
    from fleetscore.core.times import iso
    from fleetscore.schedule.plan import next_fire

    return {"name": spec.name, "kind": spec.kind, "cron": spec.cron, "window": _human_s(spec.window_s),
            "lag": _human_s(spec.lag_s) if spec.lag_s else "0s",
            "version": spec.version or ("(new)" if spec.kind == "train" else "released"), "paused": spec.paused,
            "release": spec.release, "next_fire": iso(next_fire(spec, max(now_us, spec.cursor_us))),
            "last_window": last.window_from if last else None, "last_status": last.status if last else None}


def _window_cells(row: dict[str, Any]) -> list[Any]:
    """A window row for a table: the error cut short (the run's logs and `runs show` have it whole)."""
    return [row[k] for k in WINDOW_COLUMNS[:-1]] + [(row["error"] or "")[:60]]


_HIDDEN_FIELDS = ("ts", "level", "event", "run_id", "traceback")


def _print_lines(c: Any, lines: list[dict[str, Any]]) -> None:
    from rich.markup import escape

    colors = {"error": "red", "warning": "yellow"}
    for line in lines:
        fields = " ".join(f"{k}={v}" for k, v in line.items() if k not in _HIDDEN_FIELDS and v not in (None, "", [], {}))
        level = str(line.get("level", "info"))
        color = colors.get(level, "default")
        c.print(f"{line.get('ts', '')} [{color}]{level.upper():7}[/] {escape(str(line.get('event', '')))} {escape(fields)}")
        if line.get("traceback"):
            c.print(escape(str(line["traceback"]).rstrip()))


def _print_attempts(c: Any, attempts: list[Any]) -> None:
    from rich.markup import escape

    if not attempts:
        c.print("no log for this task (it has not run, or its worker died before writing one)")
    for a in attempts:
        c.print(f"[bold]task {a.task} attempt {a.attempt}[/]")
        _print_lines(c, a.lines)
        for name, text in (("stdout", a.stdout), ("stderr", a.stderr)):
            if text:
                c.print(f"[bold]--- {name} ---[/]")
                c.print(escape(text.rstrip()))
