"""``fleetscore demo``: the whole pipeline on a small simulated fleet, with a readable summary.

The demo simulates a fleet, imports it, trains, scores each hour as the scheduler would and
evaluates the predictions against the simulator's labels, all through the public `Fleet` API.
"""

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetscore.cli.evalcmds import KIND_COLUMNS, fmt_ratio, quality_rows
from fleetscore.cli.output import HomeOpt, JsonOpt, WorkersOpt, console, emit, handle_errors, table
from fleetscore.errors import InputError

commands = typer.Typer()

DEMO_MARKER = ".fleetscore-demo"
DEMO_START = datetime(2026, 1, 1, tzinfo=UTC)
#: Incidents the demo shows (highest severity first); all of them are in `fleetscore incidents list`.
DEMO_TOP_INCIDENTS = 5


def _peak(incident: Any) -> float:
    return -1.0 if incident.severity is None else float(incident.severity)


def prepare_home(home: Path) -> None:
    """Use an empty (or earlier demo's) home; refuse to touch a home that holds other data."""
    from fleetscore.config import CONFIG_FILE

    if home.exists() and any(home.iterdir()):
        if not (home / DEMO_MARKER).exists():
            raise InputError(f"home {home} already holds data; run the demo with --home pointing to a new folder")
        keep = home / CONFIG_FILE
        saved = keep.read_bytes() if keep.exists() else None
        shutil.rmtree(home)
        home.mkdir(parents=True)
        if saved is not None:
            keep.write_bytes(saved)
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("this home was made by `fleetscore demo` and is rebuilt by it\n")


def run_demo(home: Path, devices: int = 50, sensors: int = 4, train_hours: int = 24, score_hours: int = 6,
             seed: int = 7, workers: int | None = None, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole pipeline on a fresh home and return a summary (what the CLI prints)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from fleetscore.api import Fleet
    from fleetscore.core.evaluate import evaluate
    from fleetscore.core.incidents import labelled_events, match_events
    from fleetscore.core.simulate import simulate_fleet
    from fleetscore.core.times import iso
    from fleetscore.storage.files import write_table

    say = step or (lambda _msg: None)
    started = time.perf_counter()
    home = home.expanduser().absolute()
    prepare_home(home)
    fleet = Fleet.open(home, workers=workers)
    hours = train_hours + score_hours
    say(f"simulating {devices} devices × {sensors} sensors, {hours} h of readings")
    fleet_table = simulate_fleet(devices, sensors, DEMO_START, hours, 60.0, 0.01, seed)
    csv_path = home / "demo-fleet.csv"
    write_table(fleet_table, csv_path)
    say(f"importing {csv_path}")
    imported = fleet.import_file(csv_path)
    train_end = DEMO_START + timedelta(hours=train_hours)
    say(f"training one model per (device, sensor) on {train_hours} h")
    trained = fleet.train(DEMO_START, train_end, workers=workers)
    runs = []
    for h in range(score_hours):
        lo = train_end + timedelta(hours=h)
        say(f"scoring {lo:%Y-%m-%d %H:%M}")
        runs.append(fleet.score(lo, lo + timedelta(hours=1), workers=workers))
    scored_end = train_end + timedelta(hours=score_hours)
    predictions = fleet.predictions(start=train_end, end=scored_end)
    metrics = evaluate(predictions, fleet_table)  # point metrics, event recall overall and per anomaly kind
    ts = pc.cast(fleet_table.column("ts"), pa.int64())
    scored = fleet_table.filter(pc.and_(pc.greater_equal(ts, int(train_end.timestamp() * 1e6)),
                                        pc.less(ts, int(scored_end.timestamp() * 1e6))))
    incidents = fleet.incidents(limit=100_000)
    matched = match_events(incidents, labelled_events(scored))  # incident-level: one per labelled event is ideal
    out = home / "demo-predictions.csv"
    write_table(predictions, out)
    fleet.close()
    return {
        "home": str(home),
        "readings": imported.accepted,
        "rejected": imported.rejected,
        "version": trained.version,
        "models": trained.models,
        "train_failed": trained.failed,
        "runs": [{"run_id": r.run_id, "window_from": iso(r.window_from), "status": r.status.value, "rows": r.rows,
                  "anomalies": r.anomalies, "elapsed_s": r.elapsed_s} for r in runs],
        "rows_scored": sum(r.rows for r in runs),
        "anomalies": sum(r.anomalies for r in runs),
        "evaluation": metrics.as_dict(),
        "incidents": {"count": len(incidents), "open": sum(1 for i in incidents if i.active),
                      "vs_labelled_events": matched.as_dict(),
                      "top": [i.as_dict() for i in sorted(incidents, key=_peak, reverse=True)[:DEMO_TOP_INCIDENTS]]},
        "outputs": {"predictions_csv": str(out), "data": fleet.config.storage.url,
                    "catalog": fleet.config.catalog.url},
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


@commands.command()
@handle_errors
def demo(
    devices: Annotated[int, typer.Option(help="Devices to simulate.", min=1, max=100_000)] = 50,
    sensors: Annotated[int, typer.Option(help="Sensors per device.", min=1, max=64)] = 4,
    train_hours: Annotated[int, typer.Option(help="Hours of history to train on.", min=1, max=24 * 90)] = 24,
    score_hours: Annotated[int, typer.Option(help="Hours to score, one run per hour.", min=1, max=24 * 30)] = 6,
    workers: WorkersOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Simulate a fleet, import it, train, score each hour and report precision/recall and the incidents found."""
    from fleetscore.config import DEFAULT_HOME

    err = console(stderr=True)
    step = None if json_out else (lambda msg: err.print(f"• {msg}", style="dim"))
    summary = run_demo(Path(home or DEFAULT_HOME), devices, sensors, train_hours, score_hours,
                       workers=workers, step=step)

    def human(c: Any) -> None:
        ev = summary["evaluation"]
        c.print(table("hourly scoring runs", ["run", "window (UTC)", "status", "rows", "anomalies", "seconds"],
                      [[r["run_id"][:12], r["window_from"].replace("T", " ").removesuffix(":00Z"), r["status"],
                        r["rows"], r["anomalies"], r["elapsed_s"]] for r in summary["runs"]]))
        c.print(f"readings imported  {summary['readings']:,}")
        c.print(f"models trained     {summary['models']:,} (version {summary['version']}, {summary['train_failed']} failed)")
        c.print(f"rows scored        {summary['rows_scored']:,} in {len(summary['runs'])} runs")
        c.print(f"anomalies flagged  {summary['anomalies']:,}")
        c.print(f"vs injected labels precision {fmt_ratio(ev['precision'])}  recall {fmt_ratio(ev['recall'])}  "
                f"F1 {fmt_ratio(ev['f1'])}"
                f"  event recall {fmt_ratio(ev['event_recall'])}")
        c.print(table("recall per anomaly kind", KIND_COLUMNS, quality_rows(ev)))
        inc = summary["incidents"]
        vs = inc["vs_labelled_events"]
        c.print(f"incidents          {inc['count']:,} ({inc['open']} open) from {summary['anomalies']:,} flags: "
                f"precision {fmt_ratio(vs['precision'])}, {fmt_ratio(vs['incidents_per_event'])} incidents per detected event, "
                f"event recall {fmt_ratio(vs['event_recall'])} of {vs['events']} labelled events")
        c.print(table("highest-severity incidents (all: fleetscore incidents list)",
                      ["incident", "device", "start (UTC)", "sev.", "flags", "sensors", "status"],
                      [[i["id"], i["device"], i["start"][5:16].replace("T", " "),
                        "" if i["severity"] is None else f"{i['severity']:.0f}", i["flags"],
                        ", ".join(f"{s['sensor']} ({s['flags']})" for s in i["sensors"]), i["status"]]
                       for i in inc["top"]]))
        c.print(f"predictions        {summary['outputs']['predictions_csv']}")
        c.print(f"data / catalog     {summary['outputs']['data']}  /  {summary['outputs']['catalog']}")
        c.print(f"done in {summary['elapsed_s']:.1f}s")

    emit(json_out, summary, human)
