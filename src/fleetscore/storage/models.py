"""Model versions on storage: many models per shard file (``.npz``, no pickles) plus a Parquet manifest.

A shard file holds plain numeric arrays (loaded with ``allow_pickle=False``) and stamps the format
version; the manifest stamps the library versions it was built with, checked when loading.
"""

from __future__ import annotations

import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core import kinds, ocsvm
from fleetscore.core.features import check_features_format
from fleetscore.errors import ModelFormatError, NotFoundError, StorageError
from fleetscore.storage import layout
from fleetscore.storage.fs import Storage

MANIFEST_SCHEMA = pa.schema(
    [
        ("device", pa.string()),
        ("sensor", pa.string()),
        ("shard", pa.int32()),
        ("slot", pa.int32()),  # index of the model inside its shard file; -1 when training failed
        ("status", pa.string()),  # ok | failed
        ("reason", pa.string()),
        ("n_train", pa.int64()),
        ("n_sv", pa.int32()),
        ("trained_at", pa.string()),
        ("kind", pa.string()),  # model kind of this key's model (ocsvm, robust, device)
        ("fallback", pa.bool_()),  # a fallback model: too little history for the version's kind
        # learned sampling interval of the key's readings, seconds (a device model's rows: its tick); what
        # scoring counts its look-back from (core.history). Null: unknown (versions of format < 4)
        ("interval_s", pa.float64()),
        # device models: the sensor's column in its device's model (the slot is the device's); null otherwise
        ("sensor_index", pa.int32()),
    ]
)
#: Threads writing a version's per-shard manifest files.
WRITERS = 8
SHARDS_SCHEMA = pa.schema(
    [
        ("shard", pa.int32()),
        ("models", pa.int32()),
        ("lo_device", pa.string()),  # first key the shard covers (null = from the start)
        ("lo_sensor", pa.string()),
        ("hi_device", pa.string()),  # first key of the next shard (null = to the end)
        ("hi_sensor", pa.string()),
        ("cost", pa.float64()),
    ]
)


def library_versions() -> dict[str, str]:
    import sklearn

    from fleetscore.version import __version__

    return {"fleetscore": __version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "pyarrow": pa.__version__}


@dataclass(frozen=True)
class VersionInfo:
    """What a model version's manifest says about itself."""

    version: str
    kind: str
    features: str
    params: dict[str, Any]
    libraries: dict[str, str]
    format_version: int


class ModelStore:
    """Write and read the shard files and manifests of model versions."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write_shard(self, version: str, shard: int, params: ocsvm.OcsvmParams, kind: str = "ocsvm") -> None:
        self._write_arrays(version, shard, params.to_arrays())

    def write_bundle(self, version: str, shard: int, bundle: kinds.Bundle) -> None:
        """Write a shard holding models of one or more kinds (format 2)."""
        self._write_arrays(version, shard, kinds.bundle_to_arrays(bundle))

    def _write_arrays(self, version: str, shard: int, arrays: dict[str, Any]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.storage.write_bytes(layout.shard_key(version, shard), buf.getvalue())

    def read_shard(self, version: str, shard: int) -> ocsvm.OcsvmParams:
        """The ocsvm models of a shard (empty when it holds none)."""
        bundle = self.read_bundle(version, shard)
        if "ocsvm" in bundle:
            return bundle["ocsvm"]
        return ocsvm.OcsvmParams.empty(next(iter(bundle.values())).n_features if bundle else 1)

    def read_bundle(self, version: str, shard: int) -> kinds.Bundle:
        """All models of a shard by kind; reads format 1 (ocsvm only) and 2 files."""
        key = layout.shard_key(version, shard)
        try:
            raw = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise ModelFormatError(f"shard file {key} is missing") from None
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFormatError(f"shard file {key} is not a readable model file: {_unreadable(raw, exc)}") from exc
        try:
            return kinds.bundle_from_arrays(arrays)
        except ModelFormatError as exc:
            raise ModelFormatError(f"shard file {key}: {exc}") from exc

    def write_manifest(self, info: VersionInfo, manifest: pa.Table, shards: pa.Table) -> None:
        meta = {
            b"fleetscore.version": info.version.encode(),
            b"fleetscore.kind": info.kind.encode(),
            b"fleetscore.features": info.features.encode(),
            b"fleetscore.params": json.dumps(info.params).encode(),
            b"fleetscore.libraries": json.dumps(info.libraries).encode(),
            b"fleetscore.format_version": str(info.format_version).encode(),
        }
        self.storage.write_parquet(layout.shards_key(info.version), shards.cast(SHARDS_SCHEMA))
        table = _with_kind(manifest, info.kind).cast(MANIFEST_SCHEMA).replace_schema_metadata(meta)
        # rows come in shard order: one row group per shard in the whole manifest, and one small file per
        # shard that its scoring task reads alone (the whole manifest's footer grows with the shards, and
        # every task parsing it made a run cost O(shards²)); written first: the manifest marks them complete
        shard = table.column("shard").to_numpy()
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(shard)) + 1, [len(shard)]])
        groups = [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        with ThreadPoolExecutor(WRITERS) as pool:  # each write waits on its own fsync or PUT
            list(pool.map(lambda group: self.storage.write_parquet(
                layout.shard_manifest_key(info.version, int(group.column("shard")[0].as_py())),
                group.replace_schema_metadata(None), compression="lz4"), groups))
        self.storage.write_parquet_groups(layout.manifest_key(info.version), table.schema, groups)

    def read_manifest(self, version: str) -> tuple[VersionInfo, pa.Table]:
        info = self.read_info(version)
        table = self.storage.read_parquet(layout.manifest_key(version))
        return info, _with_kind(table.replace_schema_metadata(None), info.kind)

    def read_info(self, version: str) -> VersionInfo:
        """What a version's manifest says about itself, read from its footer only (not its rows)."""
        key = layout.manifest_key(version)
        try:
            with self.storage.open_parquet(key) as pf:
                meta = pf.schema_arrow.metadata or {}
        except FileNotFoundError:
            raise NotFoundError(f"model version {version} has no manifest at {key}") from None
        try:
            info = VersionInfo(
                version=meta[b"fleetscore.version"].decode(),
                kind=meta[b"fleetscore.kind"].decode(),
                features=meta[b"fleetscore.features"].decode(),
                params=json.loads(meta[b"fleetscore.params"]),
                libraries=json.loads(meta[b"fleetscore.libraries"]),
                format_version=int(meta[b"fleetscore.format_version"]),
            )
        except (KeyError, ValueError) as exc:
            raise ModelFormatError(f"manifest {key} lacks fleetscore metadata ({exc})") from exc
        if info.format_version not in kinds.READABLE_FORMATS:
            raise ModelFormatError(
                f"model version {version} was written in format {info.format_version} by fleetscore "
                f"{info.libraries.get('fleetscore')}; this fleetscore reads formats {kinds.READABLE_FORMATS}"
            )
        check_features_format(version, info.features, info.format_version)
        return info

    def read_shard_manifest(self, version: str, shard: int) -> pa.Table:
        """The manifest rows of one shard (with ``kind`` and ``fallback``, also for older versions): its own
        small file, whatever the number of shards; versions written before those files exist are read
        from the whole manifest's row groups."""
        try:
            return self.storage.read_parquet(layout.shard_manifest_key(version, shard))
        except FileNotFoundError:
            pass
        key = layout.manifest_key(version)
        try:
            with self.storage.open_parquet(key) as pf:  # row groups whose statistics may hold the shard
                col = pf.schema_arrow.get_field_index("shard")
                stats = [pf.metadata.row_group(i).column(col).statistics for i in range(pf.metadata.num_row_groups)]
                groups = [i for i, st in enumerate(stats) if st is None or not st.has_min_max or st.min <= shard <= st.max]
                table = pf.read_row_groups(groups)
                meta = pf.schema_arrow.metadata or {}
        except FileNotFoundError:
            raise NotFoundError(f"model version {version} has no manifest at {key}") from None
        table = table.filter(pc.equal(table.column("shard"), shard))
        kind = meta.get(b"fleetscore.kind", b"ocsvm").decode()
        return _with_kind(table.replace_schema_metadata(None), kind)

    def read_shards(self, version: str) -> pa.Table:
        try:
            return self.storage.read_parquet(layout.shards_key(version))
        except FileNotFoundError:
            raise NotFoundError(f"model version {version} has no shard table") from None
        except StorageError:
            raise


def _with_kind(manifest: pa.Table, kind: str) -> pa.Table:
    """Manifests written before model kinds were mixed: every model is of the version's kind, none a fallback;
    before format 4: intervals unknown (null), no device models."""
    if "kind" not in manifest.column_names:
        manifest = manifest.append_column("kind", pa.array([kind] * manifest.num_rows, pa.string()))
    if "fallback" not in manifest.column_names:
        manifest = manifest.append_column("fallback", pa.array([False] * manifest.num_rows, pa.bool_()))
    if "interval_s" not in manifest.column_names:
        manifest = manifest.append_column("interval_s", pa.nulls(manifest.num_rows, pa.float64()))
    if "sensor_index" not in manifest.column_names:
        manifest = manifest.append_column("sensor_index", pa.nulls(manifest.num_rows, pa.int32()))
    return manifest


def _unreadable(raw: bytes, exc: BaseException) -> str:
    """Why a shard file could not be loaded, in fleetscore's terms (numpy's own text suggests unpickling)."""
    if not raw.startswith(b"PK\x03\x04"):
        return f"not an .npz archive ({len(raw)} bytes starting {raw[:8]!r})"
    if "pickle" in str(exc) or "Object arrays" in str(exc):
        return "it holds Python objects, and fleetscore never unpickles model files: train the version again"
    return f"damaged .npz archive ({exc})"
