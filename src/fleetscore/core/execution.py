"""How a run's tasks execute: on the executor's workers, or one after another in the driver process.

A local process pool costs about a second to start (fork server, preloaded modules, workers), and
numba costs over half a second to import and load its compiled kernel into a process that has not
yet. For an hourly window of a small or mid-size fleet that is most of the run, so the driver
estimates both ways from the planned work (models, and kernel evaluations of ocsvm models) and
picks the cheaper one: in-process (counts as one worker), or the pool; a warm pool costs nothing
to start. In-process, the ocsvm kernel is numpy unless numba is loaded already or its load pays
for itself (the two kernels agree to a few ulp).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Estimates (seconds, measured with bench/scoring.py on 2 cores) that the choice compares.
POOL_START_S = 1.2  # start a local pool: fork server, its preloaded modules, the workers
NUMBA_LOAD_S = 0.6  # import numba and load the compiled kernel from its cache, once per process
#: read, score and write one model's hour beside its kernel: raw features, and those that read history (context,
#: window aggregates) and score robust profiles
MODEL_S = {"raw": 45e-6, "history": 150e-6}
PAIR_S = {"numba": 4.5e-9, "numpy": 30e-9}  # one kernel evaluation (row × support vector)


@dataclass(frozen=True)
class Execution:
    """The choice for one run: ``mode`` ``in-process`` or ``pool``, its workers, ocsvm kernel, estimates."""

    mode: str
    workers: int
    kernel: str
    estimated_s: float  # of the chosen way
    other_s: float | None  # of the way not taken (None: there was no choice)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """For the run record (``extra.execution``), estimates to the millisecond."""
        out = asdict(self)
        for name in ("estimated_s", "other_s"):
            if out[name] is not None:
                out[name] = round(out[name], 3)
        return out


def work_s(models: int, pairs: float, kernel: str, features: str = "raw") -> float:
    """Estimated seconds of the planned work on one core, with ``kernel`` loaded; ``features``: the version's."""
    return models * MODEL_S["raw" if features == "raw" else "history"] + pairs * PAIR_S[kernel]


def choose_execution(models: int, pairs: float, workers: int, *, features: str = "raw", kernel: str = "auto",
                     in_process: str = "auto", can_inline: bool = True, pool_warm: bool = False,
                     numba_available: bool = True, numba_loaded: bool = False) -> Execution:
    """In-process or on the pool, whichever is estimated faster for ``models`` models and ``pairs`` kernel
    evaluations; ``kernel``: the ``[executor] kernel`` setting (``auto`` lets in-process runs pick numpy);
    ``in_process``: ``auto``, or ``always`` / ``never`` to force the choice (``[executor] in_process``).

    ``can_inline``: the executor lets tasks run in the driver (a local one; Ray runs stay on the cluster).
    """
    pool_kernel = "numba" if kernel == "numba" or (kernel == "auto" and numba_available) else "numpy"
    start = "warm pool" if pool_warm else f"pool start {POOL_START_S:g} s"
    pool_s = (0.0 if pool_warm else POOL_START_S) + work_s(models, pairs, pool_kernel, features) / workers
    if not can_inline:
        return Execution("pool", workers, pool_kernel, work_s(models, pairs, pool_kernel, features) / workers, None,
                         "the executor runs every task on its workers")
    if in_process == "never" and workers > 1:
        return Execution("pool", workers, pool_kernel, pool_s, None, f"in_process = never ({start})")
    inline_kernel = _inline_kernel(pairs, kernel, numba_available, numba_loaded)
    inline_s = work_s(models, pairs, inline_kernel, features) + (
        NUMBA_LOAD_S if inline_kernel == "numba" and not numba_loaded else 0.0)
    if workers <= 1 or in_process == "always":
        return Execution("in-process", 1, inline_kernel, inline_s, None,
                         "one worker" if workers <= 1 else "in_process = always")
    if inline_s <= pool_s:
        return Execution("in-process", 1, inline_kernel, inline_s, pool_s,
                         f"in-process {inline_s:.2f} s <= {workers} workers {pool_s:.2f} s ({start})")
    return Execution("pool", workers, pool_kernel, pool_s, inline_s,
                     f"{workers} workers {pool_s:.2f} s ({start}) < in-process {inline_s:.2f} s")


def _inline_kernel(pairs: float, kernel: str, numba_available: bool, numba_loaded: bool) -> str:
    """The kernel of in-process tasks: the one set, else numba when loaded or when its load pays for itself."""
    if kernel != "auto":
        return kernel
    if not numba_available:
        return "numpy"
    if numba_loaded or pairs * (PAIR_S["numpy"] - PAIR_S["numba"]) > NUMBA_LOAD_S:
        return "numba"
    return "numpy"
