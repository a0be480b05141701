"""Streaming commands: ``serve`` (HTTP ingest + dashboard), ``compact``, ``windows`` and the ``ingest`` group (mqtt)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, console, emit, export, handle_errors, open_fleet, table

commands = typer.Typer()
ingest = typer.Typer(help="Streaming ingest clients (MQTT).", no_args_is_help=True)

IntervalOpt = Annotated[
    str | None,
    typer.Option(
        "--compact-interval", help="Compact the log this often, e.g. 10s; 0 = never (default: ingest.compact_interval or 10s)."),
]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(fleet: Any, compact_interval: str | None) -> Any:
    """The home's ``[ingest]`` settings with ``--compact-interval`` applied."""
    from fleetscore.config.ingest import parse_interval

    if compact_interval is None:
        return fleet.config.ingest
    return fleet.config.ingest.with_overrides(compact_interval_s=parse_interval(compact_interval, "--compact-interval"))


@commands.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (non-loopback needs FLEETSCORE_TOKEN).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8000,
    compact_interval: IntervalOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the HTTP server: ingest (POST /v1/readings), dashboard, /metrics; compacts the log on its own."""
    import os
    import signal

    from fleetscore.errors import InputError

    fleet = open_fleet(home)
    if not is_loopback(host) and not fleet.config.web.token:
        raise InputError(f"refusing to listen on {host}: it is not a loopback address and FLEETSCORE_TOKEN is "
                         "not set (set a token so that writes need Authorization: Bearer <token>)")
    import uvicorn

    from fleetscore.ingest.checkpoint import IngestPaths
    from fleetscore.ingest.log import writer_active
    from fleetscore.web.app import create_app
    from fleetscore.web.ingest import SOURCE

    if writer_active(IngestPaths.of_home(fleet.config.home).log_dir(SOURCE)):
        raise InputError(f"another `fleetscore serve` is already running on {fleet.config.home}")
    settings = _settings(fleet, compact_interval)
    application = create_app(fleet, compact_interval_s=settings.compact_interval_s)
    url = f"http://{host}:{port}"
    emit(json_out, {"url": url, "home": str(fleet.config.home), "pid": os.getpid()},
         lambda c: c.print(f"fleetscore serving {fleet.config.home} on {url} (Ctrl-C to stop)"))
    server = uvicorn.Server(uvicorn.Config(application, host=host, port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn re-raises the stop signal: end with exit 0
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise typer.Exit(1)


@commands.command()
@handle_errors
def compact(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Compact the ingest log now: readings become visible, stream windows and quarantine are written."""
    result = open_fleet(home).compact()
    payload = result.as_dict()
    emit(json_out, payload, lambda c: c.print(table("compaction", ["field", "value"], [[k, v] for k, v in payload.items()])))


@commands.command()
@handle_errors
def windows(
    start: Annotated[str, typer.Option("--from", help="First window start (ISO 8601, inclusive).")],
    end: Annotated[str, typer.Option("--to", help="Window starts before this (ISO 8601, exclusive).")],
    out: Annotated[Path, typer.Option("--out", help="Output file (.csv or .parquet).")],
    width: Annotated[str | None, typer.Option(help="Window width, e.g. 1m (default: ingest.window or 1m).")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export closed stream windows (count, mean, std, min, max per device, sensor and window)."""
    export(json_out, open_fleet(home).windows(start, end, width), out, "windows")


@ingest.command("mqtt")
@handle_errors
def mqtt(
    broker: Annotated[str, typer.Option(help="Broker URL, mqtt://HOST:PORT.")],
    topic: Annotated[str, typer.Option(help="Topic filter; the last two levels are device and sensor.")] = "fleet/+/+",
    client_id: Annotated[str, typer.Option(
        help="MQTT client id (keeps the broker session across restarts).")] = "fleetscore-ingest",
    compact_interval: IntervalOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Subscribe with QoS 1 and acknowledge each message once its readings are durable; runs until stopped."""
    import signal
    import threading

    from fleetscore.ingest.mqtt import SOURCE, Broker, MqttIngest

    target = Broker.parse(broker)
    fleet = open_fleet(home)
    runtime = fleet.ingest_runtime(SOURCE, _settings(fleet, compact_interval))
    err = console(stderr=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    err.print(f"connecting to mqtt://{target.host}:{target.port} (Ctrl-C to stop)")
    subscriber = MqttIngest(runtime.start(), target, topic, client_id,
                            on_subscribed=lambda: err.print(f"subscribed to {topic} on mqtt://{target.host}:{target.port}"))
    try:
        subscriber.run(stop)
    finally:
        payload = subscriber.stats() | runtime.stats()
        runtime.stop(compact=True)
    payload |= runtime.stats()
    emit(json_out, payload, lambda c: c.print(f"received {subscriber.messages:,} messages, "
                                              f"accepted {payload.get('accepted_total', 0):,} readings"))
