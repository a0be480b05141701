"""Detection quality of a run against a labels file (the simulator's output works as is), or operators' marks.

Reads the labels (CSV or Parquet with ts, device, sensor, label and optionally anomaly_kind), the
run's committed predictions and its version's feature spec (window features predict per window),
and hands them to the pure `fleetscore.core.evaluate.evaluate`. With marks as labels (`mark_labels`)
the labelled readings are the run's predictions inside marked incidents: those of an incident marked
``true`` (its sensors, first to last flag) are positive, those of one marked ``false`` negative (its
flags were false alarms); ``ignore`` and unmarked incidents say nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.evaluate import Evaluation, evaluate
from fleetscore.core.features import parse_features
from fleetscore.core.runs import RunRecord
from fleetscore.core.spans import covered, sensor_spans
from fleetscore.errors import InputError
from fleetscore.services.context import Context
from fleetscore.storage import layout
from fleetscore.storage.predictions import PredictionStore

LABEL_COLUMNS = ("ts", "device", "sensor", "label", "anomaly_kind")
#: The anomaly kind of readings inside incidents marked true (evaluation with marks as labels).
MARKED_TRUE = "marked true"


def read_labels(path: Path) -> pa.Table:
    """The label columns of a CSV or Parquet file, ts as a UTC timestamp; InputError saying what is wrong."""
    if not path.is_file():
        raise InputError(f"--labels {path}: no such file")
    try:
        with open(path, "rb") as fh:
            parquet = fh.read(4) == b"PAR1"
        if parquet:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--labels {path}: not a readable CSV or Parquet file ({exc})") from exc
    missing = [c for c in LABEL_COLUMNS[:4] if c not in table.column_names]
    if missing:
        raise InputError(f"--labels {path}: missing column(s) {', '.join(missing)}; need ts, device, sensor, label")
    table = table.select([c for c in LABEL_COLUMNS if c in table.column_names])
    ts = table.column("ts")
    if not pa.types.is_timestamp(ts.type):
        try:
            ts = pc.cast(ts, pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"--labels {path}: column ts is not an ISO 8601 time ({exc})") from exc
    elif ts.type.tz is None:
        ts = pc.assume_timezone(ts, "UTC")
    return table.set_column(0, "ts", ts)


def mark_labels(ctx: Context, predictions: pa.Table) -> pa.Table:
    """Labels (ts, device, sensor, label, anomaly_kind) of the ``predictions`` rows inside marked incidents:
    1 inside one marked true, 0 inside one marked false (and none marked true); other rows are not labelled."""
    from fleetscore.catalog.incidents import IncidentStore

    store = IncidentStore(ctx.catalog)
    true = covered(predictions, sensor_spans(store.marked_spans("true")))
    false = covered(predictions, sensor_spans(store.marked_spans("false"))) & ~true
    keep = pa.array(true | false)
    rows = predictions.filter(keep)
    label = pa.array(true[true | false].astype(np.int8))
    return pa.table({"ts": rows.column("ts").cast(pa.timestamp("us", tz="UTC")), "device": rows.column("device"),
                     "sensor": rows.column("sensor"), "label": label,
                     "anomaly_kind": pc.if_else(pc.equal(label, 1), MARKED_TRUE, pa.scalar(None, pa.string()))})


def evaluate_run(ctx: Context, run_id: str, labels_path: Path | None, *,
                 from_marks: bool = False) -> tuple[RunRecord, Evaluation]:
    """(the run record, its evaluation against the labels in ``labels_path``, or ``from_marks`` the operators' marks)."""
    if from_marks == (labels_path is not None):
        raise InputError("give either --labels FILE or --from-marks")
    layout.check_run_id(run_id)
    run = ctx.catalog.get_run(run_id)
    from_us, to_us = run.window_from, run.window_to
    predictions = PredictionStore(ctx.storage).for_run(run_id, from_us, to_us)
    if labels_path is None:
        labels = mark_labels(ctx, predictions)
        if labels.num_rows == 0:
            raise InputError(f"no scored reading of run {run_id} lies in an incident marked true or false; "
                             "mark incidents with `fleetscore incidents mark ID --as true|false`")
    else:
        labels = read_labels(Path(labels_path))
        ts = labels.column("ts").cast(pa.timestamp("us", tz="UTC"))
        lo, hi = (pa.scalar(t, pa.int64()).cast(ts.type) for t in (from_us, to_us))
        labels = labels.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))  # the run's window only
    spec = parse_features(ctx.catalog.get_version(run.version).features)
    window_s = spec.width_s if spec.name == "window" else 0
    return run, evaluate(predictions, labels, window_s)
