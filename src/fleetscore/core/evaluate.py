"""Detection quality against labels: point precision, recall and F1 (pure; tables in, numbers out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class PointMetrics:
    """Counts and ratios over the labelled readings that were scored."""

    matched: int
    true_pos: int
    false_pos: int
    false_neg: int

    @property
    def precision(self) -> float | None:
        flagged = self.true_pos + self.false_pos
        return self.true_pos / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        positives = self.true_pos + self.false_neg
        return self.true_pos / positives if positives else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p and r else None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"matched": self.matched, "true_pos": self.true_pos, "false_pos": self.false_pos,
                "false_neg": self.false_neg, "precision": self.precision, "recall": self.recall, "f1": self.f1}


# ---- events and anomaly kinds ----------------------------------------------------------------

LABEL_KEYS = ("ts", "device", "sensor")


@dataclass(frozen=True)
class KindMetrics:
    """Recall for one anomaly kind: of its labelled readings and of its events (runs of them)."""

    points: int
    points_flagged: int
    events: int
    events_detected: int

    @property
    def point_recall(self) -> float | None:
        return self.points_flagged / self.points if self.points else None

    @property
    def event_recall(self) -> float | None:
        return self.events_detected / self.events if self.events else None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"points": self.points, "points_flagged": self.points_flagged, "point_recall": self.point_recall,
                "events": self.events, "events_detected": self.events_detected, "event_recall": self.event_recall}


@dataclass(frozen=True)
class Evaluation:
    """Point metrics over the scored labelled readings, event recall overall and per anomaly kind.

    An event is a run of consecutive labelled readings of one series (and one kind); it counts when
    at least one of its readings was scored, and is detected when one of them was flagged.
    """

    points: PointMetrics
    overall: KindMetrics
    by_kind: dict[str, KindMetrics]
    labels: int
    unscored_labels: int

    def as_dict(self) -> dict[str, object]:
        return self.points.as_dict() | {
            "labels": self.labels, "unscored_labels": self.unscored_labels,
            "events": self.overall.events, "events_detected": self.overall.events_detected,
            "event_recall": self.overall.event_recall,
            "by_kind": {k: m.as_dict() for k, m in sorted(self.by_kind.items())},
        }


def evaluate(predictions: pa.Table, labels: pa.Table, window_s: int = 0) -> Evaluation:
    """Compare predictions (ts, device, sensor, is_anomaly) with labels (ts, device, sensor, label
    [, anomaly_kind]). With ``window_s`` > 0 a prediction stands for the window starting at its ts
    (window features), so each labelled reading is matched to the window that holds it.
    """
    lab = _normal_labels(labels)
    ts = lab.column("ts").cast(pa.int64()).to_numpy()
    if window_s > 0:
        width = int(window_s) * 1_000_000
        ts = ts - np.mod(ts, width)
    keyed = pa.table({"_ts": pa.array(ts, pa.int64()), "device": lab.column("device"), "sensor": lab.column("sensor"),
                      "_row": pa.array(np.arange(lab.num_rows, dtype=np.int64))})
    pred = predictions.select(list(LABEL_KEYS) + ["is_anomaly"])
    pred = pa.table({"_ts": pred.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()),
                     "device": pred.column("device").cast(pa.string()), "sensor": pred.column("sensor").cast(pa.string()),
                     "is_anomaly": pred.column("is_anomaly")})
    joined = keyed.join(pred, keys=["_ts", "device", "sensor"], join_type="inner").sort_by("_row")
    scored = np.zeros(lab.num_rows, dtype=bool)
    flagged = np.zeros(lab.num_rows, dtype=bool)
    rows = joined.column("_row").to_numpy()
    scored[rows] = True
    flagged[rows] = pc.fill_null(joined.column("is_anomaly"), False).to_numpy(zero_copy_only=False)
    truth = lab.column("label").to_numpy(zero_copy_only=False).astype(bool)
    kinds = np.asarray(lab.column("anomaly_kind").to_pylist(), dtype=object)

    points = PointMetrics(matched=int(scored.sum()), true_pos=int(np.sum(flagged & truth)),
                          false_pos=int(np.sum(flagged & ~truth & scored)), false_neg=int(np.sum(~flagged & truth & scored)))
    event = _event_ids(lab, truth, kinds)
    by_kind = {str(k): _kind_metrics(event, truth & (kinds == k), scored, flagged) for k in np.unique(kinds[truth])}
    return Evaluation(points, _kind_metrics(event, truth, scored, flagged), by_kind,
                      labels=int(truth.sum()), unscored_labels=int(np.sum(truth & ~scored)))


def _normal_labels(labels: pa.Table) -> pa.Table:
    """Labels sorted by series and time, with label 0/1 (null = 0) and anomaly_kind ("" if none given)."""
    from fleetscore.errors import InputError

    missing = [c for c in (*LABEL_KEYS, "label") if c not in labels.column_names]
    if missing:
        raise InputError(f"labels: missing column(s) {', '.join(missing)} (need ts, device, sensor, label)")
    if not pa.types.is_timestamp(labels.schema.field("ts").type):
        raise InputError(f"labels: column ts must be a timestamp, got {labels.schema.field('ts').type}")
    label = pc.fill_null(labels.column("label"), 0)
    if not (pa.types.is_integer(label.type) or pa.types.is_boolean(label.type) or pa.types.is_floating(label.type)):
        raise InputError(f"labels: column label must be 0/1, got {label.type}")
    label = pc.cast(pc.not_equal(pc.cast(label, pa.float64()), 0.0), pa.int8())
    if "anomaly_kind" in labels.column_names:
        kind = pc.fill_null(labels.column("anomaly_kind").cast(pa.string()), "")
    else:
        kind = pa.array([""] * labels.num_rows, pa.string())
    kind = pc.if_else(pc.equal(label, 1), pc.if_else(pc.equal(kind, ""), "anomaly", kind), "")
    table = pa.table({"ts": labels.column("ts").cast(pa.timestamp("us", tz="UTC")),
                      "device": labels.column("device").cast(pa.string()), "sensor": labels.column("sensor").cast(pa.string()),
                      "label": label, "anomaly_kind": kind})
    return table.sort_by([("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])


def _event_ids(lab: pa.Table, truth: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Event number of each labelled reading (-1 for normal ones); labels sorted by series and time."""
    n = lab.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    same_series = np.zeros(n, dtype=bool)
    if n > 1:
        same = [pc.equal(lab.column(c).slice(1), lab.column(c).slice(0, n - 1)).to_numpy(zero_copy_only=False)
                for c in ("device", "sensor")]
        same_series[1:] = same[0] & same[1] & (kinds[1:] == kinds[:-1])
    prev = np.concatenate(([False], truth[:-1]))
    starts = truth & ~(prev & same_series)
    return np.where(truth, np.cumsum(starts) - 1, -1)


def _kind_metrics(event: np.ndarray, mask: np.ndarray, scored: np.ndarray, flagged: np.ndarray) -> KindMetrics:
    ids = event[mask & scored]
    detected = np.unique(event[mask & scored & flagged])
    return KindMetrics(points=int(np.sum(mask & scored)), points_flagged=int(np.sum(mask & scored & flagged)),
                       events=int(np.unique(ids).size), events_detected=int(detected.size))
