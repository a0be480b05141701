"""One-class SVM models (StandardScaler + RBF OneClassSVM) as flat arrays, and a fused scorer.

A fleet has one small model per (device, sensor); scoring them one sklearn object at a time is
dominated by Python overhead. Here the parameters of M models (a "shard") live in a few flat
arrays (`OcsvmParams`, saveable with ``np.savez`` without pickle), and `decision_function` scores
rows of many models in one pass, reproducing ``Pipeline.decision_function`` of scikit-learn up to
rounding (a few ulp of the kernel sum). The kernel is a numba loop when numba is importable and a
chunked numpy version otherwise; ``kernel="numpy"|"numba"`` forces one (the ``[executor] kernel``
setting, env ``FLEETSCORE_KERNEL``). numba and sklearn are imported lazily, so importing this module
stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from fleetscore.core.indices import check_index
from fleetscore.errors import ConfigError, FleetscoreError, InputError, ModelFormatError

FORMAT_VERSION = 1

_FLOAT_FIELDS = ("mean", "scale", "gamma", "intercept", "sv", "dual_coef")
_FIELDS = (*_FLOAT_FIELDS, "sv_offsets")
_CHUNK_PAIRS = 1 << 20


def _bad(name: str, problem: str) -> ModelFormatError:
    return ModelFormatError(f"invalid model array {name!r}: {problem}")


@dataclass(frozen=True, eq=False)
class OcsvmParams:
    """Parameters of M models; model m's support vectors are rows ``sv_offsets[m]:sv_offsets[m+1]``.

    decision(x) = sum_j dual_coef[j] * exp(-gamma[m] * ||(x - mean[m]) / scale[m] - sv[j]||^2)
    + intercept[m]. Construction validates shapes, dtypes and values (raises ModelFormatError).
    """

    mean: np.ndarray  # (M, F) float64
    scale: np.ndarray  # (M, F) float64, > 0
    gamma: np.ndarray  # (M,) float64, > 0, resolved
    intercept: np.ndarray  # (M,) float64
    sv_offsets: np.ndarray  # (M+1,) int64
    sv: np.ndarray  # (S, F) float64, in scaled space
    dual_coef: np.ndarray  # (S,) float64

    def __post_init__(self) -> None:
        for name in _FIELDS:
            a = np.asarray(getattr(self, name))
            floating = name in _FLOAT_FIELDS
            if a.dtype.kind not in ("f" if floating else "iu"):
                kind = "floating" if floating else "integer"
                raise _bad(name, f"dtype {a.dtype} is not {kind}")
            a = np.array(a, dtype=np.float64 if floating else np.int64, order="C")  # a copy, then frozen:
            a.flags.writeable = False  # the compiled kernel trusts these arrays once validated
            object.__setattr__(self, name, a)
        if self.mean.ndim != 2 or self.mean.shape[1] == 0:
            raise _bad("mean", f"must be 2-D (models, features >= 1), got shape {self.mean.shape}")
        if self.sv.ndim != 2:
            raise _bad("sv", f"must be 2-D (support vectors, features), got shape {self.sv.shape}")
        m, f = self.mean.shape
        s = self.sv.shape[0]
        expected = {
            "scale": (m, f), "gamma": (m,), "intercept": (m,), "sv_offsets": (m + 1,),
            "sv": (s, f), "dual_coef": (s,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise _bad(name, f"shape {getattr(self, name).shape}, expected {shape}")
        off = self.sv_offsets
        if off[0] != 0 or off[-1] != s or np.any(np.diff(off) < 0):
            raise _bad("sv_offsets", f"must start at 0, never decrease and end at len(sv)={s}")
        for name in _FLOAT_FIELDS:
            if not np.isfinite(getattr(self, name)).all():
                raise _bad(name, "contains NaN or inf")
        if np.any(self.scale <= 0):
            raise _bad("scale", "must be > 0")
        if np.any(self.gamma <= 0):
            raise _bad("gamma", "must be > 0")

    @property
    def n_models(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[1])

    @property
    def n_sv(self) -> np.ndarray:
        """Number of support vectors of each model, shape (M,)."""
        return np.diff(self.sv_offsets)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numeric arrays (plus ``format_version``) for ``np.savez``; inverse of `from_arrays`."""
        arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64)}
        return arrays | {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> OcsvmParams:
        """Validate and wrap arrays from `to_arrays` (e.g. an ``np.load`` result); ModelFormatError if bad."""
        missing = [k for k in ("format_version", *_FIELDS) if k not in arrays]
        if missing:
            raise ModelFormatError(f"model arrays missing: {', '.join(missing)}")
        version = np.asarray(arrays["format_version"])
        if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
            raise _bad("format_version", f"got {version!r}, this version reads {FORMAT_VERSION}")
        return cls(**{k: np.asarray(arrays[k]) for k in _FIELDS})

    def take(self, indices: Sequence[int] | np.ndarray) -> OcsvmParams:
        """The models at ``indices`` (in that order, repeats allowed) as a new shard."""
        idx = check_index(indices, self.n_models, "indices")
        counts = self.n_sv[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rows = np.repeat(self.sv_offsets[idx] - offsets[:-1], counts) + np.arange(offsets[-1])
        head = (self.mean[idx], self.scale[idx], self.gamma[idx], self.intercept[idx])
        return OcsvmParams(*head, offsets, self.sv[rows], self.dual_coef[rows])

    @classmethod
    def concat(cls, parts: Sequence[OcsvmParams]) -> OcsvmParams:
        """Stack shards (all with the same number of features) into one, models in order."""
        if not parts:
            raise InputError("concat needs at least one shard; use OcsvmParams.empty(n_features)")
        n_features = {p.n_features for p in parts}
        if len(n_features) != 1:
            raise InputError(f"cannot concat shards with different feature counts {sorted(n_features)}")
        shifts = np.cumsum([0] + [p.sv.shape[0] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.sv_offsets[1:] + k for p, k in zip(parts, shifts)])
        mean, scale, gamma, intercept = (np.concatenate([getattr(p, k) for p in parts])
                                         for k in ("mean", "scale", "gamma", "intercept"))
        return cls(mean, scale, gamma, intercept, offsets, np.concatenate([p.sv for p in parts]),
                   np.concatenate([p.dual_coef for p in parts]))

    @classmethod
    def empty(cls, n_features: int) -> OcsvmParams:
        """A shard with no models."""
        f = np.empty((0, n_features))
        return cls(f, f, np.empty(0), np.empty(0), np.zeros(1, dtype=np.int64), f, np.empty(0))


@dataclass(frozen=True, eq=False)
class FitResult:
    """Outcome of `fit_many`: model k of ``params`` was fitted on group ``fitted_indices[k]``."""

    params: OcsvmParams
    fitted_indices: np.ndarray  # (M,) int64
    failures: dict[int, str]  # group index -> reason


def _float_matrix(X: object, what: str) -> np.ndarray:
    """X as a C-contiguous 2-D float64 array of finite values, else InputError naming the first bad row."""
    try:
        X = np.ascontiguousarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not numeric: {exc}") from exc
    if X.ndim != 2 or X.shape[1] == 0:
        raise InputError(f"{what} must be 2-D (rows, features) with >= 1 feature, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InputError(f"{what} row {np.flatnonzero(~np.isfinite(X).all(axis=1))[0]} has a non-finite value")
    return X


def _check_hyperparams(nu: float, gamma: float | str) -> None:
    if isinstance(nu, bool) or not isinstance(nu, Real) or not 0 < nu <= 1:
        raise InputError(f"nu must be a number in (0, 1], got {nu!r}")
    if isinstance(gamma, str):
        if gamma not in ("scale", "auto"):
            raise InputError(f"gamma must be 'scale', 'auto' or a number > 0, got {gamma!r}")
    elif isinstance(gamma, bool) or not isinstance(gamma, Real) or not 0 < gamma < np.inf:
        raise InputError(f"gamma must be 'scale', 'auto' or a finite number > 0, got {gamma!r}")


def fit_one(X: np.ndarray, nu: float = 0.05, gamma: float | str = "scale") -> OcsvmParams:
    """Fit StandardScaler + OneClassSVM(rbf, nu, gamma) on X (n_rows, n_features); a shard of one model."""
    _check_hyperparams(nu, gamma)
    X = _float_matrix(X, "training data")
    if X.shape[0] < 2:
        raise InputError(f"training data has {X.shape[0]} row(s); at least 2 are needed")
    import sklearn
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    scaler, svm = StandardScaler(), OneClassSVM(kernel="rbf", nu=nu, gamma=gamma)
    # exactly what Pipeline(scaler, svm).fit does, without the pipeline's and the input checks' overhead
    # (about a third of the time of a small model): X and the hyper-parameters are checked above
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        try:
            svm.fit(scaler.fit_transform(X))
        except ValueError as exc:
            raise InputError(f"scikit-learn could not fit the model: {exc}") from exc
    return _from_parts(scaler, svm)


def fit_many(groups: Sequence[np.ndarray], nu: float = 0.05, gamma: float | str = "scale") -> FitResult:
    """Fit one model per group; groups that cannot be fitted are reported in ``failures`` and left out."""
    _check_hyperparams(nu, gamma)
    parts: list[OcsvmParams] = []
    fitted: list[int] = []
    failures: dict[int, str] = {}
    for i, X in enumerate(groups):
        try:
            part = fit_one(X, nu, gamma)
        except FleetscoreError as exc:
            failures[i] = str(exc)
            continue
        if parts and part.n_features != parts[0].n_features:
            failures[i] = f"has {part.n_features} features, the first fitted group has {parts[0].n_features}"
            continue
        parts.append(part)
        fitted.append(i)
    if parts:
        params = OcsvmParams.concat(parts)
    else:
        widths = [np.shape(X)[1] for X in groups if np.ndim(X) == 2 and np.shape(X)[1] > 0]
        params = OcsvmParams.empty(widths[0] if widths else 1)
    return FitResult(params, np.array(fitted, dtype=np.int64), failures)


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _dense(a: object) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)


def _svm_arrays(svm: Any) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(gamma, intercept, sv, dual_coef) of a fitted OneClassSVM, also one unpickled from an old sklearn."""
    kernel = getattr(svm, "kernel", "rbf")
    if kernel != "rbf":
        raise ModelFormatError(f"kernel {kernel!r} is not supported; only rbf")
    if getattr(svm, "support_vectors_", None) is None:
        raise ModelFormatError("the OneClassSVM is not fitted (it has no support_vectors_); fit it first")
    sv = _dense(svm.support_vectors_)
    # decision_function uses the private copies; for one-class SVMs they equal the public ones
    # (sklearn only flips the sign of the public intercept_/dual_coef_ for binary classifiers).
    dual = getattr(svm, "_dual_coef_", None)
    dual = _dense(svm.dual_coef_ if dual is None else dual).ravel()
    intercept = getattr(svm, "_intercept_", None)
    intercept = np.asarray(svm.intercept_ if intercept is None else intercept, dtype=np.float64).ravel()
    if sv.ndim != 2 or dual.shape != (sv.shape[0],) or intercept.shape != (1,):
        raise ModelFormatError(
            f"inconsistent OneClassSVM: support_vectors_ {sv.shape}, dual_coef_ {dual.shape}, "
            f"intercept_ {intercept.shape}"
        )
    gamma: Any = getattr(svm, "_gamma", None)
    if gamma is None:  # pickled before the resolved gamma was stored: recover it from the parameter
        gamma = getattr(svm, "gamma", "scale")
        if gamma in ("auto", "auto_deprecated"):
            gamma = 1.0 / sv.shape[1]
        elif isinstance(gamma, str):
            raise ModelFormatError(
                f"the OneClassSVM has gamma={gamma!r} but no resolved _gamma (pickled by an old scikit-learn?); "
                "it depends on the unknown training variance, so refit the model or use a numeric gamma"
            )
    return float(gamma), float(intercept[0]), sv, dual


def _scaler_arrays(scaler: Any, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) applied by a fitted StandardScaler's transform."""
    mean, scale = np.zeros(n_features), np.ones(n_features)
    if getattr(scaler, "with_mean", True):
        if getattr(scaler, "mean_", None) is None:
            raise ModelFormatError("the StandardScaler is not fitted (it has no mean_); fit it first")
        mean = np.asarray(scaler.mean_, dtype=np.float64)
    if getattr(scaler, "with_std", True):
        s = getattr(scaler, "scale_", None)
        s = getattr(scaler, "std_", None) if s is None else s  # std_: scikit-learn < 0.17
        if s is None:
            raise ModelFormatError("the StandardScaler is not fitted (it has no scale_); fit it first")
        scale = np.asarray(s, dtype=np.float64)
    if mean.shape != (n_features,) or scale.shape != (n_features,):
        raise ModelFormatError(
            f"the StandardScaler has mean {mean.shape} / scale {scale.shape}, "
            f"the OneClassSVM has {n_features} features"
        )
    return mean, scale


def from_sklearn(model: object) -> OcsvmParams:
    """Convert a fitted ``Pipeline(StandardScaler, OneClassSVM)`` or a bare ``OneClassSVM`` (rbf) to a shard of one."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    expected = "a fitted Pipeline(StandardScaler, OneClassSVM) or OneClassSVM"
    if isinstance(model, Pipeline):
        steps = [step for _, step in getattr(model, "steps", [])]
        if len(steps) != 2 or not isinstance(steps[0], StandardScaler) or not isinstance(steps[1], OneClassSVM):
            found = ", ".join(_type_name(s) for s in steps)
            raise ModelFormatError(f"expected {expected}, got a Pipeline of ({found})")
        scaler, svm = steps
    elif isinstance(model, OneClassSVM):
        scaler, svm = None, model
    else:
        raise ModelFormatError(f"expected {expected}, got {_type_name(model)}")
    return _from_parts(scaler, svm)


def _from_parts(scaler: object | None, svm: object) -> OcsvmParams:
    """A shard of one model from a fitted StandardScaler (or None: no scaling) and OneClassSVM."""
    gamma, intercept, sv, dual = _svm_arrays(svm)
    if scaler is None:
        mean, scale = np.zeros(sv.shape[1]), np.ones(sv.shape[1])
    else:
        mean, scale = _scaler_arrays(scaler, sv.shape[1])
    return OcsvmParams(
        mean[None], scale[None], np.array([gamma]), np.array([intercept]), np.array([0, sv.shape[0]]), sv, dual
    )


# exp(a) for a <= 0 as 2**n * exp(r), n = round(a / ln 2), |r| <= ln2 / 2, exp(r) by its Taylor series
# to degree 13: within 1 ulp of libm, and branch-free so LLVM vectorises it (libm's exp is not).
_EXP_MIN = -708.0  # exp(-708) ~ 3e-308 is the smallest normal result; below it every term is negligible
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two (fdlibm) so n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_ROUND = 6755399441055744.0  # 2**52 + 2**51: x + _ROUND rounds x to an integer held in the low bits
_ROUND_BITS = 0x4338000000000000  # the bit pattern of _ROUND
_LANES = 8  # vector loops run over a multiple of this many rows: no slow scalar remainder loop


def _decision_loop(mean: np.ndarray, scale: np.ndarray, gamma: np.ndarray, intercept: np.ndarray,
                   sv_offsets: np.ndarray, sv: np.ndarray, dual_coef: np.ndarray, model_idx: np.ndarray,
                   X: np.ndarray, out: np.ndarray) -> None:
    """Compiled by numba. Rows are grouped by model (counting sort); for each support vector the
    kernel terms of all the model's rows are computed in one vectorisable loop. Per row the sum runs
    over the support vectors in order, as in libsvm."""
    n_rows, n_features = X.shape
    n_models = gamma.shape[0]
    first = np.zeros(n_models + 1, dtype=np.int64)  # rows of model m: order[first[m]:first[m + 1]]
    for r in range(n_rows):
        first[model_idx[r] + 1] += 1
    width = 0
    for m in range(n_models):
        width = max(width, first[m + 1])
        first[m + 1] += first[m]
    width = (width + _LANES - 1) // _LANES * _LANES
    order = np.empty(n_rows, dtype=np.int64)
    fill = first[:-1].copy()
    for r in range(n_rows):
        order[fill[model_idx[r]]] = r
        fill[model_idx[r]] += 1
    z = np.zeros((n_features, width))  # scaled rows of one model, feature-major; lanes >= n are ignored
    d2 = np.empty(width)
    acc = np.empty(width)
    for m in range(n_models):
        lo, n = first[m], first[m + 1] - first[m]
        if n == 0:
            continue
        w = (n + _LANES - 1) // _LANES * _LANES
        for k in range(n_features):
            for i in range(n):
                z[k, i] = (X[order[lo + i], k] - mean[m, k]) / scale[m, k]
        acc[:w] = 0.0
        g = gamma[m]
        for j in range(sv_offsets[m], sv_offsets[m + 1]):
            s = sv[j, 0]
            for i in range(w):
                d = z[0, i] - s
                d2[i] = d * d
            for k in range(1, n_features):
                s = sv[j, k]
                for i in range(w):
                    d = z[k, i] - s
                    d2[i] += d * d
            c = dual_coef[j]
            for i in range(w):
                a = max(-g * d2[i], _EXP_MIN)
                t = a * _LOG2E + _ROUND
                e = t - _ROUND
                r = (a - e * _LN2_HI) - e * _LN2_LO
                q = 1.0 / 6227020800.0  # Horner, 1/13! ... 1/0!; spelled out: a loop over a tuple is slower
                q = q * r + 1.0 / 479001600.0
                q = q * r + 1.0 / 39916800.0
                q = q * r + 1.0 / 3628800.0
                q = q * r + 1.0 / 362880.0
                q = q * r + 1.0 / 40320.0
                q = q * r + 1.0 / 5040.0
                q = q * r + 1.0 / 720.0
                q = q * r + 1.0 / 120.0
                q = q * r + 1.0 / 24.0
                q = q * r + 1.0 / 6.0
                q = q * r + 0.5
                q = q * r + 1.0
                q = q * r + 1.0
                two_n = np.int64((np.float64(t).view(np.int64) - _ROUND_BITS + 1023) << 52).view(np.float64)
                acc[i] += c * (q * two_n)
        for i in range(n):
            out[order[lo + i]] = acc[i] + intercept[m]


@functools.cache
def _numba_kernel() -> Callable[..., None] | None:
    """`_decision_loop` compiled by numba (at its first call), or None when numba is missing."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")(_decision_loop)


def numba_kernel_loaded() -> bool:
    """The numba kernel is compiled or loaded from its cache in this process already: calling it costs no start-up."""
    if _numba_kernel.cache_info().currsize == 0:
        return False
    kernel = _numba_kernel()
    return kernel is not None and bool(getattr(kernel, "signatures", ()))


#: Kernel used when the caller does not choose: numba where it is installed, else numpy.
DEFAULT_KERNEL = "auto"


def _select_kernel(choice: str | None) -> Callable[..., None] | None:
    """numba kernel, or None for the numpy one: ``auto`` (numba if importable), ``numba`` or ``numpy``."""
    choice = DEFAULT_KERNEL if choice is None else choice
    if choice not in ("auto", "numba", "numpy"):
        raise InputError(f"kernel must be 'auto', 'numba' or 'numpy', got {choice!r}")
    if choice == "numpy":
        return None
    kernel = _numba_kernel()
    if kernel is None and choice == "numba":
        raise ConfigError("kernel 'numba' is set (FLEETSCORE_KERNEL) but numba cannot be imported; "
                          "install fleetscore[fast]")
    return kernel


def _decision_numpy(p: OcsvmParams, model_idx: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Vectorised over (row, support vector) pairs, in chunks of about `_CHUNK_PAIRS` pairs."""
    counts = p.n_sv[model_idx]
    ends = np.cumsum(counts)
    out = np.empty(X.shape[0])
    start = 0
    while start < X.shape[0]:
        done = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, done + _CHUNK_PAIRS, side="right")))
        m, c = model_idx[start:stop], counts[start:stop]
        z = (X[start:stop] - p.mean[m]) / p.scale[m]
        row = np.repeat(np.arange(stop - start), c)
        j = np.repeat(p.sv_offsets[m] - (np.cumsum(c) - c), c) + np.arange(row.size)
        d = z[row] - p.sv[j]
        k = p.dual_coef[j] * np.exp(-p.gamma[m][row] * np.einsum("ij,ij->i", d, d))
        out[start:stop] = np.bincount(row, weights=k, minlength=stop - start) + p.intercept[m]
        start = stop
    return out


def decision_function(params: OcsvmParams, model_idx: np.ndarray, X: np.ndarray,
                      kernel: str | None = None) -> np.ndarray:
    """Score row r of X (N, F) with model ``model_idx[r]``; equals sklearn's ``decision_function`` (N,).

    ``kernel``: ``auto``, ``numba`` or ``numpy`` (None: `DEFAULT_KERNEL`).
    """
    X = _float_matrix(X, "input")
    if X.shape[1] != params.n_features:
        raise InputError(f"input has {X.shape[1]} features, the models have {params.n_features}")
    if np.ndim(model_idx) != 1 or np.shape(model_idx)[0] != X.shape[0]:
        raise InputError(f"model_idx must have shape ({X.shape[0]},), got {np.shape(model_idx)}")
    model_idx = check_index(model_idx, params.n_models, "model_idx")
    compiled = _select_kernel(kernel)
    if compiled is None:
        return _decision_numpy(params, model_idx, X)
    out = np.empty(X.shape[0])
    p = params
    compiled(p.mean, p.scale, p.gamma, p.intercept, p.sv_offsets, p.sv, p.dual_coef, model_idx, X, out)
    return out


def predict_is_anomaly(scores: np.ndarray) -> np.ndarray:
    """True where sklearn's ``predict`` would say -1 (outlier): decision < 0."""
    return np.asarray(scores) < 0
