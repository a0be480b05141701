"""Scoring commands: ``score``, ``backfill``, ``predictions`` and the ``runs`` group (list, show, retry, cancel, logs)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetscore.cli.output import (
    ExecutorOpt,
    HomeOpt,
    JsonOpt,
    MaxFailedOpt,
    RayAddressOpt,
    WorkersOpt,
    console,
    duration,
    emit,
    exit_for,
    export,
    handle_errors,
    open_fleet,
    progress_bar,
    table,
)

commands = typer.Typer()
runs = typer.Typer(help="Scoring runs: list them, show one with its tasks and failures, retry, cancel, logs.",
                   no_args_is_help=True)

RUN_COLUMNS = ["run_id", "status", "window_from", "window_to", "version", "models", "rows", "anomalies", "failed_models",
               "elapsed_s"]
#: The task table of ``runs show``: (header, record field); fields ending in ``_s`` are shown in ms.
TASK_COLUMNS = [("task", "task"), ("shard", "shard"), ("status", "status"), ("models", "models"), ("rows", "rows"),
                ("anom.", "anomalies"), ("failed", "failed_models"), ("wall", "wall_s"), ("data", "load_data_s"),
                ("load", "load_models_s"), ("score", "score_s"), ("write", "write_s"), ("worker", "worker"),
                ("tries", "attempts")]
_HIDDEN_FIELDS = ("ts", "level", "event", "run_id", "traceback")
#: A run's per-model lists in the human output: (title, columns).
LISTS = {"failures": ("failed models", ["device", "sensor", "reason"]),
         "unhealthy": ("unhealthy models", ["device", "sensor", "rows", "anomalies", "rate", "reason"]),
         "unmatched": ("keys without a model", ["device", "sensor", "rows", "reason"])}


def _task_cell(record: dict[str, object], field: str) -> object:
    """One cell of the task table: durations in milliseconds, one decimal."""
    value = record[field]
    return f"{value * 1000:.1f}" if field.endswith("_s") and isinstance(value, (int, float)) else value


@commands.command()
@handle_errors
def score(
    start: Annotated[str, typer.Option("--from", help="Window start (ISO 8601, inclusive).")],
    end: Annotated[str, typer.Option("--to", help="Window end (ISO 8601, exclusive).")],
    version: Annotated[str | None, typer.Option(help="Model version (default: the released one).")] = None,
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    max_failed_models: MaxFailedOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a time window with one model version; re-scoring a window replaces its predictions."""
    fleet = open_fleet(home, executor=executor, ray_address=ray_address, max_failed_models=max_failed_models)
    with progress_bar(json_out, "scoring shards") as progress:
        run = fleet.score(start, end, version=version, workers=workers, on_progress=progress)
    payload, lists = run_payload(fleet, run)

    def human(c: Any) -> None:
        fields = RUN_COLUMNS + ["unmatched_rows", "error"]
        c.print(table(f"run {run.run_id}", ["field", "value"], [[k, payload[k]] for k in fields]))
        for name, (_, total) in lists.items():
            if total:
                c.print(f"{total:,} {LISTS[name][0]}, all listed by: {payload['full_lists'][name]}")

    emit(json_out, payload, human)
    deliver_before_exit(fleet)
    exit_for(run.status.value)


def run_payload(fleet: Any, run: Any, everything: bool = False) -> tuple[dict[str, Any], dict[str, tuple[list[Any], int]]]:
    """``run``'s record for output, with its failed models (``failures``) and, for each per-model list, its first
    ``MAX_LISTED`` entries beside its total (``everything``: all entries) and where the full list is (``full_lists``).

    Also returns {list name: (entries, total)}. The entries are read from the catalog, so a running run shows its
    lists so far."""
    from fleetscore.core.runs import MAX_LISTED, RUN_LISTS, full_lists

    pages = {name: fleet.run_list(run.run_id, name, None if everything else MAX_LISTED) for name in RUN_LISTS}
    lists = {name: (page.items, page.total) for name, page in pages.items()}
    payload = run.as_dict()
    payload["extra"] = payload["extra"] | {
        "unmatched": pages["unmatched"].items, "unmatched_keys": pages["unmatched"].total,
        "health": payload["extra"].get("health", {}) | {"unhealthy": pages["unhealthy"].items,
                                                        "unhealthy_models": pages["unhealthy"].total}}
    return payload | {"failures": pages["failures"].items, "full_lists": full_lists(run.run_id)}, lists


def deliver_before_exit(fleet: Any) -> None:
    """Deliver the alert notifications a one-shot run queued, for at most ``[alerts] deliver_wait``; what is
    left stays in the outbox for the next process that delivers (``serve``, ``scheduler``, ``alerts deliver``)."""
    if not fleet.config.alerts.receivers:
        return
    left = fleet.deliver_alerts().pending
    if left:
        console(stderr=True).print(f"{left} alert notification(s) still pending: `fleetscore alerts deliver`, "
                                   "`serve` or `scheduler` sends them")


@commands.command()
@handle_errors
def backfill(
    start: Annotated[str, typer.Option("--from", help="First window start (ISO 8601).")],
    end: Annotated[str, typer.Option("--to", help="Last window end (ISO 8601, exclusive).")],
    every: Annotated[str, typer.Option(help="Window length: one run per window.")] = "1h",
    version: Annotated[str | None, typer.Option(help="Model version (default: the released one).")] = None,
    workers: WorkersOpt = None,
    max_failed_models: MaxFailedOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score every window of [--from, --to): one run each; re-running replaces each window's predictions."""
    fleet = open_fleet(home, max_failed_models=max_failed_models)
    every_s = duration(every, "--every")
    with progress_bar(json_out, "backfilling windows") as progress:
        done: list[Any] = []

        def on_run(run: Any) -> None:
            done.append(run)
            if progress:
                progress(len(done), None)

        result = fleet.backfill(start, end, every_s, version=version, workers=workers, on_run=on_run)
    payload = result.as_dict()

    def human(c: Any) -> None:
        cols = ["run_id", "window_from", "window_to", "status", "rows", "anomalies", "failed_models", "elapsed_s"]
        c.print(table(f"backfill: {len(result.runs)} runs", cols, [[r.as_dict()[k] for k in cols] for r in result.runs]))
        for e in result.errors:
            c.print(f"{e['window_from']}..{e['window_to']}: {e['error']}", style="red")

    emit(json_out, payload, human)
    deliver_before_exit(fleet)
    exit_for(*[r.status.value for r in result.runs], *["failed"] * bool(result.errors))


@commands.command()
@handle_errors
def predictions(
    out: Annotated[Path, typer.Option("--out", help="Output file.")],
    run: Annotated[str | None, typer.Option("--run", help="Run id.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Range start (ISO 8601).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Range end (ISO 8601, exclusive).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="parquet, csv or reference (TS,Device,Tag,Val,Prediction).")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export predictions of a run or a time range."""
    from fleetscore.errors import InputError
    from fleetscore.storage.files import reference_table

    if fmt not in (None, "parquet", "csv", "reference"):
        raise InputError(f"--format must be parquet, csv or reference, got {fmt!r}")
    tbl = open_fleet(home).predictions(run, start, end)
    if fmt == "reference":
        tbl, fmt = reference_table(tbl), "csv"
    export(json_out, tbl, out, "predictions", fmt)


@runs.command("list")
@handle_errors
def list_runs(
    limit: Annotated[int, typer.Option(help="At most this many runs, newest first.")] = 50,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List recent runs with status and counts."""
    rows = [r.as_dict() for r in open_fleet(home).runs(limit)]
    emit(json_out, {"runs": rows},
         lambda c: c.print(table("runs", RUN_COLUMNS, [[r[k] for k in RUN_COLUMNS] for r in rows])))


@runs.command("show")
@handle_errors
def show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    everything: Annotated[bool, typer.Option(
        "--all", help="List every failed model, unhealthy model and key without a model (default: the first 20 of "
                      "each, beside its total).")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one run: its record, per-task timings, and its failed models (with reasons), unhealthy models and keys
    without a model: the first 20 of each beside its total, or all with --all.

    Exits like ``score`` for the run's status: 1 when it failed or was abandoned (its process died), 3 when partial.
    """
    fleet = open_fleet(home)
    run, tasks, _ = fleet.run(run_id)
    listed, lists = run_payload(fleet, run, everything)
    payload = listed | {"tasks": [t.as_dict() for t in tasks]}

    def human(c: Any) -> None:
        c.print(table(f"run {run.run_id}", ["field", "value"],
                      [[k, v] for k, v in payload.items() if k not in ("tasks", "failures", "extra", "full_lists")]))
        records = [t.as_dict() for t in tasks]
        c.print(table("tasks (times in ms: wall, load data, load models, score, write)", [h for h, _ in TASK_COLUMNS],
                      [[_task_cell(r, f) for _, f in TASK_COLUMNS] for r in records]))
        if any(t.error for t in tasks):  # tracebacks: `runs logs RUN --task T`
            c.print(table("task errors", ["task", "error"], [[t.task, t.error] for t in tasks if t.error]))
        for name, (items, total) in lists.items():
            if not total:
                continue
            title, columns = LISTS[name]
            c.print(table(f"{title}: {len(items):,} of {total:,}", columns, [[e.get(k) for k in columns] for e in items]))
            if len(items) < total:
                c.print(f"all {total:,} {title}: {payload['full_lists'][name]}")
        from fleetscore.core.runs import MAX_LISTED

        for t in tasks:  # a failed task's record holds its model count; the list holds a sample of them
            if t.status == "failed" and t.failed_models > MAX_LISTED:
                c.print(f"task {t.task} failed: all {t.failed_models:,} models of shard {t.shard} failed with its "
                        f"error, {MAX_LISTED} of them listed; all: fleetscore models list --version {run.version} "
                        f"--shard {t.shard}")

    emit(json_out, payload, human)
    exit_for(run.status.value)


@runs.command("retry")
@handle_errors
def retry(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    workers: WorkersOpt = None,
    max_failed_models: MaxFailedOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-run only the failed, unfinished or abandoned tasks of a run into the same run, then commit its window again."""
    with progress_bar(json_out, "retrying tasks") as progress:
        result = open_fleet(home, max_failed_models=max_failed_models).retry(run_id, workers=workers,
                                                                           on_progress=progress)
    run = result.run
    emit(json_out, result.as_dict(), lambda c: c.print(
        f"run {run.run_id}: re-ran {len(result.retried)} task(s) {result.retried}; now {run.status.value}, "
        f"{run.rows:,} rows, {run.failed_models} failed models"))
    exit_for(run.status.value)


@runs.command("cancel")
@handle_errors
def cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    wait: Annotated[str, typer.Option(help="Wait this long for the run to stop.")] = "30s",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cancel a running run: it stops between tasks (tasks already running finish); an abandoned run is closed."""
    run = open_fleet(home).cancel(run_id, duration(wait, "--wait", allow_zero=True))
    status = run.status.value if run.status.finished else "cancelling"
    emit(json_out, {"run_id": run.run_id, "status": status},
         lambda c: c.print(f"run {run.run_id}: {status}" + ("" if run.status.finished else
                                                           " (it stops after its current tasks)")))


@runs.command("logs")
@handle_errors
def logs(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    task: Annotated[int | None, typer.Option(help="Show this task's attempts: log lines, stdout, stderr.", min=0)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print a run's structured log (or one task's), kept in storage next to its outputs."""
    fleet = open_fleet(home)
    if task is not None:
        attempts = fleet.task_log(run_id, task)
        emit(json_out, {"run_id": run_id, "task": task, "attempts": [a.as_dict() for a in attempts]},
             lambda c: _print_attempts(c, attempts))
        return
    lines = fleet.run_log(run_id, follow=follow)
    if json_out or not follow:
        collected = list(lines)
        emit(json_out, {"run_id": run_id, "lines": collected}, lambda c: _print_lines(c, collected))
        return
    out = console()
    for line in lines:
        _print_lines(out, [line])


def _print_lines(c: Any, lines: list[dict[str, Any]]) -> None:
    from rich.text import Text

    colors = {"error": "red", "warning": "yellow"}
    for line in lines:
        fields = " ".join(f"{k}={v}" for k, v in line.items() if k not in _HIDDEN_FIELDS and v not in (None, "", [], {}))
        level = str(line.get("level", "info"))
        color = colors.get(level, "default")
        c.print(Text.assemble(f"{line.get('ts', '')} ", (f"{level.upper():7}", color), f" {line.get('event', '')} {fields}"))
        if line.get("traceback"):
            c.print(str(line["traceback"]).rstrip())


def _print_attempts(c: Any, attempts: list[Any]) -> None:
    if not attempts:
        c.print("no log for this task (it has not run, or its worker died before writing one)")
    for a in attempts:
        c.print(f"task {a.task} attempt {a.attempt}", style="bold")
        _print_lines(c, a.lines)
        for name, text in (("stdout", a.stdout), ("stderr", a.stderr)):
            if text:
                c.print(f"--- {name} ---", style="bold")
                c.print(text.rstrip())
