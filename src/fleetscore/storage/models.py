"""Model versions on storage: many models per shard file (``.npz``, no pickles) plus a Parquet manifest.

A shard file holds plain numeric arrays (loaded with ``allow_pickle=False``) and stamps the format
version; the manifest stamps the library versions it was built with, checked when loading.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from fleetscore.core import ocsvm
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
    ]
)
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

    from fleetscore import __version__

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
        buf = io.BytesIO()
        np.savez(buf, **params.to_arrays())
        self.storage.write_bytes(layout.shard_key(version, shard), buf.getvalue())

    def read_shard(self, version: str, shard: int) -> ocsvm.OcsvmParams:
        key = layout.shard_key(version, shard)
        try:
            raw = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise ModelFormatError(f"shard file {key} is missing") from None
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (ValueError, OSError, EOFError) as exc:
            raise ModelFormatError(f"shard file {key} is not a readable model file: {exc}") from exc
        try:
            return ocsvm.OcsvmParams.from_arrays(arrays)
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
        table = manifest.cast(MANIFEST_SCHEMA).replace_schema_metadata(meta)
        self.storage.write_parquet(layout.manifest_key(info.version), table)

    def read_manifest(self, version: str) -> tuple[VersionInfo, pa.Table]:
        key = layout.manifest_key(version)
        try:
            table = self.storage.read_parquet(key)
        except FileNotFoundError:
            raise NotFoundError(f"model version {version} has no manifest at {key}") from None
        meta = table.schema.metadata or {}
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
        if info.format_version != ocsvm.FORMAT_VERSION:
            raise ModelFormatError(
                f"model version {version} was written in format {info.format_version} by fleetscore "
                f"{info.libraries.get('fleetscore')}; this fleetscore reads format {ocsvm.FORMAT_VERSION}"
            )
        return info, table.replace_schema_metadata(None)

    def read_shards(self, version: str) -> pa.Table:
        try:
            return self.storage.read_parquet(layout.shards_key(version))
        except FileNotFoundError:
            raise NotFoundError(f"model version {version} has no shard table") from None
        except StorageError:
            raise
