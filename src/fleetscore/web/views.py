"""What each dashboard page shows, as plain values: built from :class:`~fleetscore.api.Fleet` only.

Pages (:mod:`fleetscore.web.pages`) render these values and the JSON API (:mod:`fleetscore.web.api`)
returns them as they are, so a number on a page is the number in the API. Everything is bounded:
recent runs are the last ``limit``, fleet views cover at most :data:`MAX_HOURS` hours, series are
thinned to ``max_points``, logs are tails.

Hostile ids (a run id that is not hex, a device id with control characters or longer than any id
fleetscore accepts) are answered with :class:`~fleetscore.errors.NotFoundError` before any lookup.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import MISSING, dataclass, field, fields, make_dataclass, replace
from typing import TYPE_CHECKING, Any, get_type_hints

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import VersionRecord
from fleetscore.catalog.incidents import ACTIVE_FILTER
from fleetscore.core import anomalies as stats
from fleetscore.core.runs import FINISHED_STATUSES, ModelFailure, RunRecord, TaskRecord
from fleetscore.core.schema import MAX_ID_LENGTH
from fleetscore.core.times import HOUR_US, iso, iso_us, parse_time
from fleetscore.errors import InputError, NotFoundError
from fleetscore.storage import layout
from fleetscore.storage.logs import AttemptLog

if TYPE_CHECKING:
    from fleetscore.api import Fleet

DEFAULT_HOURS = 48
MAX_HOURS = 24 * 7
#: Runs the overview lists and draws (newest first).
RECENT_RUNS = 50
#: Active incidents the overview lists first (newest first; all of them are on ``/incidents``).
OVERVIEW_INCIDENTS = 8
#: Run-log lines shown (the last ones), task attempts shown, characters of stdout/stderr shown (the end).
MAX_LOG_LINES = 1000
MAX_ATTEMPTS = 50
MAX_OUTPUT_CHARS = 32 * 1024
DEFAULT_POINTS = 4000
#: Hourly count cubes kept in memory (see :func:`anomaly_counts`).
MAX_CUBES = 8
_CUBES: OrderedDict[tuple[Any, ...], pa.Table] = OrderedDict()
_CUBES_LOCK = threading.Lock()
#: The ingest rate on the overview is measured over the dashboard's reads of the counters in this span.
RATE_WINDOW_S = 300.0


@dataclass(frozen=True)
class Span:
    """The time range a view covers: [start, end), whole hours."""

    start: str
    end: str
    hours: int


#: Fields of a run record that hold times (µs inside the program, ISO 8601 text in pages and JSON).
RUN_TIMES = ("window_from", "window_to", "created_at", "started_at", "finished_at")
VERSION_TIMES = ("created_at", "train_from", "train_to")


def _with_text_times(name: str, record: type, times: tuple[str, ...]) -> Any:
    """A frozen dataclass with ``record``'s fields and defaults, the ``times`` typed as text (what its as_dict gives)."""
    hints = get_type_hints(record)
    out = []
    for f in fields(record):
        default = (field(default=f.default) if f.default is not MISSING else
                   field(default_factory=f.default_factory) if f.default_factory is not MISSING else field())
        out.append((f.name, str | None if f.name in times else hints[f.name], default))
    return make_dataclass(name, out, frozen=True, namespace={"__module__": __name__})


#: A run as pages and the JSON API show it: `RunRecord`'s fields, its times as ISO 8601 text (`RunRecord.as_dict`).
RunView: Any = _with_text_times("RunView", RunRecord, RUN_TIMES)
#: A model version as pages and the JSON API show it (`VersionRecord.as_dict`).
VersionView: Any = _with_text_times("VersionView", VersionRecord, VERSION_TIMES)


def _iso_stamp(us: int | None) -> str | None:
    return None if us is None else iso_us(us)


def run_view(run: RunRecord) -> Any:
    """``run`` as a `RunView`."""
    return RunView(**(run.as_dict() | {"status": run.status}))


@dataclass(frozen=True)
class HourCount:
    hour: str
    rows: int
    anomalies: int


@dataclass(frozen=True)
class Overview:
    """``/``: recent runs and their trend, anomalies per hour over the window, ingest counters."""

    window: Span
    runs: list[RunView]
    status_counts: dict[str, int]
    last_success_at: str | None
    released: str | None
    released_models: int
    rows: int
    anomalies: int
    anomalies_per_hour: list[HourCount]
    ingest: dict[str, Any] | None
    streams: list[dict[str, Any]]  # stream consumers' status (``SourceStatus.as_dict``)
    #: The newest active incidents (``Incident.as_dict``), at most :data:`OVERVIEW_INCIDENTS`, and how many are active.
    incidents: list[dict[str, Any]] = field(default_factory=list)
    incidents_active: int = 0


@dataclass(frozen=True)
class RunLogs:
    """The run's log (its last lines) and the logs of the task attempts that failed or were retried."""

    lines: list[dict[str, Any]]
    total_lines: int
    attempts: list[AttemptLog]


@dataclass(frozen=True)
class RunDetail:
    """``/runs/{id}``: the run record, its tasks with timings, failed models with reasons, logs."""

    run: RunView
    tasks: list[TaskRecord]
    failures: list[ModelFailure]
    logs: RunLogs


@dataclass(frozen=True)
class AnomalyRow:
    """Anomalies of one device (``sensor`` is None) or one (device, sensor) over the window."""

    device: str
    sensor: str | None
    rows: int
    anomalies: int
    rate: float


@dataclass(frozen=True)
class Heatmap:
    """Anomaly rate per row (device, or sensor of one device) × hour; None where nothing was scored."""

    rows: list[str]
    hours: list[str]
    rates: list[list[float | None]]
    anomalies: list[list[int]]
    counts: list[list[int]]


@dataclass(frozen=True)
class FleetView:
    """``/fleet``: heatmap of the most anomalous rows and the sorted list of devices or sensors."""

    window: Span
    by: str
    sort: str
    order: str
    device: str | None
    total: int
    top: list[AnomalyRow]
    heatmap: Heatmap


@dataclass(frozen=True)
class Series:
    """Columns of one sensor's readings; ``score``/``is_anomaly`` are None where nothing was scored, the
    explanation (``expected``, ``lower``, ``upper``, ``reason``) None where the predictions have none."""

    ts: list[str]
    value: list[float | None]
    score: list[float | None]
    is_anomaly: list[bool | None]
    downsampled: bool
    expected: list[float | None] = field(default_factory=list)
    lower: list[float | None] = field(default_factory=list)
    upper: list[float | None] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class SensorView:
    """``/devices/{d}/sensors/{s}``: readings with anomalies marked, counts, and the model's info."""

    device: str
    sensor: str
    window: Span
    readings: int
    scored: int
    anomalies: int
    model: dict[str, Any] | None
    model_note: str | None
    series: Series


@dataclass(frozen=True)
class ModelsView:
    """``/models``: all versions, the released one, and the models of the release that failed."""

    released: str | None
    versions: list[VersionView]
    release_failures: list[dict[str, Any]]


# --- helpers ------------------------------------------------------------------------------------
def check_id(value: str, what: str) -> str:
    """A device or sensor id that could exist; else NotFoundError (nothing is looked up)."""
    if not value or len(value) > MAX_ID_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise NotFoundError(f"no {what} {value[:60]!r}")
    return value


def check_run(run_id: str) -> str:
    try:
        return layout.check_run_id(run_id)
    except InputError:
        raise NotFoundError(f"no run {run_id[:60]!r}: run ids are 8-32 hex characters") from None


def span_of(fleet: Fleet, hours: int, end: str | None) -> tuple[Span, int, int]:
    """[end - hours, end) in whole hours; ``end`` defaults to the end of the latest scored window."""
    if not 1 <= hours <= MAX_HOURS:
        raise InputError(f"hours must be between 1 and {MAX_HOURS}, got {hours}")
    if end:
        hi = parse_time(end, "end")
    else:
        done = [r.window_to for r in fleet.runs(RECENT_RUNS) if r.status in FINISHED_STATUSES and r.rows]
        hi = max(done) if done else fleet.clock()
    hi = -(-hi // HOUR_US) * HOUR_US
    lo = hi - hours * HOUR_US
    return Span(iso(lo), iso(hi), hours), lo, hi


def ingest_stats(app: Any) -> dict[str, Any] | None:
    """The ingest counters when the app runs ingest (``app.state.ingest.stats()``), else None.

    Adds ``accepted_per_s``: readings accepted per second between this call and the oldest call of
    the last :data:`RATE_WINDOW_S` seconds (None on the first call).
    """
    ingest = getattr(app.state, "ingest", None)
    if ingest is None or not callable(getattr(ingest, "stats", None)):
        return None
    try:
        stats_ = ingest.stats()
    except Exception as exc:  # noqa: BLE001 - a broken counter must not take the dashboard down
        return {"error": f"ingest stats unavailable: {type(exc).__name__}"}
    if not isinstance(stats_, dict):
        return None
    out = dict(stats_)
    accepted = out.get("accepted_total", out.get("accepted"))
    if isinstance(accepted, (int, float)) and not isinstance(accepted, bool):
        out["accepted_per_s"] = _accepted_rate(app, float(accepted))
    return out


def _accepted_rate(app: Any, accepted: float) -> float | None:
    samples = getattr(app.state, "ingest_samples", None)
    if samples is None:
        samples = app.state.ingest_samples = deque(maxlen=1024)
    now = time.monotonic()
    while samples and now - samples[0][0] > RATE_WINDOW_S:
        samples.popleft()
    samples.append((now, accepted))
    first_t, first_n = samples[0]
    return (accepted - first_n) / (now - first_t) if now - first_t >= 1.0 else None


def anomaly_counts(fleet: Fleet, span: Span) -> pa.Table:
    """The hourly count cube of ``span``, computed once per state of the window's commits.

    Predictions change only when a run commits a window, so the cube is kept (a few, most recent
    first) under the set of committed runs overlapping the span: overview, fleet page and API share it.
    """
    lo, hi = parse_time(span.start), parse_time(span.end)
    commits = tuple(sorted((bounds, run) for bounds, run in fleet.committed_windows().items()
                           if bounds[0] < hi and bounds[1] > lo))
    key = (fleet.config.storage.url, span.start, span.end, commits)
    with _CUBES_LOCK:
        if key in _CUBES:
            _CUBES.move_to_end(key)
            return _CUBES[key]
    cube = fleet.anomaly_counts(span.start, span.end)
    with _CUBES_LOCK:
        _CUBES[key] = cube
        while len(_CUBES) > MAX_CUBES:
            _CUBES.popitem(last=False)
    return cube


def _rows(table: pa.Table, keys: list[str]) -> list[AnomalyRow]:
    cols = {k: table.column(k).to_pylist() for k in ("device", "rows", "anomalies", "rate")}
    sensors = table.column("sensor").to_pylist() if "sensor" in keys else [None] * table.num_rows
    return [AnomalyRow(d, s, int(r), int(a), float(x))
            for d, s, r, a, x in zip(cols["device"], sensors, cols["rows"], cols["anomalies"], cols["rate"])]


def _hours(hours_us: np.ndarray) -> list[str]:
    return [iso(int(h)) for h in hours_us]


# --- views --------------------------------------------------------------------------------------
def overview(fleet: Fleet, ingest: dict[str, Any] | None, hours: int = DEFAULT_HOURS,
             end: str | None = None, limit: int = RECENT_RUNS) -> Overview:
    span, lo, hi = span_of(fleet, hours, end)
    runs = fleet.runs(limit)
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status.value] = counts.get(run.status.value, 0) + 1
    released = next((v for v in fleet.versions() if v.released), None)
    cube = anomaly_counts(fleet, span)
    grid = stats.hour_grid(cube, None, None, lo, hi)
    return Overview(
        window=span,
        runs=[run_view(r) for r in runs],
        status_counts=counts,
        last_success_at=_iso_stamp(fleet.run_stats().last_success_at),
        released=released.version if released else None,
        released_models=released.models if released else 0,
        rows=int(grid.rows.sum()),
        anomalies=int(grid.anomalies.sum()),
        anomalies_per_hour=[HourCount(h, int(r), int(a)) for h, r, a in
                            zip(_hours(grid.hours_us), grid.rows[0], grid.anomalies[0])],
        ingest=ingest,
        streams=[source.as_dict() for source in fleet.stream_sources()],
        incidents=[i.as_dict() for i in fleet.incidents(status=ACTIVE_FILTER, limit=OVERVIEW_INCIDENTS)],
        incidents_active=fleet.active_incidents(),
    )


def run_detail(fleet: Fleet, run_id: str) -> RunDetail:
    run, tasks, failures = fleet.run(check_run(run_id))
    troubled = [t.task for t in tasks if t.status != "succeeded" or t.attempts > 1]
    return RunDetail(run_view(run), tasks, failures, run_logs(fleet, run.run_id, troubled))


def run_logs(fleet: Fleet, run_id: str, tasks: list[int]) -> RunLogs:
    """The last lines of the run's log and every attempt of ``tasks`` (stdout/stderr: their ends)."""
    lines = list(fleet.run_log(run_id))
    attempts = [
        replace(a, stdout=a.stdout[-MAX_OUTPUT_CHARS:], stderr=a.stderr[-MAX_OUTPUT_CHARS:])
        for task in tasks[:MAX_ATTEMPTS] for a in fleet.task_log(run_id, task)
    ]
    return RunLogs(lines[-MAX_LOG_LINES:], len(lines), attempts[:MAX_ATTEMPTS])


def fleet_view(fleet: Fleet, hours: int = DEFAULT_HOURS, end: str | None = None, by: str = "device",
               sort: str = "rate", order: str = "desc", limit: int = 100, rows: int = 30,
               device: str | None = None) -> FleetView:
    """Most anomalous devices (``by="device"``) or sensors; with ``device``, only that device's sensors."""
    if by not in ("device", "sensor"):
        raise InputError(f"by must be device or sensor, got {by[:20]!r}")
    if sort not in stats.SORT_COLUMNS or (sort == "sensor" and by == "device"):
        raise InputError(f"sort must be one of rate, anomalies, rows, device{', sensor' if by == 'sensor' else ''}")
    if order not in ("asc", "desc"):
        raise InputError(f"order must be asc or desc, got {order[:20]!r}")
    span, lo, hi = span_of(fleet, hours, end)
    cube = anomaly_counts(fleet, span)
    if device is not None:
        cube = cube.filter(pc.equal(cube.column("device"), check_id(device, "device")))
        by = "sensor"
    keys = ["device"] if by == "device" else ["device", "sensor"]
    rolled = stats.rollup(cube, keys)
    top = stats.ranked(rolled, sort, order == "desc", limit)
    grid_key = "sensor" if device is not None else "device"
    worst = stats.ranked(stats.rollup(cube, [grid_key]), "rate", True, rows).column(grid_key).to_pylist()
    grid = stats.hour_grid(cube, grid_key, worst, lo, hi)
    rates = np.where(np.isfinite(grid.rates), grid.rates, -1.0)
    heat = Heatmap(
        rows=grid.labels,
        hours=_hours(grid.hours_us),
        rates=[[None if r < 0 else float(r) for r in row] for row in rates],
        anomalies=grid.anomalies.tolist(),
        counts=grid.rows.tolist(),
    )
    return FleetView(span, by, sort, order, device, rolled.num_rows, _rows(top, keys), heat)


def sensor_view(fleet: Fleet, device: str, sensor: str, hours: int = DEFAULT_HOURS, end: str | None = None,
                max_points: int = DEFAULT_POINTS) -> SensorView:
    check_id(device, "device")
    check_id(sensor, "sensor")
    span, lo, hi = span_of(fleet, hours, end)
    model: dict[str, Any] | None = None
    note: str | None = None
    try:
        model = fleet.model(device, sensor)
    except NotFoundError as exc:
        note = str(exc)
    table = fleet.series(device, sensor, span.start, span.end)
    if table.num_rows == 0 and model is None:
        raise NotFoundError(f"no readings and no model for device {device[:60]!r} sensor {sensor[:60]!r}")
    ts_us = table.column("ts").cast(pa.int64()).to_numpy()
    values = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    flags = pc.fill_null(table.column("is_anomaly"), False).to_numpy(zero_copy_only=False)
    keep = stats.downsample(ts_us, flags, values, max_points)
    thin = table.take(pa.array(keep))
    series = Series(
        ts=[iso(int(t)) for t in ts_us[keep]],
        value=thin.column("value").to_pylist(),
        score=thin.column("score").to_pylist(),
        is_anomaly=thin.column("is_anomaly").to_pylist(),
        downsampled=len(keep) < table.num_rows,
        expected=thin.column("expected").to_pylist(), lower=thin.column("lower").to_pylist(),
        upper=thin.column("upper").to_pylist(), reason=thin.column("reason").to_pylist(),
    )
    return SensorView(
        device=device, sensor=sensor, window=span, readings=table.num_rows,
        scored=table.num_rows - table.column("score").null_count, anomalies=int(flags.sum()),
        model=model, model_note=note, series=series,
    )


def models_view(fleet: Fleet, max_failures: int = 200) -> ModelsView:
    versions = fleet.versions()
    released = next((v.version for v in versions if v.released), None)
    failures: list[dict[str, Any]] = []
    if released is not None:
        manifest = fleet.models(released)
        failed = manifest.filter(pc.equal(manifest.column("status"), "failed"))
        failures = failed.select(["device", "sensor", "reason"]).slice(0, max_failures).to_pylist()
    return ModelsView(released, [VersionView(**v.as_dict()) for v in reversed(versions)], failures)

