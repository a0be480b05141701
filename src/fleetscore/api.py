"""The Python API: one :class:`Fleet` per home. The CLI and the web app are thin shells over it.

    fleet = Fleet.open("./fleetscore-home")
    fleet.import_file("readings.csv")
    fleet.train("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
    run = fleet.score("2026-01-02T00:00:00Z", "2026-01-02T01:00:00Z")
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.catalog import Catalog, VersionRecord
from fleetscore.config import Config, load_config
from fleetscore.core.runs import ModelFailure, RunRecord, TaskRecord
from fleetscore.core.times import parse_time, parse_window
from fleetscore.errors import InputError, NotFoundError
from fleetscore.exec.base import Executor, make_executor
from fleetscore.importer import ImportResult, import_file, import_table
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage, open_storage
from fleetscore.storage.models import ModelStore
from fleetscore.storage.predictions import PredictionStore
from fleetscore.storage.readings import ReadingStore

Progress = Callable[[int, int], None]
Time = str | datetime


class Fleet:
    """A fleetscore home: its storage, catalog and executor settings, and every operation on them."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    def open(cls, home: str | Path | None = None, **overrides: Any) -> "Fleet":
        """Open (or create) the home; ``overrides`` are Config fields, as CLI flags set them."""
        return cls(load_config(home).with_overrides(**overrides))

    @cached_property
    def storage(self) -> Storage:
        storage = open_storage(self.config.storage_url)
        storage.check_root()
        return storage

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.config.catalog_url)

    def close(self) -> None:
        if "catalog" in self.__dict__:
            self.catalog.close()

    def executor(self, kind: str | None = None, workers: int | None = None) -> Executor:
        return make_executor(kind or self.config.executor, workers or self.config.workers, self.config.ray_address)

    # --- data ----------------------------------------------------------------------------------
    def import_file(self, path: str | Path, columns: str | None = None) -> ImportResult:
        return import_file(self.storage, Path(path), columns)

    def import_table(self, table: pa.Table, source: str = "api") -> ImportResult:
        return import_table(self.storage, table, source)

    def readings(self, start: Time, end: Time) -> pa.Table:
        lo, hi = parse_window(start, end)
        return ReadingStore(self.storage).read_window(lo, hi)

    def quarantine(self, limit: int = 1000, source: str | None = None) -> pa.Table:
        """The most recent quarantined rows (of all sources, or of one: import, http, mqtt, late), newest files first."""
        keys = sorted(self.storage.list("quarantine"), reverse=True)
        if source is not None:
            keys = [k for k in keys if k.startswith(f"quarantine/source={source}/")]
        parts, rows = [], 0
        for key in keys:
            table = self.storage.read_parquet(key)
            source = key.split("/")[1].removeprefix("source=")
            parts.append(table.append_column("source", pa.array([source] * table.num_rows, pa.string())))
            rows += table.num_rows
            if rows >= limit:
                break
        if not parts:
            return pa.table({"row": pa.array([], pa.int64()), "reason": pa.array([], pa.string())})
        return pa.concat_tables(parts, promote_options="default").slice(0, limit)

    # --- streaming ingest ----------------------------------------------------------------------
    def compact(self) -> Any:
        """Compact the ingest log into readings, stream windows and the quarantine (a CompactResult)."""
        from fleetscore.ingest.compact import Compactor
        from fleetscore.ingest.settings import IngestSettings

        return Compactor(self.config.home, self.storage, IngestSettings.from_config(self.config)).run()

    def windows(self, start: Time, end: Time, width: str | None = None) -> pa.Table:
        """Closed stream windows starting in [start, end) (width default: the ``[ingest] window``)."""
        from fleetscore.core.windows import parse_duration
        from fleetscore.ingest.settings import IngestSettings
        from fleetscore.storage.windows import WindowStore

        lo, hi = parse_window(start, end)
        width_s = parse_duration(width) if width else IngestSettings.from_config(self.config).window_s
        return WindowStore(self.storage).read(width_s, lo, hi)

    # --- models --------------------------------------------------------------------------------
    def train(self, start: Time, end: Time, *, kind: str | None = None, nu: float | None = None,
              gamma: float | str | None = None, features: str | None = None, release: bool = True,
              workers: int | None = None, on_progress: Progress | None = None,
              alarm_rate: float | None = None, only_unhealthy: bool = False) -> Any:
        """Train a new version; unpinned settings are chosen per model (see `fleetscore.tuning`).

        ``only_unhealthy``: retrain just the models the latest run of the released version marked
        unhealthy, into a new version that reuses every other model (`fleetscore.retrain`).
        """
        from fleetscore.train import train
        from fleetscore.tuning import resolve

        lo, hi = parse_window(start, end)
        if only_unhealthy:
            from fleetscore.retrain import retrain_unhealthy

            return retrain_unhealthy(self, lo, hi, release=release, workers=workers, on_progress=on_progress)
        choice = resolve(kind or self.config.kind, self.config.nu if nu is None else nu, gamma or self.config.gamma,
                         features or self.config.features, self.config.alarm_rate if alarm_rate is None else alarm_rate)
        executor = self.executor(workers=workers)
        try:
            return train(
                storage_url=self.config.storage_url, catalog=self.catalog, executor=executor,
                from_us=lo, to_us=hi, **choice.as_kwargs(),
                shard_models=self.config.shard_models, release=release, on_progress=on_progress,
            )
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

    def models(self, version: str | None = None) -> pa.Table:
        record = self.version(version)
        _, manifest = ModelStore(self.storage).read_manifest(record.version)
        return manifest

    def model(self, device: str, sensor: str, version: str | None = None) -> dict[str, Any]:
        record = self.version(version)
        manifest = self.models(record.version)
        row = manifest.filter(pc.and_(pc.equal(manifest.column("device"), device),
                                      pc.equal(manifest.column("sensor"), sensor)))
        if row.num_rows == 0:
            raise NotFoundError(f"no model for device {device[:80]!r} sensor {sensor[:80]!r} in {record.version}")
        info = row.to_pylist()[0]
        info.update(version=record.version, kind=record.kind, features=record.features, params=record.params)
        return info

    def import_sklearn(self, path: str | Path, device: str, sensor: str, features: str = "raw") -> VersionRecord:
        from fleetscore.sklearn_import import import_sklearn

        version = import_sklearn(self.storage, self.catalog, Path(path), device, sensor, features)
        return self.catalog.get_version(version)

    # --- runs ----------------------------------------------------------------------------------
    def score(self, start: Time, end: Time, *, version: str | None = None, executor: str | None = None,
              workers: int | None = None, schedule: str | None = None,
              on_progress: Progress | None = None) -> RunRecord:
        from fleetscore.schedule.runner import score_window

        lo, hi = parse_window(start, end)
        record = self.version(version)
        if record.status != "ready":
            raise InputError(f"model version {record.version} is {record.status}; it cannot score")
        ex = self.executor(executor, workers)
        try:  # under the window's lease: never two runs of one window at once; retries, cancel, logs
            return score_window(self, ex, lo, hi, record.version, schedule=schedule, on_progress=on_progress)
        finally:
            ex.close()

    def runs(self, limit: int = 100) -> list[RunRecord]:
        return self.catalog.runs(limit)

    def run(self, run_id: str) -> tuple[RunRecord, list[TaskRecord], list[ModelFailure]]:
        layout.check_run_id(run_id)
        return self.catalog.get_run(run_id), self.catalog.tasks(run_id), self.catalog.failures(run_id)

    def predictions(self, run_id: str | None = None, start: Time | None = None, end: Time | None = None) -> pa.Table:
        store = PredictionStore(self.storage)
        if run_id is not None:
            layout.check_run_id(run_id)
            run = self.catalog.get_run(run_id)
            return store.for_run(run_id, parse_time(run.window_from), parse_time(run.window_to))
        if start is None or end is None:
            raise InputError("give --run RUN or both --from and --to")
        lo, hi = parse_window(start, end)
        return store.for_range(lo, hi)

    # --- what the dashboard shows --------------------------------------------------------------
    def anomaly_counts(self, start: Time, end: Time) -> pa.Table:
        """Committed predictions in [start, end) counted per (device, sensor, hour): rows, anomalies."""
        from fleetscore.core.anomalies import hourly_counts

        lo, hi = parse_window(start, end)
        return hourly_counts(PredictionStore(self.storage).for_range(lo, hi, columns=["is_anomaly"]))

    def series(self, device: str, sensor: str, start: Time, end: Time) -> pa.Table:
        """One (device, sensor) in [start, end): ts, value, and score / is_anomaly where it was scored."""
        lo, hi = parse_window(start, end)
        readings = ReadingStore(self.storage).read_window(lo, hi, devices=(device, device))
        readings = readings.filter(pc.equal(readings.column("sensor"), sensor)).select(["ts", "value"])
        scored = PredictionStore(self.storage).for_range(
            lo, hi, columns=["value", "score", "is_anomaly"], filters=[("device", "=", device), ("sensor", "=", sensor)]
        ).select(["ts", "value", "score", "is_anomaly"])
        joined = readings.join(scored, keys="ts", join_type="full outer", left_suffix="", right_suffix="_scored")
        value = pc.coalesce(joined.column("value"), joined.column("value_scored"))
        return pa.table({"ts": joined.column("ts"), "value": value, "score": joined.column("score"),
                         "is_anomaly": joined.column("is_anomaly")}).sort_by("ts")

    def run_stats(self) -> Any:
        """Totals over all runs (per status, duration histogram, last success): a ``catalog.stats.RunStats``."""
        from fleetscore.catalog.stats import run_stats

        return run_stats(self.catalog)
