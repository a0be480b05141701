"""Detection quality and model health: ``evaluate`` and ``models health``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, emit, handle_errors, open_fleet, table

KIND_COLUMNS = ["kind", "points", "point_recall", "events", "events_detected", "event_recall"]
HEALTH_COLUMNS = ["device", "sensor", "run_id", "rows", "anomalies", "rate", "expected", "reason"]


def quality_rows(ev: dict[str, Any]) -> list[list[Any]]:
    """Per-kind rows of an evaluation (``Evaluation.as_dict()``), overall last: what the demo prints too."""
    rows = [[k, m["points"], m["point_recall"], m["events"], m["events_detected"], m["event_recall"]]
            for k, m in ev["by_kind"].items()]
    return rows + [["all", ev["true_pos"] + ev["false_neg"], ev["recall"], ev["events"], ev["events_detected"],
                    ev["event_recall"]]]


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def evaluate(
        run: Annotated[str, typer.Option("--run", help="Run id whose predictions are evaluated.")],
        labels: Annotated[Path, typer.Option("--labels", help="CSV/Parquet with ts, device, sensor, label[, anomaly_kind].")],
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Precision, recall, F1 and event recall of a run against labels, overall and per anomaly kind."""
        from fleetscore.quality import evaluate_run

        record, result = evaluate_run(open_fleet(home), run, labels)
        payload = {"run_id": record.run_id, "version": record.version, "window_from": record.window_from,
                   "window_to": record.window_to} | result.as_dict()

        def human(c) -> None:  # type: ignore[no-untyped-def]
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            c.print(f"run {record.run_id} ({record.version}): {payload['matched']:,} labelled readings scored, "
                    f"{payload['unscored_labels']:,} anomalous ones not scored")
            c.print(f"precision {fmt(payload['precision'])}  recall {fmt(payload['recall'])}  F1 {fmt(payload['f1'])}  "
                    f"event recall {fmt(payload['event_recall'])}")
            c.print(table("recall per anomaly kind", KIND_COLUMNS, quality_rows(payload)))

        emit(json_out, payload, human)

    models_app = next(g.typer_instance for g in app.registered_groups if g.name == "models")

    @models_app.command("health")
    @handle_errors
    def health(
        run: Annotated[Optional[str], typer.Option("--run", help="Run id (default: the latest finished runs).")] = None,
        last: Annotated[int, typer.Option(help="Without --run: look at this many latest finished runs.", min=1, max=1000)] = 1,
        home: HomeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Models that runs marked unhealthy (flagging far more than calibrated); retrain with train --only-unhealthy."""
        from fleetscore.retrain import health_report

        report = health_report(open_fleet(home), run, last)
        emit(json_out, report, lambda c: c.print(table(
            f"{len(report['unhealthy'])} unhealthy model(s) in {len(report['runs'])} run(s)", HEALTH_COLUMNS,
            [[u.get(k) for k in HEALTH_COLUMNS] for u in report["unhealthy"]])))
