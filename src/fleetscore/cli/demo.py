"""``fleetscore demo``: the whole pipeline on a small simulated fleet, with a readable summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fleetscore.cli.evalcmds import KIND_COLUMNS, quality_rows
from fleetscore.cli.output import HomeOpt, JsonOpt, console, emit, handle_errors, table


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def demo(
        devices: Annotated[int, typer.Option(help="Devices to simulate.", min=1, max=100_000)] = 50,
        sensors: Annotated[int, typer.Option(help="Sensors per device.", min=1, max=64)] = 4,
        train_hours: Annotated[int, typer.Option(help="Hours of history to train on.", min=1, max=24 * 90)] = 24,
        score_hours: Annotated[int, typer.Option(help="Hours to score, one run per hour.", min=1, max=24 * 30)] = 6,
        workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: cores).", min=1, max=1024)] = None,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Simulate a fleet, import it, train, score each hour and report precision/recall."""
        from fleetscore.config import DEFAULT_HOME
        from fleetscore.demo import run_demo

        err = console(stderr=True)
        step = None if json_out else (lambda msg: err.print(f"[dim]• {msg}[/]"))
        summary = run_demo(Path(home or DEFAULT_HOME), devices, sensors, train_hours, score_hours,
                           workers=workers, step=step)

        def human(c) -> None:  # type: ignore[no-untyped-def]
            ev = summary["evaluation"]
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            c.print(table("hourly scoring runs", ["run", "window (UTC)", "status", "rows", "anomalies", "seconds"],
                          [[r["run_id"][:12], r["window_from"].replace("T", " ").removesuffix(":00Z"), r["status"],
                            r["rows"], r["anomalies"], r["elapsed_s"]] for r in summary["runs"]]))
            c.print(f"readings imported  {summary['readings']:,}")
            c.print(f"models trained     {summary['models']:,} (version {summary['version']}, {summary['train_failed']} failed)")
            c.print(f"rows scored        {summary['rows_scored']:,} in {len(summary['runs'])} runs")
            c.print(f"anomalies flagged  {summary['anomalies']:,}")
            c.print(f"vs injected labels precision {fmt(ev['precision'])}  recall {fmt(ev['recall'])}  F1 {fmt(ev['f1'])}"
                    f"  event recall {fmt(ev['event_recall'])}")
            c.print(table("recall per anomaly kind", KIND_COLUMNS, quality_rows(ev)))
            c.print(f"predictions        {summary['outputs']['predictions_csv']}")
            c.print(f"data / catalog     {summary['outputs']['data']}  /  {summary['outputs']['catalog']}")
            c.print(f"done in {summary['elapsed_s']:.1f}s")

        emit(json_out, summary, human)
