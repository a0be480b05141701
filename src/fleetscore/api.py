"""The Python API: one :class:`Fleet` per home, the one door the faces (CLI, web, scheduler) use.

    fleet = Fleet.open("./fleetscore-home")
    fleet.import_file("readings.csv")
    fleet.train("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
    run = fleet.score("2026-01-02T00:00:00Z", "2026-01-02T01:00:00Z")

A Fleet builds the dependencies from the home's settings (storage, catalog, executor, clock) and
hands them to the services (`fleetscore.services`), which never see the Fleet itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import Catalog, VersionRecord
from fleetscore.clock import Clock, wall_clock
from fleetscore.config import Config, load_config
from fleetscore.core.incidents import Incident
from fleetscore.core.runs import ListPage, ModelFailure, RunRecord, TaskRecord
from fleetscore.core.schedule import ScheduleSpec
from fleetscore.core.times import parse_time, parse_window
from fleetscore.errors import InputError, NotFoundError
from fleetscore.exec.base import Executor
from fleetscore.exec.factory import make_executor
from fleetscore.exec.place import check_storage_reach
from fleetscore.services import runs
from fleetscore.services.context import Context
from fleetscore.services.importing import ImportResult, import_file, import_table
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage, open_storage
from fleetscore.storage.models import ModelStore
from fleetscore.storage.predictions import PredictionStore
from fleetscore.storage.quarantine import QuarantineStore
from fleetscore.storage.readings import ReadingStore

if TYPE_CHECKING:
    from fleetscore.config import IngestSettings
    from fleetscore.config.alerts import AlertSettings
    from fleetscore.ingest.replay import ReplayResult
    from fleetscore.ingest.runtime import IngestRuntime
    from fleetscore.ingest.streams import SourceStatus

Progress = Callable[[int, int], None]
Time = str | datetime
#: Modules local workers import before their first task (the task functions), so every task starts warm.
WORKER_PRELOAD = ("fleetscore.services.score", "fleetscore.services.train")


class Fleet:
    """A fleetscore home: its storage, catalog and executor settings, and every operation on them."""

    def __init__(self, config: Config, clock: Clock = wall_clock) -> None:
        self.config = config
        self.clock = clock

    @classmethod
    def open(cls, home: str | Path | None = None, *, clock: Clock = wall_clock, **overrides: Any) -> Fleet:
        """Open (or create) the home; ``overrides`` are settings as CLI flags give them (`fleetscore.config.load.FLAGS`)."""
        return cls(load_config(home).with_overrides(**overrides), clock)

    @cached_property
    def storage(self) -> Storage:
        storage = open_storage(self.config.storage.url)
        storage.check_root()
        return storage

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.config.catalog.url, self.clock)

    @cached_property
    def context(self) -> Context:
        """What the services take: storage, catalog, settings, clock."""
        return Context(self.storage, self.catalog, self.config, self.clock)

    def close(self) -> None:
        if "catalog" in self.__dict__:
            self.catalog.close()

    def executor(self, kind: str | None = None, workers: int | None = None) -> Executor:
        """The executor of the settings (or ``kind``), refused when its workers could not see local storage."""
        settings = self.config.executor
        executor = make_executor(kind or settings.kind, workers or settings.workers, settings.ray_address,
                                 env_address=settings.ray_env_address, preload=WORKER_PRELOAD,
                                 task_timeout_s=settings.task_timeout_s)
        try:
            check_storage_reach(self.storage, self.config.storage.shared, executor)
        except BaseException:
            executor.close()
            raise
        return executor

    # --- data ----------------------------------------------------------------------------------
    def import_file(self, path: str | Path, columns: str | None = None) -> ImportResult:
        return import_file(self.context, Path(path), columns)

    def import_table(self, table: pa.Table, source: str = "api") -> ImportResult:
        return import_table(self.context, table, source)

    def readings(self, start: Time, end: Time) -> pa.Table:
        lo, hi = parse_window(start, end)
        return ReadingStore(self.storage).read_window(lo, hi)

    def quarantine(self, limit: int = 1000, source: str | None = None) -> pa.Table:
        """The most recent quarantined rows (of all sources, or of one: import, http, mqtt, late), newest files first."""
        return QuarantineStore(self.storage).recent(limit, source)

    def replay_quarantine(self, reason: str = "late", device: str | None = None) -> ReplayResult:
        """Land the readings quarantined as ``reason`` (late) and list the scored windows they touch."""
        from fleetscore.ingest.replay import replay_quarantine

        return replay_quarantine(self.storage, self.config.home, reason, device)

    # --- streaming ingest ----------------------------------------------------------------------
    def compact(self) -> Any:
        """Compact the ingest log into readings, stream windows and the quarantine (a CompactResult)."""
        from fleetscore.ingest.compact import Compactor

        return Compactor(self.config.home, self.storage, self.config.ingest, self.clock).run()

    def ingest_runtime(self, source: str, settings: IngestSettings | None = None) -> IngestRuntime:
        """The log writer of ``source`` (http, mqtt) with background compaction; start it to take batches."""
        from fleetscore.ingest.runtime import IngestRuntime

        return IngestRuntime(self.config.home, self.storage, settings or self.config.ingest, source, self.clock)

    def stream_sources(self) -> list[SourceStatus]:
        """Each stream consumer's last status in this home (lag per partition, last message and commit)."""
        from fleetscore.ingest.checkpoint import IngestPaths
        from fleetscore.ingest.streams import read_statuses

        return read_statuses(IngestPaths.of_home(self.config.home))

    def windows(self, start: Time, end: Time, width: str | None = None) -> pa.Table:
        """Closed stream windows starting in [start, end) (width default: the ``[ingest] window``)."""
        from fleetscore.core.times import parse_duration
        from fleetscore.storage.windows import WindowStore

        lo, hi = parse_window(start, end)
        width_s = parse_duration(width) if width else self.config.ingest.window_s
        return WindowStore(self.storage).read(width_s, lo, hi)

    # --- models --------------------------------------------------------------------------------
    def train(self, start: Time, end: Time, *, kind: str | None = None, nu: float | None = None,
              gamma: float | str | None = None, features: str | None = None, release: bool = True,
              workers: int | None = None, on_progress: Progress | None = None,
              alarm_rate: float | None = None, only_unhealthy: bool = False) -> Any:
        """Train a new version; unpinned settings are chosen per model (see `fleetscore.services.tuning`).

        ``only_unhealthy``: retrain just the models the latest run of the released version marked
        unhealthy, into a new version that reuses every other model (`fleetscore.services.retrain`).
        """
        from fleetscore.services.retrain import retrain_unhealthy
        from fleetscore.services.train import train
        from fleetscore.services.tuning import resolve

        lo, hi = parse_window(start, end)
        executor = self.executor(workers=workers)
        try:
            if only_unhealthy:
                return retrain_unhealthy(self.context, executor, self.version(), lo, hi, release=release,
                                         on_progress=on_progress)
            t = self.config.train
            choice = resolve(kind or t.kind, t.nu if nu is None else nu, gamma or t.gamma, features or t.features,
                             t.alarm_rate if alarm_rate is None else alarm_rate)
            return train(self.context, executor, lo, hi, kind=choice.kind, features=choice.features, nu=choice.nu,
                         gamma=choice.gamma, alarm_rate=choice.alarm_rate, min_history=choice.min_history,
                         auto_device=choice.auto_device, shard_models=self.config.executor.shard_models,
                         release=release, on_progress=on_progress)
        finally:
            executor.close()

    def versions(self) -> list[VersionRecord]:
        return self.catalog.versions()

    def version(self, version: str | None = None) -> VersionRecord:
        """The named version, or the released one."""
        if version is None:
            version = self.catalog.released()
            if version is None:
                raise NotFoundError("no released model version: run `fleetscore train` first")
        layout.check_version(version)
        return self.catalog.get_version(version)

    def release(self, version: str) -> VersionRecord:
        layout.check_version(version)
        self.catalog.release(version)
        return self.catalog.get_version(version)

    def models(self, version: str | None = None, shard: int | None = None) -> pa.Table:
        """The manifest of a version (default: the released one): a row per model, or one shard's rows."""
        record, store = self.version(version), ModelStore(self.storage)
        if shard is not None:
            shards = store.read_shards(record.version).column("shard").to_pylist()
            if shard not in shards:
                raise InputError(f"model version {record.version} has shards 0 to {max(shards, default=-1)}; "
                                 f"got --shard {shard}")
            return store.read_shard_manifest(record.version, shard)
        _, manifest = store.read_manifest(record.version)
        return manifest

    def model(self, device: str, sensor: str, version: str | None = None) -> dict[str, Any]:
        record = self.version(version)
        manifest = self.models(record.version)
        row = manifest.filter(pc.and_(pc.equal(manifest.column("device"), device),
                                      pc.equal(manifest.column("sensor"), sensor)))
        if row.num_rows == 0:
            raise NotFoundError(f"no model for device {device[:80]!r} sensor {sensor[:80]!r} in {record.version}")
        info = row.to_pylist()[0]
        if info.get("kind") == "device" and info.get("slot") is not None and info["slot"] >= 0:
            info.update(self._device_model(record.version, manifest, info))
        info.update(version=record.version, kind=record.kind, features=record.features, params=record.params)
        return info

    def _device_model(self, version: str, manifest: pa.Table, info: dict[str, Any]) -> dict[str, Any]:
        """A device model is one model over its device's sensors: the sensors (in its column order) and its shape."""
        same = manifest.filter(pc.and_(pc.and_(pc.equal(manifest.column("device"), info["device"]),
                                               pc.equal(manifest.column("shard"), info["shard"])),
                                       pc.and_(pc.equal(manifest.column("slot"), info["slot"]),
                                               pc.equal(manifest.column("kind"), "device"))))
        sensors = [r["sensor"] for r in sorted(same.select(["sensor", "sensor_index"]).to_pylist(),
                                               key=lambda r: r["sensor_index"])]
        params = ModelStore(self.storage).read_bundle(version, info["shard"])["device"]
        slot = int(info["slot"])
        return {"model_kind": "device", "sensors": sensors, "tick_s": float(params.tick_us[slot]) / 1e6,
                "n_components": int(params.n_components[slot]), "n_train": int(pc.sum(same.column("n_train")).as_py())}

    def import_sklearn(self, path: str | Path, device: str, sensor: str, features: str = "raw",
                       trust_pickle: bool = False) -> VersionRecord:
        """A pickled scikit-learn pipeline as a new unreleased version; refused unless ``trust_pickle``."""
        from fleetscore.services.sklearn_import import import_sklearn

        return self.catalog.get_version(import_sklearn(self.context, Path(path), device, sensor, features, trust_pickle))

    def health(self, run_id: str | None = None, last: int = 1, min_false_marks: int | None = None,
               limit: int | None = None, offset: int = 0) -> dict[str, Any]:
        """Models that runs marked unhealthy: of one run, or of the ``last`` finished runs (``limit`` of them from
        ``offset``; None: all); and the released version's models with at least ``min_false_marks`` incidents
        marked false, with a suggested action."""
        from fleetscore.core.health import FALSE_MARKS
        from fleetscore.services.retrain import health_report

        return health_report(self.context, run_id, last, FALSE_MARKS if min_false_marks is None else min_false_marks,
                             limit, offset)

    def adjust_model(self, device: str, sensor: str, alarm_rate: float, *, version: str | None = None,
                     release: bool = False) -> Any:
        """A new version (of ``version``, default the released one) with one model's threshold recalibrated to
        ``alarm_rate`` on its training readings; the base version stays (an ``adjust.AdjustResult``)."""
        from fleetscore.services.adjust import adjust_threshold

        return adjust_threshold(self.context, self.version(version), device, sensor, alarm_rate, release=release)

    # --- runs ----------------------------------------------------------------------------------
    def score(self, start: Time, end: Time, *, version: str | None = None, executor: str | None = None,
              workers: int | None = None, schedule: str | None = None,
              on_progress: Progress | None = None) -> RunRecord:
        """A new run of the window [start, end), under its lease: never two runs of one window at once."""
        lo, hi = parse_window(start, end)
        record = self.scoring_version(version)
        ex = self.executor(executor, workers)
        try:
            return runs.score_window(self.context, ex, lo, hi, record.version, schedule=schedule,
                                     on_progress=on_progress)
        finally:
            ex.close()

    def scoring_version(self, version: str | None = None) -> VersionRecord:
        """The version (default: the released one), refused unless it is ready to score."""
        record = self.version(version)
        if record.status != "ready":
            raise InputError(f"model version {record.version} is {record.status}; it cannot score")
        return record

    def backfill(self, start: Time, end: Time, every_s: int, *, version: str | None = None,
                 workers: int | None = None, on_run: Callable[[RunRecord], None] | None = None) -> runs.BackfillResult:
        """One run per window of [start, end), oldest first; each replaces its window's predictions."""
        lo, hi = parse_window(start, end)
        record = self.scoring_version(version)
        ex = self.executor(workers=workers)
        try:
            return runs.backfill(self.context, ex, lo, hi, every_s, record.version, on_run)
        finally:
            ex.close()

    def retry(self, run_id: str, *, workers: int | None = None, on_progress: Progress | None = None) -> runs.RetryResult:
        """Re-run only the tasks of a run that did not succeed, into the same run; commit its window again."""
        ex = self.executor(workers=workers)
        try:
            return runs.retry_run(self.context, ex, run_id, on_progress)
        finally:
            ex.close()

    def cancel(self, run_id: str, wait_s: float = 10.0) -> RunRecord:
        return runs.cancel_run(self.context, run_id, wait_s)

    def runs(self, limit: int = 100) -> list[RunRecord]:
        return self.catalog.runs(limit)

    def run(self, run_id: str) -> tuple[RunRecord, list[TaskRecord], list[ModelFailure]]:
        layout.check_run_id(run_id)
        return self.catalog.get_run(run_id), self.catalog.tasks(run_id), self.catalog.failures(run_id)

    def run_list(self, run_id: str, name: str, limit: int | None = None, offset: int = 0) -> ListPage:
        """Entries ``offset`` .. ``offset + limit`` (None: all) of one of a run's per-model lists (``failures``,
        ``unhealthy``, ``unmatched``), in key order, with the list's total."""
        layout.check_run_id(run_id)
        self.catalog.get_run(run_id)  # an unknown run is an input error
        items, total = self.catalog.run_list(run_id, name, limit, offset)
        return ListPage(run_id, name, total, offset, items)

    def run_log(self, run_id: str, *, follow: bool = False) -> Iterator[dict[str, Any]]:
        """A run's structured log lines in order; ``follow``: keep yielding new ones until the run ends."""
        from fleetscore.storage.logs import LogStore

        self.run(run_id)  # an unknown run is an input error
        store = LogStore(self.storage)
        if not follow:
            return iter(store.run_lines(run_id))
        return store.follow(run_id, lambda: self.catalog.get_run(run_id).status.finished)

    def task_log(self, run_id: str, task: int) -> list[Any]:
        """Every logged attempt of one task of a run (lines, stdout, stderr)."""
        from fleetscore.storage.logs import LogStore

        self.run(run_id)
        return LogStore(self.storage).task_attempts(run_id, task)

    def predictions(self, run_id: str | None = None, start: Time | None = None, end: Time | None = None) -> pa.Table:
        store = PredictionStore(self.storage)
        if run_id is not None:
            layout.check_run_id(run_id)
            run = self.catalog.get_run(run_id)
            return store.for_run(run_id, run.window_from, run.window_to)
        if start is None or end is None:
            raise InputError("give --run RUN or both --from and --to")
        lo, hi = parse_window(start, end)
        return store.for_range(lo, hi)

    def evaluate(self, run_id: str, labels: str | Path | None = None, *, from_marks: bool = False) -> tuple[RunRecord, Any]:
        """The run and its ``Evaluation`` against a labels file (ts, device, sensor, label[, anomaly_kind]),
        or ``from_marks``: against the operators' marks on incidents (`fleetscore.services.quality.mark_labels`)."""
        from fleetscore.services.quality import evaluate_run

        return evaluate_run(self.context, run_id, None if labels is None else Path(labels), from_marks=from_marks)

    # --- incidents -----------------------------------------------------------------------------
    def incidents(self, status: str | None = None, device: str | None = None, since: Time | None = None,
                  limit: int = 100, sensor: str | None = None, min_severity: float | None = None) -> list[Incident]:
        """Incidents, active first, then newest; ``since``: those with a flag at or after it (superseded ones
        only with ``status="superseded"``)."""
        from fleetscore.catalog.incidents import IncidentStore

        since_us = None if since is None else parse_time(since, "--since")
        return IncidentStore(self.catalog).list(status, device, since_us, limit, sensor, min_severity)

    def incident(self, incident_id: str) -> Incident:
        from fleetscore.catalog.incidents import IncidentStore

        return IncidentStore(self.catalog).get(incident_id)

    def ack_incident(self, incident_id: str, by: str) -> Incident:
        """An operator (``by``) takes the incident: acknowledged until it resolves."""
        from fleetscore.catalog.incidents import IncidentStore

        return IncidentStore(self.catalog).acknowledge(incident_id, by, self.clock())

    def mark_incident(self, incident_id: str, mark: str, note: str, by: str) -> Incident:
        """Keep an operator's verdict on the incident (``true``, ``false`` or ``ignore``) with a note."""
        from fleetscore.catalog.incidents import IncidentStore

        return IncidentStore(self.catalog).mark(incident_id, mark, note, by, self.clock())

    def active_incidents(self) -> int:
        """How many incidents are open or acknowledged (the overview's count, ``fleetscore_incidents_open``)."""
        from fleetscore.catalog.incidents import IncidentStore

        return IncidentStore(self.catalog).count_active()

    # --- schedules and upkeep ------------------------------------------------------------------
    def add_schedule(self, spec: ScheduleSpec) -> ScheduleSpec:
        """Store a new schedule (its version, if pinned, must exist)."""
        from fleetscore.catalog.schedules import ScheduleStore

        if spec.version:
            self.version(spec.version)
        ScheduleStore(self.catalog).add(spec)
        return spec

    def schedules(self) -> Any:
        """The catalog's schedules and their windows (a ``ScheduleStore``)."""
        from fleetscore.catalog.schedules import ScheduleStore

        return ScheduleStore(self.catalog)

    def gc(self, keep_s: int, *, readings: bool = False, dry_run: bool = False) -> Any:
        """Delete what is older than ``keep_s`` seconds by the retention policy (a ``GcResult``)."""
        from fleetscore.services.gc import gc

        return gc(self.context, keep_s, readings=readings, dry_run=dry_run)

    def catalog_state(self) -> dict[str, Any]:
        """The catalog as it is (database, schema version), without creating or upgrading it."""
        from fleetscore.catalog.status import catalog_state

        return catalog_state(self.config.catalog.url)

    def upgrade_catalog(self) -> dict[str, Any]:
        """Create the catalog or upgrade its schema (opening it does that); its state after, and before."""
        before = self.catalog_state()["schema_version"]
        self.catalog.close()
        return self.catalog_state() | {"upgraded_from": before}

    # --- what the dashboard shows --------------------------------------------------------------
    def anomaly_counts(self, start: Time, end: Time) -> pa.Table:
        """Committed predictions in [start, end) counted per (device, sensor, hour): rows, anomalies."""
        from fleetscore.core.anomalies import hourly_counts

        lo, hi = parse_window(start, end)
        return hourly_counts(PredictionStore(self.storage).for_range(lo, hi, columns=["is_anomaly"]))

    def series(self, device: str, sensor: str, start: Time, end: Time) -> pa.Table:
        """One (device, sensor) in [start, end): ts, value, and score / is_anomaly / expected / lower / upper /
        reason where it was scored (the explanation columns null where older predictions lack them)."""
        lo, hi = parse_window(start, end)
        readings = ReadingStore(self.storage).read_window(lo, hi, devices=(device, device))
        readings = readings.filter(pc.equal(readings.column("sensor"), sensor)).select(["ts", "value"])
        scored = PredictionStore(self.storage).for_range(  # every column: files written before explanations lack some
            lo, hi, filters=[("device", "=", device), ("sensor", "=", sensor)])
        explained = {"expected": pa.float64(), "lower": pa.float64(), "upper": pa.float64(), "reason": pa.string()}
        for name, kind in explained.items():
            if name not in scored.column_names:
                scored = scored.append_column(name, pa.nulls(scored.num_rows, kind))
        scored = scored.select(["ts", "value", "score", "is_anomaly", *explained])
        joined = readings.join(scored, keys="ts", join_type="full outer", left_suffix="", right_suffix="_scored")
        value = pc.coalesce(joined.column("value"), joined.column("value_scored"))
        return pa.table({"ts": joined.column("ts"), "value": value, "score": joined.column("score"),
                         "is_anomaly": joined.column("is_anomaly"),
                         **{name: joined.column(name) for name in explained}}).sort_by("ts")

    def committed_windows(self) -> dict[tuple[int, int], str]:
        """The run whose predictions each scored window holds: {(from, to) in µs: run id}."""
        return self.catalog.committed_runs()

    def run_stats(self) -> Any:
        """Totals over all runs (per status, duration histogram, last success): a ``catalog.stats.RunStats``."""
        from fleetscore.catalog.stats import run_stats

        return run_stats(self.catalog)

    # --- alerts --------------------------------------------------------------------------------
    def alert_settings(self) -> AlertSettings:
        """The ``[alerts]`` rules and receivers of fleetscore.toml (secrets are never in ``as_dict``)."""
        return self.config.alerts

    def test_alert(self, rule: str) -> list[Any]:
        """Send a test notification to each receiver of ``rule`` now; a ``delivery.TestResult`` per receiver."""
        from fleetscore.services.delivery import send_test

        return send_test(self.context, rule)

    def deliver_alerts(self, deadline_s: float | None = None) -> Any:
        """Send the due notifications of the outbox for at most ``deadline_s`` (default ``[alerts] deliver_wait``)."""
        from fleetscore.services.delivery import deliver

        wait = self.config.alerts.deliver_wait_s if deadline_s is None else deadline_s
        return deliver(self.context, deadline_s=wait)

    def alert_delivery_thread(self, say: Callable[[str], None] | None = None) -> Any:
        """A started ``delivery.DeliveryThread`` when receivers are configured (else None); ``.stop()`` it."""
        from fleetscore.services.delivery import DeliveryThread

        return DeliveryThread(self.context, say).start() if self.config.alerts.receivers else None

    def notifications(self, status: str | None = None, limit: int = 100) -> list[Any]:
        """The outbox's notifications (``catalog.alerts.Notification``), newest first, of one status or all."""
        from fleetscore.catalog.alerts import AlertStore

        return AlertStore(self.catalog).notifications(status, limit)

    def dead_letters(self, limit: int = 100) -> list[Any]:
        """Notifications that reached their receiver's last attempt, newest first, with the reason."""
        return self.notifications("dead", limit)

    def retry_dead_letters(self, ids: list[int] | None = None) -> int:
        """Queue dead letters again with fresh attempts (the given ids, or all); how many."""
        from fleetscore.catalog.alerts import AlertStore
        from fleetscore.clock import wall_clock

        return AlertStore(self.catalog).redrive(ids, wall_clock() / 1e6)

    def silences(self, active: bool = False) -> list[Any]:
        """Silences and maintenance windows (``catalog.alerts.Silence``), by start; ``active``: not yet over."""
        from fleetscore.catalog.alerts import AlertStore

        return AlertStore(self.catalog).silences(self.clock() if active else None)

    def add_silence(self, device: str, start: Time, end: Time, *, sensor: str | None = None, note: str = "",
                    by: str = "") -> Any:
        """Silence notifications of incidents of ``device`` (and ``sensor``) patterns in [start, end)."""
        from fleetscore.catalog.alerts import AlertStore
        from fleetscore.core.times import parse_time

        lo, hi = parse_time(start, "--start"), parse_time(end, "--end")
        return AlertStore(self.catalog).add_silence(device, sensor, lo, hi, note, by)

    def remove_silence(self, silence_id: int) -> Any:
        from fleetscore.catalog.alerts import AlertStore

        return AlertStore(self.catalog).remove_silence(silence_id)

    def alert_counts(self) -> dict[str, int]:
        """Notifications ``sent``, ``dead``, ``pending``, ``suppressed``, and ``failed`` delivery attempts (for /metrics)."""
        from fleetscore.catalog.alerts import AlertStore

        return AlertStore(self.catalog).counts()
