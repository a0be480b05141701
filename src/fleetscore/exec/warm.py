"""Preloaded by the local executor's fork server so that every worker starts warm.

Importing this module compiles (or loads from numba's on-disk cache) the fused scoring kernel and
imports the Arrow modules tasks use: work each fresh worker would otherwise repeat in its first
task, about half a second. Workers fork from the fork server and inherit it all, so a process that
scores window after window (scheduler, web, benchmarks) starts every run's pool warm. Nothing
else imports this module: the import is the warm-up.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute
import pyarrow.parquet  # noqa: F401

from fleetscore.core import ocsvm


def warm_up() -> None:
    """Score one row with a one-model shard: numba compiles or loads the kernel now."""
    one = np.ones((1, 1))
    params = ocsvm.OcsvmParams(one - 1, one, np.ones(1), np.zeros(1), np.array([0, 1]), one - 1, np.ones(1))
    ocsvm.decision_function(params, np.zeros(1, dtype=np.int64), one)


warm_up()
