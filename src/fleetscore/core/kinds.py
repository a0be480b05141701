"""The registry of model kinds, and the multi-kind shard ("bundle") array format.

A kind is a family of per-(device, sensor) models stored as flat arrays and scored by one fused
call per shard: ``ocsvm`` (StandardScaler + RBF OneClassSVM, `fleetscore.core.ocsvm`),
``robust`` (median / calibrated-spread z-scores with optional daily profiles, `fleetscore.core.robust`)
and ``device`` (one robust PCA model over all sensors of a device, `fleetscore.core.device`: it is
*per device*, its rows are device-times rather than readings, see `fleetscore.core.devicegrid`; the
scoring service pivots a device's readings to device-times and gives every reading its device-time's
decision, severity and top sensors; every sensor of the device names the one model). A shard file holds a
bundle: for each kind present, that kind's arrays under ``"<kind>.<array>"``, plus ``kinds`` (the
names, so a shard can be checked on its own) and the bundle ``format_version``. Format 1 files
(bare ``ocsvm`` arrays, written before bundles existed) are still read.

Every kind keeps the rule "decision < 0 is an anomaly"; a calibrated threshold is folded into the
model's intercept. A kind's ``severity`` puts every reading on one scale in [0, 100] from its tail
probability under the model's own calibration (`fleetscore.core.severity`; the robust kind's
formula is in `fleetscore.core.robust`); a kind without calibration (ocsvm: its tuned intercept is
calibrated, but not its tail) gives NaN. Both take feature columns followed by optional extra
columns the kind ignores. Pure: arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core import device, ocsvm, robust
from fleetscore.errors import InputError, ModelFormatError

#: Shard files and manifests written now; `READABLE_FORMATS` are the ones this fleetscore loads. Format 6
#: holds both format 5's robust arrays (sides and the persistence rule, robust format 4) and format 4's
#: learned sampling interval in the manifest (``interval_s``: scoring reads back as many readings as the
#: features need, `fleetscore.core.history`) and the ``device`` kind (with ``sensor_index``). Versions of
#: formats 1-5 load (format 5 and older without an interval read their features' fixed look-back); the
#: context features' own format (`fleetscore.core.features.CONTEXT_FORMAT`) refuses older context versions
#: with a request to retrain (`check_features_format`). Format 3 marked the current drift feature.
FORMAT_VERSION = 6
READABLE_FORMATS = (1, 2, 3, 4, 5, 6)

Params = Any  # ocsvm.OcsvmParams | robust.RobustParams | device.DeviceParams
Bundle = dict[str, Params]


@dataclass(frozen=True)
class ModelKind:
    """What fleetscore needs of a kind: its array type, scorer and how to shift its threshold."""

    name: str
    params_type: type[Any]
    #: (params, model_idx, X, phase, kernel): ``phase`` is each row's time of day (kinds with daily
    #: profiles), ``kernel`` the scoring kernel of kinds that have several (ocsvm: auto, numba, numpy)
    decision_function: Callable[[Params, np.ndarray, np.ndarray, np.ndarray | None, str | None], np.ndarray]
    intercept_of: Callable[[Params], np.ndarray]
    with_intercept: Callable[[Params, np.ndarray], Params]
    #: what one model costs to score per row, relative to other models of the kind (planning, manifest)
    size_of: Callable[[Params], np.ndarray]
    #: (params, model_idx, X, phase) -> severity in [0, 100] per row, NaN without a calibrated tail
    severity: Callable[[Params, np.ndarray, np.ndarray, np.ndarray | None, str | None], np.ndarray]
    #: one model per device, scored on device-times (`fleetscore.core.devicegrid`), not per reading
    per_device: bool = False
    #: decision and severity from one pass (kinds whose two share their work); None: the two functions
    both: Callable[[Params, np.ndarray, np.ndarray, np.ndarray | None, str | None],
                   tuple[np.ndarray, np.ndarray]] | None = None

    def from_arrays(self, arrays: Mapping[str, np.ndarray]) -> Params:
        return self.params_type.from_arrays(arrays)

    def empty(self, n_features: int) -> Params:
        return self.params_type.empty(n_features)

    def decision_and_severity(self, params: Params, model_idx: np.ndarray, X: np.ndarray,
                              phase: np.ndarray | None = None, kernel: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decision and severity of every row (one pass where the kind has one)."""
        if self.both is not None:
            return self.both(params, model_idx, X, phase, kernel)
        return (self.decision_function(params, model_idx, X, phase, kernel),
                self.severity(params, model_idx, X, phase, kernel))

    def shift(self, params: Params, offsets: np.ndarray) -> Params:
        """Fold thresholds into the intercepts: decision' = decision - offset (per model)."""
        return self.with_intercept(params, self.intercept_of(params) - np.asarray(offsets, dtype=np.float64))


def _ocsvm_decision(params: ocsvm.OcsvmParams, model_idx: np.ndarray, X: np.ndarray,
                    phase: np.ndarray | None = None, kernel: str | None = None) -> np.ndarray:
    """ocsvm scores (``phase`` unused); a feature without history (NaN) is taken at the model's training mean."""
    X = np.asarray(X, dtype=np.float64)[:, : params.n_features]  # extra columns are not its features
    missing = np.isnan(X)
    if missing.any():
        X = np.where(missing, params.mean[np.asarray(model_idx, dtype=np.int64)], X)
    return ocsvm.decision_function(params, model_idx, X, kernel)


def _robust_decision(params: robust.RobustParams, model_idx: np.ndarray, X: np.ndarray,
                     phase: np.ndarray | None = None, kernel: str | None = None) -> np.ndarray:
    """robust scores (one kernel: ``kernel`` unused)."""
    return robust.decision_function(params, model_idx, X, phase)


def _robust_severity(params: robust.RobustParams, model_idx: np.ndarray, X: np.ndarray,
                     phase: np.ndarray | None = None, kernel: str | None = None) -> np.ndarray:
    return robust.severity(params, model_idx, X, phase)


def _robust_both(params: robust.RobustParams, model_idx: np.ndarray, X: np.ndarray,
                 phase: np.ndarray | None = None, kernel: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    return robust.decision_and_severity(params, model_idx, X, phase)


def _no_severity(params: Params, model_idx: np.ndarray, X: np.ndarray, phase: np.ndarray | None = None,
                 kernel: str | None = None) -> np.ndarray:
    return np.full(len(model_idx), np.nan)


def _device_severity(params: device.DeviceParams, model_idx: np.ndarray, X: np.ndarray,
                     phase: np.ndarray | None = None, kernel: str | None = None) -> np.ndarray:
    return device.score(params, model_idx, X).severity


def _ocsvm_with_intercept(p: ocsvm.OcsvmParams, intercept: np.ndarray) -> ocsvm.OcsvmParams:
    return ocsvm.OcsvmParams(p.mean, p.scale, p.gamma, intercept, p.sv_offsets, p.sv, p.dual_coef)


KINDS: dict[str, ModelKind] = {
    "ocsvm": ModelKind("ocsvm", ocsvm.OcsvmParams, _ocsvm_decision, lambda p: p.intercept,
                       _ocsvm_with_intercept, lambda p: p.n_sv, _no_severity),
    "robust": ModelKind("robust", robust.RobustParams, _robust_decision, lambda p: p.intercept,
                        lambda p, i: p.with_intercept(i), lambda p: np.ones(p.n_models, dtype=np.int64),
                        _robust_severity, both=_robust_both),
    "device": ModelKind("device", device.DeviceParams, device.decision_function, lambda p: p.intercept,
                        lambda p, i: p.with_intercept(i), lambda p: p.size(), _device_severity, per_device=True),
}


def get_kind(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"model kind {str(name)[:40]!r} is not supported; available: {', '.join(KINDS)}") from None


def bundle_to_arrays(bundle: Mapping[str, Params]) -> dict[str, np.ndarray]:
    """Arrays of a multi-kind shard for ``np.savez`` (no object arrays: loads with allow_pickle=False)."""
    names = sorted(bundle)
    for name in names:
        get_kind(name)
    arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64), "kinds": np.array(names, dtype=np.str_)}
    for name in names:
        arrays.update({f"{name}.{k}": v for k, v in bundle[name].to_arrays().items()})
    return arrays


def bundle_from_arrays(arrays: Mapping[str, np.ndarray]) -> Bundle:
    """Validate a shard's arrays (bundle format 2, or format 1 = bare ocsvm); ModelFormatError if bad."""
    if "kinds" not in arrays:
        return {"ocsvm": ocsvm.OcsvmParams.from_arrays(arrays)}
    version = np.asarray(arrays.get("format_version"))
    if version.shape != () or version.dtype.kind not in "iu" or int(version) not in READABLE_FORMATS:
        raise ModelFormatError(f"shard format_version {version!r} is not one this fleetscore reads {READABLE_FORMATS}")
    names = np.asarray(arrays["kinds"])
    if names.ndim != 1 or names.dtype.kind != "U":
        raise ModelFormatError(f"shard 'kinds' must be a 1-D array of names, got {names.dtype} {names.shape}")
    bundle: Bundle = {}
    for name in names.tolist():
        if name not in KINDS:
            raise ModelFormatError(f"shard holds models of unknown kind {name[:40]!r}; known: {', '.join(KINDS)}")
        prefix = f"{name}."
        part = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
        try:
            bundle[name] = KINDS[name].from_arrays(part)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{name} models: {exc}") from exc
    return bundle


def needs_phase(bundle: Mapping[str, Params]) -> bool:
    """Whether some model of the bundle has a daily profile, so scoring needs each row's time of day."""
    return any(getattr(params, "seasonal", False) for params in bundle.values())


def history_rows(bundle: Mapping[str, Params]) -> int:
    """Rows before a scored row (of its model) that some model of the bundle compares it with (robust
    persistence): so many of the history rows read before a window must be scored with it, in time order."""
    return max((getattr(params, "history_rows", 0) for params in bundle.values()), default=0)


def rows_before(bounds: np.ndarray, selected: np.ndarray, rows: int) -> np.ndarray:
    """Per row (grouped by key, ``bounds`` as `fleetscore.core.plan.group_bounds` gives them): whether one of the
    ``rows`` rows after it in its group is ``selected``."""
    n = len(selected)
    group = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    out = np.zeros(n, dtype=bool)
    for lag in range(1, min(rows, n) + 1):
        out[:-lag] |= selected[lag:] & (group[lag:] == group[:-lag])
    return out


def score_bundle(bundle: Mapping[str, Params], kinds: Sequence[str] | pa.DictionaryArray, slots: np.ndarray,
                 X: np.ndarray, phase: np.ndarray | None = None, kernel: str | None = None) -> np.ndarray:
    """Decision of row r by model ``slots[r]`` of kind ``kinds[r]``: one fused call per kind present.

    ``phase`` is each row's time of day (fraction of a UTC day), needed by models with daily profiles;
    ``kernel`` chooses the ocsvm scoring kernel (None: its default).
    ``kinds`` is a name per row, or (no per-row Python objects: the fast form for many rows) an
    Arrow dictionary array of them. Rows keep their order within a kind, so rows grouped by model
    stay grouped for the kernel.
    """
    return _per_kind(lambda k, *a: (k.decision_function(*a),), bundle, kinds, slots, X, phase, kernel)[0]


def severity_bundle(bundle: Mapping[str, Params], kinds: Sequence[str] | pa.DictionaryArray, slots: np.ndarray,
                    X: np.ndarray, phase: np.ndarray | None = None) -> np.ndarray:
    """Severity in [0, 100] (NaN for kinds without a calibrated tail) of each row, as `score_bundle` scores it."""
    return _per_kind(lambda k, *a: (k.severity(*a),), bundle, kinds, slots, X, phase, None)[0]


def score_and_severity_bundle(bundle: Mapping[str, Params], kinds: Sequence[str] | pa.DictionaryArray,
                              slots: np.ndarray, X: np.ndarray, phase: np.ndarray | None = None,
                              kernel: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`score_bundle` and `severity_bundle` of every row together: one pass per kind where the kind has one."""
    decision, severity = _per_kind(lambda k, *a: k.decision_and_severity(*a), bundle, kinds, slots, X, phase, kernel)
    return decision, severity


def _per_kind(apply: Callable[..., tuple[np.ndarray, ...]], bundle: Mapping[str, Params],
              kinds: Sequence[str] | pa.DictionaryArray, slots: np.ndarray, X: np.ndarray, phase: np.ndarray | None,
              kernel: str | None) -> list[np.ndarray]:
    """``apply(kind, params, slots, X, phase, kernel)`` on the rows of each kind (one fused call per kind present);
    each of the arrays it returns is placed back in row order."""
    if not isinstance(kinds, pa.DictionaryArray):
        kinds = pc.dictionary_encode(pa.array(kinds, pa.string()))
    if kinds.null_count:
        raise InputError(f"{kinds.null_count} row(s) have no model kind to score them with")
    codes = kinds.indices.to_numpy(zero_copy_only=False)
    outs: list[np.ndarray] = []
    for code, name in enumerate(kinds.dictionary.to_pylist()):
        rows = np.flatnonzero(codes == code)
        if not rows.size:
            continue
        if name not in bundle:
            raise ModelFormatError(f"the manifest names {name} models that the shard file does not hold")
        every = rows.size == len(slots)  # one kind: no copies of X
        results = apply(get_kind(name), bundle[name], slots if every else slots[rows], X if every else X[rows],
                        phase if every or phase is None else phase[rows], kernel)
        outs = outs or [np.empty(len(slots), dtype=np.float64) for _ in results]
        for out, result in zip(outs, results):
            out[rows] = result
    return outs or [np.empty(0), np.empty(0)]  # no rows
