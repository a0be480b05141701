"""Streaming ingest: HTTP, MQTT, Kafka-protocol and NATS JetStream front doors, the durable log with
group commit, compaction into the hourly Parquet partitions, and the event-time window stream.

    parse.py     request bodies (JSON, NDJSON, CSV, Arrow IPC) → Arrow tables, columnar
    records.py   one log record: an admitted batch (good rows, rejected rows, source, key)
    log.py       segment files of framed records, fsynced by a group-commit thread
    service.py   admit → append → wait for the fsync; idempotency keys; counters
    compact.py   log → readings/ + windows/ + quarantine/, crash-safe, via a staged checkpoint
    mqtt.py      the MQTT subscriber: acknowledges to the broker after the fsync
    messages.py  stream messages (Kafka, NATS) → one parsed group; bad rows traced to their message
    streams.py   what stream consumers share: group → durable record, the status (lag) file
    kafka.py     the Kafka-protocol consumer-group member: commits offsets after the fsync
    nats.py      the JetStream durable pull consumer: acks after the fsync
    runtime.py   one front door's log writer plus background compaction
The HTTP routes are in :mod:`fleetscore.web.ingest`, the ``[ingest]`` settings in
:mod:`fleetscore.config.ingest`.
"""
