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


def point_metrics(predictions: pa.Table, labels: pa.Table) -> PointMetrics:
    """Join predictions (ts, device, sensor, is_anomaly) with labels (ts, device, sensor, label)."""
    keys = ["ts", "device", "sensor"]
    pred = predictions.select(keys + ["is_anomaly"])
    lab = labels.select(keys + ["label"]).cast(pa.schema([pred.schema.field("ts"), pa.field("device", pa.string()),
                                                          pa.field("sensor", pa.string()), pa.field("label", pa.int8())]))
    joined = pred.join(lab, keys=keys, join_type="inner")
    flagged = joined.column("is_anomaly").to_numpy(zero_copy_only=False).astype(bool)
    truth = pc.fill_null(joined.column("label"), 0).to_numpy(zero_copy_only=False).astype(bool)
    return PointMetrics(
        matched=joined.num_rows,
        true_pos=int(np.sum(flagged & truth)),
        false_pos=int(np.sum(flagged & ~truth)),
        false_neg=int(np.sum(~flagged & truth)),
    )
