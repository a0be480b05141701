"""Streaming ingest: HTTP and MQTT front doors, the durable log with group commit, compaction into
the hourly Parquet partitions, and the event-time window stream.

    parse.py     request bodies (JSON, NDJSON, CSV, Arrow IPC) → Arrow tables, columnar
    records.py   one log record: an admitted batch (good rows, rejected rows, source, key)
    log.py       segment files of framed records, fsynced by a group-commit thread
    service.py   admit → append → wait for the fsync; idempotency keys; counters
    compact.py   log → readings/ + windows/ + quarantine/, crash-safe, via a staged checkpoint
    http.py      the FastAPI router and the app lifespan that starts the background work
    mqtt.py      the MQTT subscriber: acknowledges to the broker after the fsync
    settings.py  the ``[ingest]`` settings of fleetscore.toml
"""
