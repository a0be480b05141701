"""Import a trusted, pickled scikit-learn StandardScaler+OneClassSVM pipeline as a one-model version.

This is the only place fleetscore unpickles, and only on explicit request (``--trust-pickle``) for
a file the user trusts (e.g. models of the classic one-job-per-model design); even then a
restricted unpickler resolves only the scikit-learn, numpy and scipy names those models are made
of, so a hostile pickle cannot call ``os.system`` or ``open``. The result is stored in the safe
array format, so scoring never unpickles.
"""

from __future__ import annotations

import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler
from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap

from fleetscore.core import kinds, ocsvm
from fleetscore.core.features import parse_features
from fleetscore.core.schema import validate_readings
from fleetscore.core.times import iso_s
from fleetscore.errors import InputError, ModelFormatError
from fleetscore.services.context import Context
from fleetscore.storage.models import ModelStore, VersionInfo, library_versions

MAX_PICKLE_BYTES = 512 << 20

#: The only globals a pickle may name: the classes converted, the numpy/scipy array machinery their
#: fitted state is made of, and the builtins pickle protocols 0-5 use for bytes and sets.
ALLOWED_GLOBALS = frozenset({
    ("sklearn.pipeline", "Pipeline"), ("sklearn.preprocessing._data", "StandardScaler"),
    ("sklearn.svm._classes", "OneClassSVM"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    *((core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("scipy.sparse._csr", "csr_matrix"), ("scipy.sparse.csr", "csr_matrix"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"), ("_codecs", "encode"),
    *((mod, name) for mod in ("builtins", "__builtin__") for name in ("object", "bytes", "bytearray", "set", "frozenset")),
})

TRUST_HINT = (
    "unpickling runs any code the file contains, so fleetscore only does it when asked: "
    "pass --trust-pickle (Fleet.import_sklearn(..., trust_pickle=True)) for a file you trust; "
    "even then only scikit-learn Pipeline/StandardScaler/OneClassSVM and numpy/scipy arrays are loaded"
)


def _check_global(module: str, name: str) -> None:
    """Refuse any global outside ALLOWED_GLOBALS: a pickle names the callables it runs this way."""
    if (module, name) not in ALLOWED_GLOBALS:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only scikit-learn Pipeline/StandardScaler/OneClassSVM "
            "and numpy/scipy array classes may appear in an imported model"
        )


class RestrictedUnpickler(pickle.Unpickler):
    """A plain unpickler that resolves only ALLOWED_GLOBALS (used for object arrays inside joblib files)."""

    def find_class(self, module: str, name: str) -> Any:
        _check_global(module, name)
        return super().find_class(module, name)


class SafeArrayWrapper(NumpyArrayWrapper):  # type: ignore[misc]
    """joblib's array placeholder, reading object arrays with RestrictedUnpickler (joblib < 1.5 used ``pickle.load``)."""

    def read_array(self, unpickler: Any, ensure_native_byte_order: bool) -> Any:
        if self.dtype.hasobject:
            return RestrictedUnpickler(unpickler.file_handle).load()
        return super().read_array(unpickler, ensure_native_byte_order)


class SafeNumpyUnpickler(NumpyUnpickler):  # type: ignore[misc]
    """joblib's unpickler (joblib and plain pickle files) resolving only ALLOWED_GLOBALS."""

    def find_class(self, module: str, name: str) -> Any:
        _check_global(module, name)
        if (module, name) == ("joblib.numpy_pickle", "NumpyArrayWrapper"):
            return SafeArrayWrapper
        return super().find_class(module, name)


def _unpickle(path: Path) -> object:
    """Load ``path`` with the restricted joblib unpickler; the file is decompressed as joblib.load does."""
    with open(path, "rb") as fh, _validate_fileobject_and_memmap(fh, str(path), None) as (fobj, _):
        if isinstance(fobj, str):  # joblib < 0.10 kept arrays in companion files: not supported
            raise pickle.UnpicklingError("written by joblib < 0.10 (arrays in companion files); re-save it")
        return SafeNumpyUnpickler(str(path), fobj, True).load()


def load_pickle(path: Path, trust_pickle: bool = False) -> object:
    """Unpickle a trusted file (joblib or plain pickle) with only ALLOWED_GLOBALS; failures are ModelFormatError.

    Without ``trust_pickle`` nothing is read: InputError explaining the opt-in.
    """
    if not trust_pickle:
        raise InputError(f"{path}: refusing to unpickle without --trust-pickle: {TRUST_HINT}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise ModelFormatError(f"{path}: {path.stat().st_size} bytes is too large for one model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InconsistentVersionWarning: converting old pickles is the point
        try:
            return _unpickle(path)
        except Exception as exc:  # any unpickling failure means the same to the user
            raise ModelFormatError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}") from exc


def import_sklearn(ctx: Context, path: Path, device: str, sensor: str, features: str = "raw",
                   trust_pickle: bool = False) -> str:
    """Convert the pipeline in ``path`` into a new (unreleased) version holding that one model.

    ``trust_pickle`` is the caller's explicit word that the file is trusted (see load_pickle).
    """
    started = time.perf_counter()
    ids = validate_readings(pa.table({"ts": [0], "device": [device], "sensor": [sensor], "value": [0.0]}))
    if ids.rejected.num_rows:
        raise InputError(f"--device/--sensor: {ids.rejected.column('reason')[0].as_py()}")
    spec = parse_features(features)
    params = ocsvm.from_sklearn(load_pickle(path, trust_pickle))
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
