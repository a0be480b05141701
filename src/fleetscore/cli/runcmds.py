"""Run commands: score, predictions, and the ``runs`` group (list, show)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fleetscore.cli.output import EXIT_FAILURE, EXIT_PARTIAL, HomeOpt, JsonOpt, emit, handle_errors, open_fleet, progress_bar, table

RUN_COLUMNS = ["run_id", "status", "window_from", "window_to", "version", "models", "rows", "anomalies", "failed_models", "elapsed_s"]
#: The task table of ``runs show``: (header, record field); fields ending in ``_s`` are shown in ms.
TASK_COLUMNS = [("task", "task"), ("shard", "shard"), ("status", "status"), ("models", "models"), ("rows", "rows"),
                ("anom.", "anomalies"), ("failed", "failed_models"), ("wall", "wall_s"), ("data", "load_data_s"),
                ("load", "load_models_s"), ("score", "score_s"), ("write", "write_s"), ("worker", "worker"),
                ("tries", "attempts")]


def _task_cell(record: dict[str, object], field: str) -> object:
    """One cell of the task table: durations in milliseconds, one decimal."""
    value = record[field]
    return f"{value * 1000:.1f}" if field.endswith("_s") and isinstance(value, (int, float)) else value


def exit_for(status: str) -> None:
    """Exit 3 for a partial run and 1 for a failed one (after the output was printed)."""
    if status == "partial":
        raise typer.Exit(EXIT_PARTIAL)
    if status == "failed":
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    runs_app = typer.Typer(help="Scoring runs: list them, show one with its tasks and failures.", no_args_is_help=True)
    app.add_typer(runs_app, name="runs")

    @app.command()
    @handle_errors
    def score(
        start: Annotated[str, typer.Option("--from", help="Window start (ISO 8601, inclusive).")],
        end: Annotated[str, typer.Option("--to", help="Window end (ISO 8601, exclusive).")],
        version: Annotated[Optional[str], typer.Option(help="Model version (default: the released one).")] = None,
        executor: Annotated[Optional[str], typer.Option(help="local or ray.")] = None,
        workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: cores).", min=1, max=1024)] = None,
        ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (with --executor ray).")] = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Score a time window with one model version; re-scoring a window replaces its predictions."""
        fleet = open_fleet(home, executor=executor, ray_address=ray_address)
        with progress_bar(json_out, "scoring shards") as progress:
            run = fleet.score(start, end, version=version, workers=workers, on_progress=progress)
        payload = run.as_dict()

        def human(c) -> None:  # type: ignore[no-untyped-def]
            c.print(table(f"run {run.run_id}", ["field", "value"], [[k, payload[k]] for k in RUN_COLUMNS + ["unmatched_rows", "error"]]))
            if run.unmatched_rows:
                c.print(f"{run.unmatched_rows:,} readings had no model (see `fleetscore runs show {run.run_id}`)")

        emit(json_out, payload, human)
        exit_for(run.status.value)

    @app.command()
    @handle_errors
    def predictions(
        out: Annotated[Path, typer.Option("--out", help="Output file.")],
        run: Annotated[Optional[str], typer.Option("--run", help="Run id.")] = None,
        start: Annotated[Optional[str], typer.Option("--from", help="Range start (ISO 8601).")] = None,
        end: Annotated[Optional[str], typer.Option("--to", help="Range end (ISO 8601, exclusive).")] = None,
        fmt: Annotated[Optional[str], typer.Option("--format", help="parquet, csv or reference (TS,Device,Tag,Val,Prediction).")] = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Export predictions of a run or a time range."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from fleetscore.cli.data import _csv_ready, write_table
        from fleetscore.errors import InputError

        if fmt not in (None, "parquet", "csv", "reference"):
            raise InputError(f"--format must be parquet, csv or reference, got {fmt!r}")
        tbl = open_fleet(home).predictions(run, start, end)
        if fmt == "reference":
            ref = _csv_ready(tbl.select(["ts"]))
            tbl = pa.table({"TS": ref.column("ts"), "Device": tbl.column("device"), "Tag": tbl.column("sensor"),
                            "Val": tbl.column("value"), "Prediction": pc.cast(tbl.column("is_anomaly"), pa.int8())})
            fmt = "csv"
        written = write_table(tbl, out, fmt)
        emit(json_out, {"out": str(out), "format": written, "rows": tbl.num_rows},
             lambda c: c.print(f"wrote {tbl.num_rows:,} predictions to {out}"))

    @runs_app.command("list")
    @handle_errors
    def list_runs(
        limit: Annotated[int, typer.Option(help="At most this many runs, newest first.")] = 50,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List recent runs with status and counts."""
        runs = [r.as_dict() for r in open_fleet(home).runs(limit)]
        emit(json_out, {"runs": runs},
             lambda c: c.print(table("runs", RUN_COLUMNS, [[r[k] for k in RUN_COLUMNS] for r in runs])))

    @runs_app.command("show")
    @handle_errors
    def show(
        run_id: Annotated[str, typer.Argument(help="Run id.")],
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Show one run: its record, per-task timings and the models that failed, with reasons."""
        run, tasks, failures = open_fleet(home).run(run_id)
        payload = run.as_dict() | {"tasks": [t.as_dict() for t in tasks], "failures": [f.__dict__ for f in failures]}

        def human(c) -> None:  # type: ignore[no-untyped-def]
            c.print(table(f"run {run.run_id}", ["field", "value"],
                          [[k, v] for k, v in payload.items() if k not in ("tasks", "failures", "extra")]))
            records = [t.as_dict() for t in tasks]
            c.print(table("tasks (times in ms: wall, load data, load models, score, write)", [h for h, _ in TASK_COLUMNS], [[_task_cell(r, f) for _, f in TASK_COLUMNS] for r in records]))
            if any(t.error for t in tasks):  # tracebacks: `runs logs RUN --task T`
                c.print(table("task errors", ["task", "error"], [[t.task, t.error] for t in tasks if t.error]))
            if failures:
                c.print(table("failed models", ["device", "sensor", "reason"], [[f.device, f.sensor, f.reason] for f in failures[:50]]))
            if run.extra.get("unmatched"):
                c.print(table("readings without a model", ["device", "sensor", "rows", "reason"],
                              [[u["device"], u["sensor"], u["rows"], u["reason"]] for u in run.extra["unmatched"]]))

        emit(json_out, payload, human)
