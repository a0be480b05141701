"""Admission of a streamed batch: schema validation plus the rules only a stream needs.

On top of :func:`~fleetscore.core.schema.validate_readings` (bad time, non-finite value, bad ids),
a batch that arrives over HTTP or MQTT also rejects

- a second reading with the same (device, sensor, ts) in the batch (the first one wins, as in
  landing), with reason ``duplicate ...``;
- a reading too far in the future of the receive time (a device clock or unit error, which would
  otherwise push the stream watermark ahead and make everyone else's readings late).

Pure: the receive time is a parameter, never read from a clock.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.schema import REJECT_SCHEMA, Validated, validate_readings

DUPLICATE_REASON = "duplicate: same device, sensor and ts earlier in the batch"


def admit_readings(table: pa.Table, received_at_us: int, max_future_us: int, row_offset: int = 0) -> Validated:
    """Validate ``table`` (columns ts, device, sensor, value) and apply the stream rules above.

    ``rejected.row`` is the row's index in ``table`` plus ``row_offset``, sorted; ``good`` keeps
    the input order.
    """
    validated = validate_readings(table, row_offset=row_offset)
    good = validated.good
    if good.num_rows == 0:
        return validated
    ts_us = good.column("ts").cast(pa.int64()).to_numpy()
    future = ts_us > received_at_us + max_future_us
    dup = later_duplicates(good, ts_us)
    bad = future | dup
    if not bad.any():
        return validated
    reasons = np.where(future, f"timestamp is more than {max_future_us // 1_000_000} s after the receive time",
                       DUPLICATE_REASON)[bad]
    rows = _good_rows(table.num_rows, validated.rejected, row_offset)[bad]
    extra = as_rejects(good.filter(pa.array(bad)), reasons.tolist(), rows)
    rejected = pa.concat_tables([validated.rejected, extra]).sort_by("row")
    return Validated(good.filter(pa.array(~bad)), rejected)


def as_rejects(readings: pa.Table, reasons: list[str], rows: np.ndarray | None = None) -> pa.Table:
    """Canonical readings turned into quarantine rows (:data:`REJECT_SCHEMA`); ``rows`` None = unknown."""
    n = readings.num_rows
    return pa.table(
        {
            "row": pa.nulls(n, pa.int64()) if rows is None else pa.array(rows, pa.int64()),
            "ts": pc.strftime(readings.column("ts"), format="%Y-%m-%dT%H:%M:%SZ"),
            "device": readings.column("device"),
            "sensor": readings.column("sensor"),
            "value": pc.cast(readings.column("value"), pa.string()),
            "reason": pa.array(reasons, pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


def _good_rows(n: int, rejected: pa.Table, row_offset: int) -> np.ndarray:
    """Input row numbers (plus offset) of the good rows, in order."""
    keep = np.ones(n, dtype=bool)
    keep[rejected.column("row").to_numpy() - row_offset] = False
    return np.flatnonzero(keep) + row_offset


def later_duplicates(good: pa.Table, ts_us: np.ndarray) -> np.ndarray:
    """True for every row whose (device, sensor, ts) already occurred earlier in the batch."""
    n = good.num_rows
    dev = pc.dictionary_encode(good.column("device").combine_chunks()).indices.to_numpy().astype(np.int64)
    sen = pc.dictionary_encode(good.column("sensor").combine_chunks()).indices.to_numpy().astype(np.int64)
    pair = dev * (int(sen.max()) + 1) + sen
    rel = ts_us - int(ts_us.min())
    span = (int(pair.max()) + 1) * (int(rel.max()) + 1)
    if span * n < 2**62:  # one packed key (key, row): a plain sort is stable by construction
        order = np.sort((pair * (int(rel.max()) + 1) + rel) * n + np.arange(n)) % n
    else:
        order = np.lexsort((np.arange(n), rel, pair))
    p, r = pair[order], rel[order]
    same = (p[1:] == p[:-1]) & (r[1:] == r[:-1])
    dup = np.zeros(n, dtype=bool)
    dup[order[1:][same]] = True
    return dup
