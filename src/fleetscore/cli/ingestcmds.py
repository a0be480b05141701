"""Streaming commands: ``serve`` (HTTP ingest + dashboard), ``compact``, ``windows`` and the ``ingest`` group
(mqtt, kafka, nats, status)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetscore.cli.output import HomeOpt, JsonOpt, console, emit, export, handle_errors, open_fleet, table

commands = typer.Typer()
ingest = typer.Typer(help="Streaming ingest clients (MQTT, Kafka protocol, NATS JetStream) and their status.",
                     no_args_is_help=True)

#: TLS files of the stream front doors (mqtt, kafka, nats)
CaFileOpt = Annotated[str | None, typer.Option(help="CA certificate (PEM) to verify the broker or server.")]
CertFileOpt = Annotated[str | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")]
KeyFileOpt = Annotated[str | None, typer.Option(help="Client key (PEM) for mutual TLS.")]
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
    from fleetscore.web.limits import fit_descriptors, limited_protocol

    if writer_active(IngestPaths.of_home(fleet.config.home).log_dir(SOURCE)):
        raise InputError(f"another `fleetscore serve` is already running on {fleet.config.home}")
    settings = _settings(fleet, compact_interval)
    fit_descriptors(fleet.config.server)
    application = create_app(fleet, compact_interval_s=settings.compact_interval_s)
    url = f"http://{host}:{port}"
    emit(json_out, {"url": url, "home": str(fleet.config.home), "pid": os.getpid()},
         lambda c: c.print(f"fleetscore serving {fleet.config.home} on {url} (Ctrl-C to stop)"))
    server = uvicorn.Server(uvicorn.Config(application, host=host, port=port, log_level="warning",
                                           access_log=False, lifespan="on", http=limited_protocol(fleet.config.server),
                                           proxy_headers=False))  # the client address is the peer (failed-token limits)
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
    broker: Annotated[str, typer.Option(
        help="Broker URL, mqtt://[USER:PASSWORD@]HOST:PORT (mqtts:// for TLS); or credentials from "
             "FLEETSCORE_MQTT_USERNAME / FLEETSCORE_MQTT_PASSWORD.")],
    topic: Annotated[str, typer.Option(help="Topic filter; the last two levels are device and sensor.")] = "fleet/+/+",
    client_id: Annotated[str, typer.Option(
        help="MQTT client id (keeps the broker session across restarts).")] = "fleetscore-ingest",
    tls: Annotated[bool, typer.Option("--tls", help="Connect with TLS (as mqtts://).")] = False,
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
    compact_interval: IntervalOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Subscribe with QoS 1 and acknowledge each message once its readings are durable; runs until stopped."""
    from fleetscore.ingest.mqtt import SOURCE, Broker, MqttIngest

    fleet = open_fleet(home)
    target = Broker.build(broker, fleet.config.mqtt, tls, ca_file, cert_file, key_file)

    def consume(service: Any, stop: Any, err: Any) -> Any:
        subscriber = MqttIngest(service, target, topic, client_id, on_subscribed=lambda: err.print(
            f"subscribed to {topic} on {target.url}"))
        subscriber.run(stop)
        return subscriber

    _run_front_door(fleet, SOURCE, compact_interval, json_out, consume,
                    f"connecting to {target.url} (Ctrl-C to stop)")

FormatOpt = Annotated[str, typer.Option(
    "--format", help="Payload format of messages without a content-type header: json, ndjson, csv or arrow.")]
MemberOpt = Annotated[str | None, typer.Option(
    help="This process's name in the group (default: the host name); names its log, so one per process.")]


def _member(member: str | None) -> str:
    import re
    import socket

    return member or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "member"


def _format(fmt: str) -> str:
    from fleetscore.errors import InputError
    from fleetscore.ingest.messages import FORMATS

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt[:40]!r}")
    return fmt


def _run_front_door(fleet: Any, source: str, compact_interval: str | None, json_out: bool, consume: Any,
                    greeting: str) -> None:
    """Start the log writer of ``source``, run ``consume(service, stop, err)`` until a signal, then stop
    cleanly: the last records fsynced and compacted; prints the consumer's and the log's counters."""
    import signal
    import threading

    runtime = fleet.ingest_runtime(source, _settings(fleet, compact_interval))
    err = console(stderr=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    err.print(greeting)
    service = runtime.start()
    consumer = None
    try:
        consumer = consume(service, stop, err)
    finally:
        payload = (consumer.stats() if consumer is not None else {}) | runtime.stats()
        runtime.stop(compact=True)
    payload |= runtime.stats()
    emit(json_out, payload, lambda c: c.print(f"received {payload.get('messages_total', 0):,} messages, "
                                              f"accepted {payload.get('accepted_total', 0):,} readings"))


def _stream_sink(fleet: Any, service: Any, fmt: str) -> Any:
    from fleetscore.ingest.streams import StreamSink

    return StreamSink(service, fmt, fleet.clock)


@ingest.command("kafka")
@handle_errors
def kafka(
    topic: Annotated[list[str], typer.Option("--topic", help="Topic to consume (repeat for several).")],
    group: Annotated[str, typer.Option(help="Consumer group: members of one group share the partitions.")],
    bootstrap: Annotated[str | None, typer.Option(
        help="Brokers, HOST:PORT[,HOST:PORT] (default for Event Hubs: from FLEETSCORE_KAFKA_CONNECTION_STRING).")] = None,
    member: MemberOpt = None,
    fmt: FormatOpt = "json",
    start: Annotated[str, typer.Option(help="Where a group without committed offsets starts: earliest or latest.")] = "earliest",
    sasl_mechanism: Annotated[str | None, typer.Option(
        help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (credentials: FLEETSCORE_KAFKA_USERNAME / _PASSWORD).")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Connect with TLS.")] = False,
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
    prop: Annotated[list[str] | None, typer.Option(
        "-X", "--property", help="Any other librdkafka property, KEY=VALUE (repeatable; not secrets).")] = None,
    compact_interval: IntervalOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Consume Kafka-protocol topics as a group member; offsets are committed only once readings are durable."""
    from fleetscore.errors import InputError
    from fleetscore.ingest.kafka import KafkaIngest, client_config, parse_properties
    from fleetscore.ingest.streams import source_name

    name = _member(member)
    source = source_name("kafka", group, name)
    if start not in ("earliest", "latest"):
        raise InputError(f"--start must be earliest or latest, got {start[:40]!r}")
    fleet = open_fleet(home)
    conf = client_config(bootstrap=bootstrap, group=group, member=name, credentials=fleet.config.kafka,
                         sasl_mechanism=sasl_mechanism, tls=tls, ca_file=ca_file, cert_file=cert_file,
                         key_file=key_file, start=start, extra=parse_properties(prop or []))

    kind = _format(fmt)

    def consume(service: Any, stop: Any, err: Any) -> Any:
        consumer = KafkaIngest(_stream_sink(fleet, service, kind), conf, list(topic), on_assigned=lambda parts: err.print(
            f"assigned {len(parts)} partition(s): " + ", ".join(f"{t}/{p}" for t, p in parts)))
        consumer.run(stop)
        return consumer

    _run_front_door(fleet, source, compact_interval, json_out, consume,
                    f"{source}: connecting to {conf['bootstrap.servers']} (Ctrl-C to stop)")


@ingest.command("nats")
@handle_errors
def nats(
    stream: Annotated[str, typer.Option(help="JetStream stream to consume.")],
    durable: Annotated[str, typer.Option(help="Durable pull consumer: processes with one durable share its messages.")],
    server: Annotated[str, typer.Option(help="Server URL, nats://HOST:PORT (tls://HOST:PORT for TLS).")] = "nats://127.0.0.1:4222",
    subject: Annotated[str, typer.Option(
        help="Subject filter; the last two tokens may carry device and sensor (fleet.<device>.<sensor>).")] = "fleet.>",
    create_stream: Annotated[bool, typer.Option("--create-stream", help="Create the stream if it does not exist.")] = False,
    ack_wait: Annotated[str, typer.Option(
        help="Redelivery delay of unacknowledged messages for a new durable, e.g. 30s.")] = "30s",
    member: MemberOpt = None,
    fmt: FormatOpt = "json",
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
    compact_interval: IntervalOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pull from a JetStream durable consumer; each message is acknowledged once its readings are durable."""
    from fleetscore.core.times import parse_duration
    from fleetscore.ingest.nats import NatsIngest, NatsTarget
    from fleetscore.ingest.streams import source_name

    source = source_name("nats", durable, _member(member))
    fleet = open_fleet(home)
    target = NatsTarget.build(server=server, stream=stream, subject=subject, durable=durable,
                              create_stream=create_stream, ack_wait_s=parse_duration(ack_wait),
                              credentials=fleet.config.nats, ca_file=ca_file, cert_file=cert_file, key_file=key_file)

    kind = _format(fmt)

    def consume(service: Any, stop: Any, err: Any) -> Any:
        consumer = NatsIngest(_stream_sink(fleet, service, kind), target, on_subscribed=lambda: err.print(
            f"consuming {stream} ({subject}) as durable {durable}"))
        consumer.run(stop)
        return consumer

    _run_front_door(fleet, source, compact_interval, json_out, consume, f"{source}: connecting to {server} (Ctrl-C to stop)")


@ingest.command("status")
@handle_errors
def status(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Stream consumers of this home: lag per partition, last message and last commit."""
    from fleetscore.ingest.checkpoint import IngestPaths
    from fleetscore.ingest.streams import read_statuses

    fleet = open_fleet(home)
    sources = [s.as_dict() for s in read_statuses(IngestPaths.of_home(fleet.config.home))]
    rows = [[s["source"], "-" if s["lag"] is None else f"{s['lag']:,}", s["last_message_at"] or "-",
             s["last_commit_at"] or "-", s["updated_at"] or "-"] for s in sources]
    emit(json_out, sources, lambda c: c.print(
        table("stream sources", ["source", "lag", "last message", "last commit", "updated"], rows)
        if rows else "no stream consumer has run on this home"))
