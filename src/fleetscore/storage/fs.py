"""One storage layer over fsspec: keys relative to a root URL, atomic writes, Parquet helpers.

Keys are built by :mod:`fleetscore.storage.layout` only, never from device or sensor ids. On local
disk an atomic write goes to a temporary file, is fsynced and renamed into place; on object stores
a single PUT is already atomic (readers see the old or the new object, never a half-written one).
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleetscore.credentials import storage_options
from fleetscore.errors import StorageError
from fleetscore.redact import redact

#: The file a local root holds from its first open by a driver: a worker that does not find it is looking at
#: another disk than the run's (a Ray node of another host), and fails its task instead of writing there.
STORAGE_MARKER = ".fleetscore-storage"
MARKER_TEXT = b"fleetscore storage root: tasks check for this file before they read or write here\n"
#: Row group size of landed files: small enough that statistics prune by device range.
ROW_GROUP_ROWS = 65_536
#: ``write_parquet`` options for files written on every run's hot path (predictions): lz4 writes
#: about twice as fast as zstd for 10% larger files, and statistics only on the columns readers
#: prune on (time and ids) halve the cost of the rest.
HOT_WRITE: dict[str, Any] = {"compression": "lz4", "statistics": ("ts", "device", "sensor")}


class Storage:
    """A root (``/path``, ``file://``, ``s3://bucket/prefix``, ``az://container/prefix``) and its fs."""

    def __init__(self, url: str, *, in_task: bool = False, **storage_options: Any) -> None:
        """Open the root at ``url``; a local root is created (with its marker) unless ``in_task``: a task on a
        worker must find the driver's root, marker included, or fail saying it cannot see the storage."""
        import fsspec

        self.url = url
        if fsspec.utils.get_protocol(url) not in ("file", "local"):
            # other processes (workers, importers) write the same store: a cached listing would go stale
            storage_options.setdefault("use_listings_cache", False)
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as exc:
            raise StorageError(redact(f"cannot open storage {url!r}: {exc}")) from exc
        self.root = root.rstrip("/")
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in tuple(self.fs.protocol)
        if self.local:
            marker = Path(self.root) / STORAGE_MARKER
            if in_task:
                _check_visible(url, marker)
            elif not marker.exists():
                Path(self.root).mkdir(parents=True, exist_ok=True)
                atomic_local_write(marker, MARKER_TEXT)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def display(self, key: str) -> str:
        """``key`` as a URL under the root, for messages (``s3://bucket/prefix/key``)."""
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def check_root(self) -> None:
        """Fail clearly when the bucket or container of an object store root does not exist."""
        if self.local:
            return
        bucket = self.root.split("/", 1)[0]
        with self._failing("open", ""):
            found = self.fs.exists(bucket)
        if not found:
            raise StorageError(f"storage {self.url}: bucket or container {bucket!r} does not exist; create it first")

    @contextmanager
    def _failing(self, action: str, key: str, missing_ok: bool = True) -> Iterator[None]:
        """Map backend errors (OS, S3, Azure) to :class:`StorageError`; a missing object stays FileNotFoundError
        (unless not ``missing_ok``: a write cannot miss its object, only its bucket)."""
        try:
            yield
        except FileNotFoundError as exc:
            if missing_ok:
                raise
            raise StorageError(f"cannot {action} {self.display(key)}: its bucket, container or folder is missing") from exc
        except backend_errors() as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(redact(f"cannot {action} {self.display(key)}: {reason}")) from exc

    # --- plain objects -------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` at ``key`` atomically (readers never see a partial object); ``durable=False`` skips the
        fsyncs on local disk (logs: a crash may lose their last lines, never data)."""
        target = self.path(key)
        with self._failing("write", key, missing_ok=False):
            if self.local:
                atomic_local_write(Path(target), data, durable=durable)
            else:
                self.fs.pipe_file(target, data)

    def read_bytes(self, key: str) -> bytes:
        with self._failing("read", key):
            return self.fs.cat_file(self.path(key))

    def exists(self, key: str) -> bool:
        with self._failing("look up", key):
            return self.fs.exists(self.path(key))

    def list(self, prefix: str) -> list[str]:
        """Keys of all files under ``prefix`` (recursive), sorted; [] when there are none."""
        base = self.path(prefix)
        try:
            with self._failing("list", prefix):
                found = self.fs.find(base)
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        return sorted(p[cut:] for p in found if "/.tmp-" not in p and not p.rsplit("/", 1)[-1].startswith(".tmp-"))

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """Names of the direct sub-folders of ``prefix``."""
        try:
            with self._failing("list", prefix):
                entries = self.fs.ls(self.path(prefix), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")

    def delete(self, key: str, recursive: bool = False) -> None:
        try:
            with self._failing("delete", key):
                self.fs.rm(self.path(key), recursive=recursive)
        except FileNotFoundError:
            pass

    # --- Parquet -------------------------------------------------------------------------------
    def write_parquet(self, key: str, table: pa.Table, row_group_size: int = ROW_GROUP_ROWS, *,
                      compression: str = "zstd", statistics: Sequence[str] | None = None) -> None:
        """Write a Parquet file atomically, compressed, with statistics (for pruning) on ``statistics``
        (default: every column). See :data:`HOT_WRITE` for files written on a run's hot path."""
        sink = io.BytesIO()
        options = _parquet_options(table.schema) | {"compression": compression}
        if statistics is not None:
            options["write_statistics"] = list(statistics)
        pq.write_table(table, sink, row_group_size=row_group_size, **options)
        self.write_bytes(key, sink.getvalue())

    def write_parquet_groups(self, key: str, schema: pa.Schema, groups: Iterable[pa.Table]) -> None:
        """Write one Parquet file atomically whose row groups are ``groups`` (one each, e.g. one per shard)."""
        sink = io.BytesIO()
        with pq.ParquetWriter(sink, schema, **_parquet_options(schema)) as writer:
            for group in groups:
                writer.write_table(group, row_group_size=max(group.num_rows, 1))
        self.write_bytes(key, sink.getvalue())

    def read_parquet(self, key: str, columns: builtins.list[str] | None = None, filters: Any = None) -> pa.Table:
        """One file's ``columns`` (None: all), keeping rows that pass every ``(column, op, value)`` filter."""
        with self._failing("read Parquet", key):
            path = self.path(key)
            if not self.local or os.path.isdir(path) or not _plain_filters(filters):
                return pq.read_table(path, columns=columns, filters=filters, filesystem=self.fs)
            # Arrow's file reader: the same rows without pyarrow.dataset, whose first import (it pulls in pandas)
            # would cost a short run's process about 0.4 s
            with pq.ParquetFile(path) as pf:
                if not filters:
                    return pf.read(columns=columns)
                wanted = columns or pf.schema_arrow.names
                table = pf.read(columns=list(dict.fromkeys([*wanted, *(f[0] for f in filters)])))
            return table.filter(_filter_mask(table, filters)).select(wanted)

    @contextmanager
    def open_parquet(self, key: str, read_dictionary: builtins.list[str] | None = None) -> Iterator[pq.ParquetFile]:
        """A Parquet file with only its footer read yet (row-group statistics), closed on exit."""
        with self._failing("read Parquet", key):
            if self.local:  # Arrow's own file reader: no Python call per read
                with pq.ParquetFile(self.path(key), read_dictionary=read_dictionary) as pf:
                    yield pf
            else:
                with self.fs.open(self.path(key), "rb") as fh:
                    yield pq.ParquetFile(fh, read_dictionary=read_dictionary)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive lock between processes sharing the root: ``flock`` on local disk, conditional writes of a
        lock object on object stores (`fleetscore.storage.locks`)."""
        if not self.local:
            from fleetscore.storage.locks import ObjectStoreLock

            held = ObjectStoreLock(self.fs, self.path(f"_locks/{name}"))
            with self._failing("lock", f"_locks/{name}", missing_ok=False):
                held.acquire()
            try:
                yield
            finally:
                with self._failing("unlock", f"_locks/{name}"):
                    held.release()
            return
        import fcntl

        lock_dir = Path(self.root) / "_locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{name}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_local_write(target: Path, data: bytes, *, durable: bool = True) -> None:
    """Write aside, fsync, rename over ``target``, fsync the folder (raises OSError); not durable: no fsyncs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}-{target.name}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    if not durable:
        return
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """zstd, statistics, and dictionary encoding for text columns only (on floats it costs more than it saves).

    Dictionary columns are written as they are (no hashing of every value: a run id repeated on a
    million rows costs nothing) and read back as plain text: the file then stores no Arrow schema.
    """
    text = [f.name for f in schema
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)]
    return {"compression": "zstd", "write_statistics": True, "use_dictionary": text,
            "store_schema": not any(pa.types.is_dictionary(f.type) for f in schema)}


@functools.cache
def backend_errors() -> tuple[type[BaseException], ...]:
    """Exceptions the storage backends raise: OS and Arrow errors, and those of the S3 and Azure SDKs."""
    errors: list[type[BaseException]] = [OSError, pa.ArrowInvalid]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:
        pass
    try:
        from azure.core.exceptions import AzureError

        errors.append(AzureError)
    except ImportError:
        pass
    return tuple(errors)


def open_storage(url: str, *, in_task: bool = False) -> Storage:
    """Open the storage at ``url``; credentials come from the environment only (`fleetscore.credentials`).

    ``in_task``: a task opens its run's storage on a worker, which must see the root the driver opened.
    """
    return Storage(url, in_task=in_task, **storage_options(url))


def _check_visible(url: str, marker: Path) -> None:
    """StorageError unless this host sees the local root the driver opened (its marker file is there)."""
    if marker.is_file():
        return
    missing = "does not exist" if not marker.parent.is_dir() else f"has no {STORAGE_MARKER}"
    raise StorageError(redact(
        f"this worker ({socket.gethostname()}) cannot see the run's storage {url}: the path {missing} on this host; "
        "tasks on other hosts need object storage (s3://, az://) or a path every node mounts "
        "([storage] shared = true)"))


#: Filter operators `Storage.read_parquet` evaluates itself on local files (others go through pyarrow.dataset).
_FILTER_OPS = {"=": "equal", "==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal", ">": "greater",
               ">=": "greater_equal"}


def _plain_filters(filters: Any) -> bool:
    """No filters, or a flat list of ``(column, op, value)`` with an operator of `_FILTER_OPS` or ``in``."""
    if not filters:
        return True
    return isinstance(filters, list) and all(
        isinstance(f, tuple) and len(f) == 3 and (f[1] in _FILTER_OPS or f[1] == "in") for f in filters)


def _filter_mask(table: pa.Table, filters: builtins.list[tuple[str, str, Any]]) -> pa.Array:
    """Rows passing all ``filters`` (a null compares as false, as in pyarrow's own filtering)."""
    import pyarrow.compute as pc

    mask = None
    for name, op, value in filters:
        column = table.column(name)
        if op == "in":
            passed = pc.is_in(column, value_set=pa.array(list(value), column.type))
        else:
            passed = getattr(pc, _FILTER_OPS[op])(column, pa.scalar(value).cast(column.type))
        passed = pc.fill_null(passed, False)
        mask = passed if mask is None else pc.and_(mask, passed)
    return mask
