"""Detection quality: ``evaluate`` a run against labels or operators' marks (and the per-kind rows the demo prints too)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, emit, handle_errors, open_fleet, table

commands = typer.Typer()

KIND_COLUMNS = ["kind", "points", "point_recall", "events", "events_detected", "event_recall"]


def quality_rows(ev: dict[str, Any]) -> list[list[Any]]:
    """Per-kind rows of an evaluation (``Evaluation.as_dict()``), overall last: what the demo prints too."""
    rows = [[k, m["points"], m["point_recall"], m["events"], m["events_detected"], m["event_recall"]]
            for k, m in ev["by_kind"].items()]
    return rows + [["all", ev["true_pos"] + ev["false_neg"], ev["recall"], ev["events"], ev["events_detected"],
                    ev["event_recall"]]]


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@commands.command()
@handle_errors
def evaluate(
    run: Annotated[str, typer.Option("--run", help="Run id whose predictions are evaluated.")],
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="CSV/Parquet with ts, device, sensor, label[, anomaly_kind].")] = None,
    from_marks: Annotated[bool, typer.Option(
        "--from-marks", help="Use operators' marks as labels instead of a file: readings of incidents marked true "
                             "are anomalies, of incidents marked false normal (their flags false alarms).")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Precision, recall, F1 and event recall of a run against labels (a file, or --from-marks), overall and per
    anomaly kind."""
    record, result = open_fleet(home).evaluate(run, labels, from_marks=from_marks)
    info = record.as_dict()
    payload = {k: info[k] for k in ("run_id", "version", "window_from", "window_to")} | result.as_dict()

    def human(c: Any) -> None:
        c.print(f"run {record.run_id} ({record.version}): {payload['matched']:,} labelled readings scored, "
                f"{payload['unscored_labels']:,} anomalous ones not scored")
        c.print(f"precision {fmt_ratio(payload['precision'])}  recall {fmt_ratio(payload['recall'])}  "
                f"F1 {fmt_ratio(payload['f1'])}  event recall {fmt_ratio(payload['event_recall'])}")
        c.print(table("recall per anomaly kind", KIND_COLUMNS, quality_rows(payload)))

    emit(json_out, payload, human)
