"""What the fleet-scale benchmarks share: the simulated fleet they land, the machine they ran on, tables.

Imported by ``bench/scoring.py`` and ``bench/scale.py`` (run them from the repository root:
``python bench/scoring.py``); not part of the package.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

START = datetime(2026, 1, 1, tzinfo=UTC)
TRAIN = (START, START + timedelta(hours=1))  # hour 0 trains the models ...
SCORE = (START + timedelta(hours=1), START + timedelta(hours=2))  # ... hour 1 is scored
#: The pinned settings of the benchmarked models: StandardScaler + OneClassSVM, scikit-learn's semantics.
MODEL = {"kind": "ocsvm", "features": "raw", "nu": 0.05, "gamma": "scale"}


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Landed:
    rows: int
    seconds: float


def land_fleet(storage_url: str, models: int, sensors: int, devices_per_chunk: int = 5000) -> Landed:
    """Simulate ``models`` (device, sensor) series of minute readings over TRAIN and SCORE and land
    them chunk by chunk (as ingest or an import would): memory follows the chunk, not the fleet."""
    from fleetscore.core.simulate import iter_simulate
    from fleetscore.storage.fs import open_storage
    from fleetscore.storage.readings import ReadingStore

    store = ReadingStore(open_storage(storage_url))
    devices = max(1, models // sensors)
    started, rows = time.perf_counter(), 0
    for chunk in iter_simulate(devices, sensors, START, 2, 60.0, 0.01, 1, devices_per_chunk=devices_per_chunk):
        rows += store.land(chunk.select(["ts", "device", "sensor", "value"])).accepted
    return Landed(rows, time.perf_counter() - started)


def machine() -> str:
    """One line: CPU, cores, memory, Python and library versions, and the date (UTC)."""
    import numpy
    import pyarrow
    import sklearn

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM"
    except (ValueError, OSError, AttributeError):
        mem = "RAM unknown"
    try:
        import numba

        jit = f", numba {numba.__version__}"
    except ImportError:
        jit = ", no numba"
    return (f"{cpu}, {os.cpu_count()} cores, {mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, numpy {numpy.__version__}, pyarrow {pyarrow.__version__}, "
            f"scikit-learn {sklearn.__version__}{jit}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (what the README quotes)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def us(seconds: float) -> str:
    """A duration per model, in µs."""
    return f"{seconds * 1e6:,.1f} µs"
