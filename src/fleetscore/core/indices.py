"""Model index arrays, checked the same way by every model kind (which model scores each row, which to take)."""

from __future__ import annotations

import numpy as np

from fleetscore.errors import InputError


def check_index(indices: object, n: int, what: str, models: str = "models") -> np.ndarray:
    """``indices`` as a 1-D int64 array of positions in ``range(n)``; InputError naming the first bad one."""
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise InputError(f"{what} must be a 1-D integer array, got {idx.dtype} with shape {idx.shape}")
    bad = np.flatnonzero((idx < 0) | (idx >= n))
    if bad.size:
        raise InputError(f"{what}[{bad[0]}] = {idx[bad[0]]} is out of range for {n} {models}")
    return idx.astype(np.int64)
