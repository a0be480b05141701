"""Severity: one scale in [0, 100] for every model, from the tail probability of a reading.

Each calibrated model kind turns a reading into ``p``, the probability (under the model's own
calibration, fitted on its training data) that a normal reading is at least this far out. The
severity is

    severity = 100 * (1 - 2 ** (-(-log10 p) / DECADES_PER_HALVING))

so it halves its distance to 100 every ``DECADES_PER_HALVING`` decades of ``p``: p = 1e-4 (the
default alarm rate) is 50, 1e-8 is 75, 1e-12 is 87.5, and p = 1 is 0. It is monotone and does not
saturate (until p ~ 1e-200, at float precision), so one fleet-wide threshold means the same rarity
on every model, and ranking readings by severity (as NAB's threshold sweep does) keeps their order. Pure: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

#: Decades of tail probability per halving of the distance to 100 (p = 1e-4 gives severity 50).
DECADES_PER_HALVING = 4.0
#: Smallest tail probability taken into account (keeps log10 finite).
MIN_TAIL_PROBABILITY = 1e-300


def severity_from_tail(p: np.ndarray) -> np.ndarray:
    """Severity in [0, 100] of tail probabilities ``p`` (clipped to [MIN_TAIL_PROBABILITY, 1]); NaN stays NaN."""
    p = np.clip(np.asarray(p, dtype=np.float64), MIN_TAIL_PROBABILITY, 1.0)
    decades = -np.log10(p)
    severity: np.ndarray = 100.0 * (1.0 - np.exp2(-decades / DECADES_PER_HALVING))
    return severity


def tail_from_severity(severity: np.ndarray) -> np.ndarray:
    """Inverse of `severity_from_tail`: the tail probability a severity stands for."""
    s = np.clip(np.asarray(severity, dtype=np.float64), 0.0, 100.0)
    with np.errstate(divide="ignore"):
        decades = -DECADES_PER_HALVING * np.log2(1.0 - s / 100.0)
    return np.power(10.0, -decades)
