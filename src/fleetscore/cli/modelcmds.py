"""Model commands: train, and the ``models`` group (versions, list, show, release, import-sklearn, health, adjust)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetscore.cli.output import (
    ExecutorOpt,
    HomeOpt,
    JsonOpt,
    RayAddressOpt,
    WorkersOpt,
    emit,
    handle_errors,
    open_fleet,
    progress_bar,
    table,
)

commands = typer.Typer()
models = typer.Typer(help="Model versions, the released version, and single models.", no_args_is_help=True)

VERSION_COLUMNS = ["version", "status", "released", "kind", "features", "models", "failed", "shards", "created_at",
                   "train_from", "train_to"]
HEALTH_COLUMNS = ["device", "sensor", "run_id", "rows", "anomalies", "rate", "expected", "reason"]
FALSE_ALARM_COLUMNS = ["device", "sensor", "false_marks", "expected", "action", "suggested_alarm_rate"]


@commands.command()
@handle_errors
def train(
    start: Annotated[str, typer.Option("--from", help="Training window start (ISO 8601).")],
    end: Annotated[str, typer.Option("--to", help="Training window end (ISO 8601, exclusive).")],
    kind: Annotated[str | None, typer.Option(
        help="Model kind: auto (default: robust per sensor, a device model where a device's sensors move together; "
             "ocsvm with --nu/--gamma), robust, ocsvm or device (one model per device over its sensors).")] = None,
    nu: Annotated[float | None, typer.Option(
        help="OneClassSVM nu; pinning it (or --gamma) keeps classic scikit-learn semantics.")] = None,
    gamma: Annotated[str | None, typer.Option(help="RBF gamma: scale, auto, median (data-driven) or a number.")] = None,
    features: Annotated[str | None, typer.Option(
        help="auto, raw, window:DURATION (e.g. window:1m) or context[:LOOKBACK].")] = None,
    alarm_rate: Annotated[float | None, typer.Option(
        "--alarm-rate",
        help="Target false-alarm rate each model is calibrated to (default 1e-4; none when --nu/--gamma are pinned).")] = None,
    only_unhealthy: Annotated[bool, typer.Option(
        "--only-unhealthy", help="Retrain only the models the latest run marked unhealthy; reuse all others.")] = False,
    no_release: Annotated[bool, typer.Option("--no-release", help="Do not release the new version.")] = False,
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train one model per (device, sensor) on the readings of a window; creates a new version."""
    fleet = open_fleet(home, executor=executor, ray_address=ray_address)
    with progress_bar(json_out, "training shards") as progress:
        result = fleet.train(start, end, kind=kind, nu=nu, gamma=gamma, features=features,
                             release=not no_release, workers=workers, on_progress=progress,
                             alarm_rate=alarm_rate, only_unhealthy=only_unhealthy)
    payload = result.as_dict()

    def human(c: Any) -> None:
        if getattr(result, "nothing_to_do", None):
            c.print(f"nothing to do: {result.nothing_to_do}")
            return
        c.print(f"version {result.version}: {result.models:,} models, {result.failed:,} failed, "
                f"{result.shards} shards in {result.elapsed_s:.2f}s" + (" (released)" if result.released else ""))
        if result.excluded_marked_true:
            c.print(f"left out {result.excluded_marked_true:,} readings inside incidents marked true")
        if result.failures:
            c.print(table("failed models", ["device", "sensor", "reason"],
                          [[f["device"], f["sensor"], f["reason"]] for f in result.failures[:20]]))

    emit(json_out, payload, human)


@models.command("versions")
@handle_errors
def versions(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """List model versions (the released one is marked)."""
    items = [v.as_dict() for v in open_fleet(home).versions()]
    emit(json_out, {"versions": items},
         lambda c: c.print(table("model versions", VERSION_COLUMNS, [[v[k] for k in VERSION_COLUMNS] for v in items])))


@models.command("list")
@handle_errors
def list_models(
    version: Annotated[str | None, typer.Option(help="Version (default: the released one).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many models.")] = 1000,
    shard: Annotated[int | None, typer.Option(
        help="Only this shard's models (e.g. those of a failed task: `runs show` names its shard).", min=0)] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the models of a version: one per (device, sensor)."""
    fleet = open_fleet(home)
    record = fleet.version(version)
    manifest = fleet.models(record.version, shard)
    rows = manifest.slice(0, limit).to_pylist()
    cols = ["device", "sensor", "status", "n_train", "n_sv", "shard", "reason"]
    emit(json_out, {"version": record.version, "total": manifest.num_rows, "models": rows},
         lambda c: c.print(table(f"{record.version}: {manifest.num_rows:,} models", cols, [[r[k] for k in cols] for r in rows])))


@models.command("show")
@handle_errors
def show(
    device: Annotated[str, typer.Argument(help="Device id.")],
    sensor: Annotated[str, typer.Argument(help="Sensor id.")],
    version: Annotated[str | None, typer.Option(help="Version (default: the released one).")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one (device, sensor) model: version, training size, support vectors, parameters (a device model: once,
    with its sensors)."""
    info = open_fleet(home).model(device, sensor, version)
    emit(json_out, info, lambda c: c.print(table(None, ["field", "value"], [[k, v] for k, v in info.items()])))


@models.command("release")
@handle_errors
def release(
    version: Annotated[str, typer.Argument(help="Version to release, e.g. v3.")],
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a version the released (current) one used by default for scoring."""
    record = open_fleet(home).release(version)
    emit(json_out, record.as_dict(), lambda c: c.print(f"released {record.version}"))


@models.command("import-sklearn")
@handle_errors
def import_sklearn(
    file: Annotated[Path, typer.Argument(help="Trusted pickle/joblib file of a StandardScaler+OneClassSVM pipeline.")],
    device: Annotated[str, typer.Option(help="Device the model is for.")],
    sensor: Annotated[str, typer.Option(help="Sensor the model is for.")],
    features: Annotated[str, typer.Option(help="Features the pipeline takes: raw or window:DURATION.")] = "raw",
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Required: you trust the file, since unpickling can run code. Even then only "
                               "scikit-learn/numpy/scipy model classes are loaded.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Convert a pickled scikit-learn pipeline to the safe array format, as a new unreleased version."""
    record = open_fleet(home).import_sklearn(file, device, sensor, features, trust_pickle=trust_pickle)
    emit(json_out, record.as_dict(),
         lambda c: c.print(f"imported {file} as {record.version} (release it with `fleetscore models release {record.version}`)"))


@models.command("health")
@handle_errors
def health(
    run: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest finished runs).")] = None,
    last: Annotated[int, typer.Option(help="Without --run: look at this many latest finished runs.", min=1, max=1000)] = 1,
    min_false_marks: Annotated[int, typer.Option(
        "--min-false-marks", help="List the released version's models with at least this many incidents marked false.",
        min=1, max=1_000_000)] = 2,
    limit: Annotated[int | None, typer.Option(help="List at most this many unhealthy models (default: all).",
                                              min=1)] = None,
    offset: Annotated[int, typer.Option(help="Skip this many unhealthy models first (key order).", min=0)] = 0,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Models that runs marked unhealthy (flagging far more than calibrated; retrain with train --only-unhealthy):
    all of them, in key order, or a page with --limit/--offset; and models whose incidents operators marked false,
    each with a suggested command."""
    report = open_fleet(home).health(run, last, min_false_marks, limit, offset)

    def cell(u: dict[str, Any], k: str) -> Any:
        return ", ".join(u["sensors"]) if k == "sensor" and u.get("sensors") else u.get(k)  # a device model: once

    def human(c: Any) -> None:
        shown, total = len(report["unhealthy"]), report["unhealthy_models"]
        page = "" if shown == total else f", {shown} listed from number {offset + 1}"
        c.print(table(f"{total} unhealthy model(s) in {len(report['runs'])} run(s){page}", HEALTH_COLUMNS,
                      [[cell(u, k) for k in HEALTH_COLUMNS] for u in report["unhealthy"]]))
        c.print(table(f"{len(report['false_alarms'])} model(s) with at least {min_false_marks} incidents marked false",
                      FALSE_ALARM_COLUMNS, [[u[k] for k in FALSE_ALARM_COLUMNS] for u in report["false_alarms"]]))
        for u in report["false_alarms"]:  # whole lines, to paste
            c.print(f"{u['device']} {u['sensor']}: {u['command']}")

    emit(json_out, report, human)


@models.command("adjust")
@handle_errors
def adjust(
    device: Annotated[str, typer.Argument(help="Device id.")],
    sensor: Annotated[str, typer.Argument(help="Sensor id (of a device model: any of its sensors).")],
    alarm_rate: Annotated[float, typer.Option(
        "--alarm-rate", help="Alarm rate in (0, 0.5) the model's threshold is recalibrated to on its training "
                             "readings (lower: fewer alarms).")],
    version: Annotated[str | None, typer.Option(help="Version to adjust (default: the released one).")] = None,
    release_new: Annotated[bool, typer.Option("--release", help="Release the new version.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a new version in which one model's threshold gives the alarm rate R; the old version stays as it is."""
    result = open_fleet(home).adjust_model(device, sensor, alarm_rate, version=version, release=release_new)
    payload = result.as_dict()

    def human(c: Any) -> None:
        was = "unknown" if result.previous_rate is None else f"{result.previous_rate:g}"
        c.print(f"version {result.version} (from {result.base_version}): {result.device} "
                f"{', '.join(result.sensors)} alarm rate {was} -> {result.alarm_rate:g}"
                + (" (released)" if result.released else f"; release it with `fleetscore models release {result.version}`"))

    emit(json_out, payload, human)
