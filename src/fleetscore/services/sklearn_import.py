"""Import a trusted, pickled scikit-learn StandardScaler+OneClassSVM pipeline as a one-model version.

This is the only place fleetscore unpickles, and only on explicit request for a file the user
trusts (e.g. models of the classic one-job-per-model design). The result is stored in the safe
array format, so scoring never unpickles.
"""

from __future__ import annotations

import pickle
import time
import warnings
from pathlib import Path

import pyarrow as pa

from fleetscore.core import kinds, ocsvm
from fleetscore.core.features import parse_features
from fleetscore.core.schema import validate_readings
from fleetscore.core.times import iso_s
from fleetscore.errors import InputError, ModelFormatError
from fleetscore.services.context import Context
from fleetscore.storage.models import ModelStore, VersionInfo, library_versions

MAX_PICKLE_BYTES = 512 << 20


def load_pickle(path: Path) -> object:
    """Unpickle a trusted file (joblib or plain pickle), mapping every failure to ModelFormatError."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise ModelFormatError(f"{path}: {path.stat().st_size} bytes is too large for one model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InconsistentVersionWarning: converting old pickles is the point
        try:
            import joblib

            return joblib.load(path)
        except ImportError:
            pass
        except Exception as exc:  # any unpickling failure means the same to the user
            raise ModelFormatError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}") from exc
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except Exception as exc:
            raise ModelFormatError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}") from exc


def import_sklearn(ctx: Context, path: Path, device: str, sensor: str, features: str = "raw") -> str:
    """Convert the pipeline in ``path`` into a new (unreleased) version holding that one model."""
    started = time.perf_counter()
    ids = validate_readings(pa.table({"ts": [0], "device": [device], "sensor": [sensor], "value": [0.0]}))
    if ids.rejected.num_rows:
        raise InputError(f"--device/--sensor: {ids.rejected.column('reason')[0].as_py()}")
    spec = parse_features(features)
    params = ocsvm.from_sklearn(load_pickle(path))
    if params.n_features != spec.n_features:
        raise ModelFormatError(
            f"{path}: the pipeline takes {params.n_features} feature(s) but --features {spec.text} gives {spec.n_features}"
        )
    meta = {"source": "import-sklearn", "file": path.name}
    version = ctx.catalog.new_version("ocsvm", spec.text, meta, None, None)
    store = ModelStore(ctx.storage)
    store.write_shard(version, 0, params)
    now = iso_s(ctx.clock())
    manifest = pa.table({
        "device": [device], "sensor": [sensor], "shard": pa.array([0], pa.int32()), "slot": pa.array([0], pa.int32()),
        "status": ["ok"], "reason": pa.array([None], pa.string()), "n_train": pa.array([0], pa.int64()),
        "n_sv": pa.array([int(params.n_sv[0])], pa.int32()), "trained_at": [now],
    })
    shards = pa.table({
        "shard": pa.array([0], pa.int32()), "models": pa.array([1], pa.int32()),
        "lo_device": pa.array([None], pa.string()), "lo_sensor": pa.array([None], pa.string()),
        "hi_device": pa.array([None], pa.string()), "hi_sensor": pa.array([None], pa.string()),
        "cost": [1.0],
    })
    store.write_manifest(VersionInfo(version, "ocsvm", spec.text, meta, library_versions(), kinds.FORMAT_VERSION),
                         manifest, shards)
    ctx.catalog.finish_version(version, "ready", 1, 0, 1, time.perf_counter() - started)
    return version
