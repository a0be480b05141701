"""Catalog on SQLAlchemy Core: SQLite under the home by default, any SQLAlchemy URL (PostgreSQL) for clusters.

The schema is created on first use and upgraded by :mod:`fleetscore.catalog.migrate`; every write is
one transaction, and rows that several processes may write (runs, tasks, window commits, the released
version) are upserts, so concurrent runs and workers update their own rows safely.

A run's per-model lists (`fleetscore.core.runs.RUN_LISTS`) are saved with each task's record: failed
models in ``model_failures`` (a row each), unhealthy models and keys without a model in ``run_lists``
(a row per task and list, :mod:`fleetscore.catalog.runlists`); the run record holds only the first of
each and the totals, so it stays small.

Reading runs (or versions) first marks those whose process died ``abandoned``: a queued or running
run that no live lease holds (:mod:`fleetscore.catalog.leases`), and a version still ``training``
whose trainer's lease expired. One conditional UPDATE each, so a run that finishes meanwhile keeps
its own status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fleetscore.catalog.dialect import code_point_order, transaction_lock, upsert
from fleetscore.catalog.migrate import upgrade
from fleetscore.catalog.runlists import list_row
from fleetscore.catalog.runlists import run_lists_table as _run_lists
from fleetscore.clock import Clock, wall_clock
from fleetscore.core.runs import ACTIVE_STATUSES, MAX_LISTED, RUN_LISTS, ModelFailure, RunRecord, RunStatus, TaskRecord
from fleetscore.core.times import iso, iso_us, parse_time
from fleetscore.errors import ConfigError, InputError, NotFoundError, StorageError
from fleetscore.redact import redact

#: Version of the tables' shape; :mod:`fleetscore.catalog.migrate` upgrades older catalogs to it.
SCHEMA_VERSION = 4
metadata = sa.MetaData()

meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
versions_table = sa.Table(
    "model_versions",
    metadata,
    sa.Column("version", sa.String(16), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("features", sa.String(64), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("train_from", sa.String(32)),
    sa.Column("train_to", sa.String(32)),
    sa.Column("models", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("shards", sa.Integer, nullable=False, default=0),
    sa.Column("elapsed_s", sa.Float),
)
runs_table = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("window_from", sa.String(32), nullable=False, index=True),
    sa.Column("window_to", sa.String(32), nullable=False),
    sa.Column("version", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.String(32), nullable=False, index=True),
    sa.Column("started_at", sa.String(32)),
    sa.Column("finished_at", sa.String(32)),
    sa.Column("elapsed_s", sa.Float),
    sa.Column("models", sa.Integer, nullable=False, default=0),
    sa.Column("rows", sa.BigInteger, nullable=False, default=0),
    sa.Column("anomalies", sa.BigInteger, nullable=False, default=0),
    sa.Column("unmatched_rows", sa.BigInteger, nullable=False, default=0),
    sa.Column("failed_models", sa.Integer, nullable=False, default=0),
    sa.Column("tasks", sa.Integer, nullable=False, default=0),
    sa.Column("executor", sa.String(16), nullable=False),
    sa.Column("schedule", sa.String(128)),
    sa.Column("error", sa.Text),
    sa.Column("extra", sa.Text, nullable=False, default="{}"),
)
tasks_table = sa.Table(
    "tasks",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("task", sa.Integer, primary_key=True),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("models", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("anomalies", sa.BigInteger, nullable=False),
    sa.Column("unmatched_rows", sa.BigInteger, nullable=False),
    sa.Column("failed_models", sa.Integer, nullable=False),
    sa.Column("wall_s", sa.Float, nullable=False),
    sa.Column("cpu_s", sa.Float, nullable=False),
    sa.Column("load_data_s", sa.Float, nullable=False),
    sa.Column("load_models_s", sa.Float, nullable=False),
    sa.Column("score_s", sa.Float, nullable=False),
    sa.Column("write_s", sa.Float, nullable=False),
    sa.Column("worker", sa.String(128), nullable=False),
    sa.Column("node", sa.String(128), nullable=False, server_default=""),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
)
failures_table = sa.Table(
    "model_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False, index=True),
    sa.Column("task", sa.Integer),
    sa.Column("device", sa.String(300), nullable=False),
    sa.Column("sensor", sa.String(300), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)
run_lists_table = _run_lists.to_metadata(metadata)
commits_table = sa.Table(
    "window_commits",
    metadata,
    sa.Column("window_from", sa.String(32), primary_key=True),
    sa.Column("window_to", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("committed_at", sa.String(32), nullable=False),
)
leases_table = sa.Table(
    "leases",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(32), index=True),
    sa.Column("acquired_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # Unix seconds, by the wall clock
    sa.Column("cancel", sa.Boolean, nullable=False),
)

RELEASED_KEY = "released_version"
#: Status of a version whose training process died (its lease expired while it was ``training``).
ABANDONED_VERSION = "abandoned"
#: Lease key prefix of a version being trained: ``training:<version>``.
TRAINING_LEASE = "training:"
#: Error of a run found abandoned.
ABANDONED_ERROR = ("abandoned: the process running it died or stopped renewing its lease; "
                   "`fleetscore runs retry RUN` finishes it")
#: PostgreSQL advisory lock that serialises version id allocation (SQLite serialises writers itself).
VERSION_LOCK = 0x666C7432


@dataclass(frozen=True)
class VersionRecord:
    """One immutable model version: how it was trained and how many models it holds."""

    version: str
    kind: str
    features: str
    params: dict[str, Any]
    status: str
    created_at: int  # µs since the epoch, like the training span; ISO 8601 only in as_dict()
    train_from: int | None = None  # None: not trained here (an imported scikit-learn model)
    train_to: int | None = None
    models: int = 0
    failed: int = 0
    shards: int = 0
    elapsed_s: float | None = None
    released: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The record with its times as ISO 8601 text (the training span to the second, created to the µs)."""
        return self.__dict__ | {"created_at": iso_us(self.created_at), "train_from": _text(self.train_from),
                                "train_to": _text(self.train_to)}


class Catalog:
    """Runs, tasks, failures and model versions in one SQL database.

    ``clock`` (µs) stamps the rows the catalog writes itself (version created, window committed).
    """

    def __init__(self, url: str, clock: Clock = wall_clock) -> None:
        self.url = url
        self.clock = clock
        try:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            if url.startswith("sqlite"):
                self.engine = create_engine(url, connect_args={"timeout": 60})
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
            upgrade(self.engine, metadata, SCHEMA_VERSION)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise open_error(url, exc) from exc

    def close(self) -> None:
        self.engine.dispose()

    def now(self) -> str:
        """Now as the catalog's time columns hold it (ISO 8601 to the µs)."""
        return iso_us(self.clock())

    # --- model versions ------------------------------------------------------------------------
    def new_version(self, kind: str, features: str, params: dict[str, Any], train_from: int | None,
                    train_to: int | None) -> str:
        """Reserve the next version id (v1, v2, ...) in state 'training', trained on [train_from, train_to) (µs)."""
        for _ in range(20):
            try:
                with self.engine.begin() as conn:
                    transaction_lock(conn, VERSION_LOCK)
                    seq = (conn.execute(sa.select(sa.func.max(versions_table.c.seq))).scalar() or 0) + 1
                    version = f"v{seq}"
                    conn.execute(
                        sa.insert(versions_table).values(
                            version=version, seq=seq, kind=kind, features=features, params=json.dumps(params),
                            status="training", created_at=self.now(), train_from=_text(train_from), train_to=_text(train_to),
                            models=0, failed=0, shards=0,
                        )
                    )
                    return version
            except sa.exc.IntegrityError:
                continue
        raise StorageError("could not reserve a model version id")

    def finish_version(self, version: str, status: str, models: int, failed: int, shards: int, elapsed_s: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(versions_table)
                .where(versions_table.c.version == version)
                .values(status=status, models=models, failed=failed, shards=shards, elapsed_s=elapsed_s)
            )

    def get_version(self, version: str) -> VersionRecord:
        """One version (marked abandoned first if its trainer died)."""
        self._abandon_dead_versions()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(versions_table).where(versions_table.c.version == version)).mappings().first()
            released = self._released(conn)
        if row is None:
            raise NotFoundError(f"unknown model version {version[:40]!r} (see `fleetscore models versions`)")
        return _version(row, released)

    def versions(self) -> list[VersionRecord]:
        """Every version, oldest first (those whose trainer died marked abandoned first)."""
        self._abandon_dead_versions()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(versions_table).order_by(versions_table.c.seq)).mappings().all()
            released = self._released(conn)
        return [_version(r, released) for r in rows]

    def release(self, version: str) -> None:
        record = self.get_version(version)
        if record.status != "ready":
            raise NotFoundError(f"version {version} is {record.status}, only a ready version can be released")
        with self.engine.begin() as conn:
            upsert(conn, meta_table, [{"key": RELEASED_KEY, "value": version}])

    def released(self) -> str | None:
        with self.engine.connect() as conn:
            return self._released(conn)

    @staticmethod
    def _released(conn: sa.Connection) -> str | None:
        return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == RELEASED_KEY)).scalar()

    # --- runs ----------------------------------------------------------------------------------
    def save_run(self, run: RunRecord) -> None:
        """Insert or replace the run's row."""
        values = run.as_dict()
        values["extra"] = json.dumps(values["extra"])
        with self.engine.begin() as conn:
            upsert(conn, runs_table, [values])

    def get_run(self, run_id: str) -> RunRecord:
        """One run (marked abandoned first if its process died)."""
        self._abandon_dead_runs()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"unknown run {run_id[:40]!r} (see `fleetscore runs list`)")
        return _run(row)

    def runs(self, limit: int = 100, status: Iterable[str] | None = None) -> list[RunRecord]:
        """The newest runs (those whose process died marked abandoned first)."""
        self._abandon_dead_runs()
        query = sa.select(runs_table).order_by(runs_table.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(runs_table.c.status.in_(list(status)))
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query).mappings().all()]

    def _abandon_dead_runs(self) -> None:
        """Mark queued or running runs that no live lease holds as abandoned (a cheap read first, so
        the usual case takes no write lock)."""
        r, lease = runs_table, leases_table
        held = sa.select(lease.c.run_id).where((lease.c.run_id == r.c.run_id) & (lease.c.expires_at >= _now_s()))
        dead = r.c.status.in_([s.value for s in ACTIVE_STATUSES]) & ~held.exists()
        with self.engine.connect() as conn:
            if conn.execute(sa.select(r.c.run_id).where(dead).limit(1)).first() is None:
                return
        with self.engine.begin() as conn:
            conn.execute(sa.update(r).where(dead).values(status=RunStatus.ABANDONED.value, finished_at=self.now(),
                                                         error=ABANDONED_ERROR))

    def _abandon_dead_versions(self) -> None:
        """Mark versions still ``training`` whose trainer's lease expired (it died) as abandoned."""
        v, lease = versions_table, leases_table
        key = sa.literal(TRAINING_LEASE) + v.c.version
        expired = sa.select(lease.c.key).where((lease.c.key == key) & (lease.c.expires_at < _now_s())).exists()
        dead = (v.c.status == "training") & expired
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(v.c.version).where(dead)).scalars().all()
        if found:
            with self.engine.begin() as conn:
                conn.execute(sa.update(v).where(dead).values(status=ABANDONED_VERSION))
                conn.execute(sa.delete(lease).where(lease.c.key.in_([TRAINING_LEASE + x for x in found])
                                                    & (lease.c.expires_at < _now_s())))

    def save_tasks(self, tasks: Iterable[TaskRecord]) -> None:
        rows = [t.as_dict() for t in tasks]
        if not rows:
            return
        with self.engine.begin() as conn:
            upsert(conn, tasks_table, rows)

    def tasks(self, run_id: str) -> list[TaskRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tasks_table).where(tasks_table.c.run_id == run_id).order_by(tasks_table.c.task)
            ).mappings().all()
        names = {f.name for f in fields(TaskRecord)}
        return [TaskRecord(**{k: v for k, v in r.items() if k in names}) for r in rows]

    def replace_failures(self, run_id: str, tasks: Iterable[int], failures: Iterable[ModelFailure]) -> None:
        """Record the failures of the given tasks of a run, replacing what earlier attempts wrote."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(failures_table).where(
                    (failures_table.c.run_id == run_id) & (failures_table.c.task.in_(list(tasks)))
                )
            )
            rows = [dict(run_id=run_id, task=f.task, device=f.device, sensor=f.sensor, reason=f.reason) for f in failures]
            if rows:
                conn.execute(sa.insert(failures_table), rows)

    def failures(self, run_id: str, limit: int = 10_000) -> list[ModelFailure]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(failures_table).where(failures_table.c.run_id == run_id).order_by(failures_table.c.id).limit(limit)
            ).mappings().all()
        return [ModelFailure(r["device"], r["sensor"], r["reason"], r["task"]) for r in rows]

    def save_task_result(self, record: TaskRecord, failures: Iterable[ModelFailure],
                         listed: Mapping[str, Iterable[dict[str, Any]]]) -> None:
        """Save a task's final record with its failed models and its entries of the run's other lists (``listed``:
        ``unhealthy``, ``unmatched``), replacing all that earlier attempts of the task wrote; one transaction."""
        run_id, task = record.run_id, record.task
        f, k = failures_table, run_lists_table
        with self.engine.begin() as conn:
            conn.execute(sa.delete(f).where((f.c.run_id == run_id) & (f.c.task == task)))
            conn.execute(sa.delete(k).where((k.c.run_id == run_id) & (k.c.task == task)))
            rows = [dict(run_id=run_id, task=task, device=x.device, sensor=x.sensor, reason=x.reason) for x in failures]
            if rows:
                conn.execute(sa.insert(f), rows)
            lists = [list_row(run_id, name, task, entries) for name, entries in listed.items()]
            if lists := [r for r in lists if r["total"]]:
                conn.execute(sa.insert(k), lists)
            upsert(conn, tasks_table, [record.as_dict()])

    def run_list(self, run_id: str, name: str, limit: int | None = None, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Entries ``offset`` .. ``offset + limit`` (None: to the end) of one of a run's `RUN_LISTS`, in key order
        (device, sensor by code point), and how many the list holds. Within the first `MAX_LISTED`, only each
        task's first entries are read."""
        if name not in RUN_LISTS:
            raise InputError(f"a run's lists are {', '.join(RUN_LISTS)}; got {name[:40]!r}")
        end = None if limit is None else offset + limit
        if name == "failures":
            f = failures_table
            order = [*code_point_order(self.engine.dialect.name, f.c.device, f.c.sensor), f.c.id]
            with self.engine.connect() as conn:
                total = conn.execute(sa.select(sa.func.count()).select_from(f).where(f.c.run_id == run_id)).scalar_one()
                rows = conn.execute(sa.select(f).where(f.c.run_id == run_id).order_by(*order).offset(offset)
                                    .limit(limit)).mappings().all()
            return [ModelFailure(r["device"], r["sensor"], r["reason"], r["task"]).__dict__ for r in rows], total
        k = run_lists_table
        part = k.c.head if end is not None and end <= MAX_LISTED else k.c.entries
        with self.engine.connect() as conn:
            parts = conn.execute(sa.select(k.c.total, part).where((k.c.run_id == run_id) & (k.c.list_name == name))).all()
        merged = sorted((e for _, text in parts for e in json.loads(text)), key=lambda e: (e["device"], e["sensor"]))
        return merged[offset:end], sum(n for n, _ in parts)

    def commit_window(self, window_from: int, window_to: int, run_id: str) -> None:
        """Record ``run_id`` as the run whose predictions the window [window_from, window_to) (µs) holds."""
        row = {"window_from": iso(window_from), "window_to": iso(window_to), "run_id": run_id, "committed_at": self.now()}
        with self.engine.begin() as conn:
            upsert(conn, commits_table, [row])

    def committed_runs(self) -> dict[tuple[int, int], str]:
        """{(window from, to) in µs: the run whose predictions the window holds}."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(commits_table)).mappings().all()
        return {(parse_time(r["window_from"]), parse_time(r["window_to"])): r["run_id"] for r in rows}


def _now_s() -> float:
    """Now in Unix seconds by the wall clock, as lease expiries are kept (liveness is real time)."""
    return wall_clock() / 1e6


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=60000")  # first: switching to WAL waits for another opener's upgrade
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA cache_size=-32768")  # 32 MiB as needed (default 2): bulk index inserts stay in memory
    cur.close()


_BACKGROUND = "(Background on this error at:"
_URL_HINT = ("set catalog.url in fleetscore.toml or FLEETSCORE_CATALOG_URL to a database URL such as "
             "sqlite:///path/catalog.db or postgresql+psycopg://user@host/db")


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    """``sa.create_engine``, with a catalog URL that does not parse, names an unknown database kind or
    needs a driver that is not installed refused as a :class:`ConfigError` that says so."""
    try:
        return sa.create_engine(url, **kwargs)
    except sa.exc.NoSuchModuleError:
        problem = f"unknown database kind {url.split(':', 1)[0][:40]!r}"
    except sa.exc.ArgumentError:
        problem = "not a database URL"
    except ImportError as exc:
        problem = f"its database driver is not installed ({exc})"
    raise ConfigError(f"catalog URL {_redact(url)}: {problem}; {_URL_HINT}") from None


def open_error(url: str, exc: Exception) -> StorageError:
    """The error for a catalog that could not be opened: the URL without its password, and the cause."""
    cause = str(exc).split(_BACKGROUND, 1)[0].strip()
    return StorageError(redact(f"cannot open catalog {_redact(url)}: {exc.__class__.__name__}: {cause}"))


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid catalog url>"


def _text(us: int | None) -> str | None:
    return None if us is None else iso(us)


def _version(row: Any, released: str | None) -> VersionRecord:
    """A versions row (ISO 8601 text columns; an imported model's span empty or null) as a record (times in µs)."""
    data = {k: row[k] for k in row.keys() if k != "seq"}
    data["params"] = json.loads(data["params"])
    data["created_at"] = parse_time(data["created_at"], "created_at")
    for name in ("train_from", "train_to"):
        data[name] = parse_time(data[name], name) if data[name] else None
    return VersionRecord(**data, released=row["version"] == released)


def _run(row: Any) -> RunRecord:
    """A runs row (ISO 8601 text columns) as a record (times in µs)."""
    data = dict(row)
    data["status"] = RunStatus(data["status"])
    data["extra"] = json.loads(data["extra"] or "{}")
    for name in ("window_from", "window_to", "created_at", "started_at", "finished_at"):
        data[name] = None if data[name] is None else parse_time(data[name], name)
    return RunRecord(**data)
