"""Fit all models of one shard: the primary kind where history allows, a robust fallback elsewhere.

`FitSettings` says how: the kind, its hyper-parameters (``nu``, ``gamma`` for ocsvm), the target
alarm rate (None = no calibration: exact scikit-learn semantics for pinned ocsvm settings), how
many rows a key needs for the primary kind, and whether keys below that (or whose fit failed) get
a ``robust`` fallback fitted on what little history they have. ``gamma="median"`` is the
data-driven rule: 1 / median squared distance between standardised training rows, per model.
Pure: feature matrices in, a bundle of arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fleetscore.core import ocsvm, robust
from fleetscore.core.calibrate import DEFAULT_ALARM_RATE, decision_offset
from fleetscore.core.kinds import Bundle, get_kind
from fleetscore.errors import FleetscoreError

#: Rows sampled per model to compute the median-distance gamma.
GAMMA_SAMPLE = 400


@dataclass(frozen=True)
class FitSettings:
    kind: str = "ocsvm"
    nu: float = 0.05
    gamma: float | str = "scale"
    alarm_rate: float | None = None
    min_history: int = 2
    fallback: bool = True
    heavy_tails: tuple[bool, ...] = ()  # per feature, see robust.fit_one
    short_history: tuple[bool, ...] = ()  # features the fallback models use (all when empty)
    seasonal: tuple[bool, ...] = ()  # features that get a daily profile (robust), see robust.fit_one
    values: int = 0  # leading columns the models fit (0 = all)
    side: tuple[int, ...] = ()  # per feature: the side its deviations count on (robust), see robust.fit_one
    gated: tuple[bool, ...] = ()  # per feature: persistence rule (robust)
    capped: tuple[bool, ...] = ()  # per feature: threshold capped at a multiple of the training range (robust)


@dataclass(frozen=True)
class ShardFit:
    """Per group (in input order): kind and slot of its model (None / -1 when it has none), etc."""

    bundle: Bundle
    kinds: list[str | None]
    slots: np.ndarray  # (groups,) int32
    fallback: np.ndarray  # (groups,) bool
    sizes: np.ndarray  # (groups,) int32: support vectors (ocsvm), 1 (robust), 0 (no model)
    reasons: list[str | None] = field(default_factory=list)


def median_gamma(X: np.ndarray) -> float:
    """1 / median squared distance between standardised rows (the "median heuristic"); 1/F if degenerate."""
    X = np.asarray(X, dtype=np.float64)
    if X.shape[0] > GAMMA_SAMPLE:
        X = X[np.linspace(0, X.shape[0] - 1, GAMMA_SAMPLE).astype(np.int64)]
    scale = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    sq = (Z * Z).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T)
    d2 = d2[np.triu_indices(len(Z), k=1)]
    med = float(np.median(d2)) if d2.size else 0.0
    return 1.0 / med if med > 1e-12 else 1.0 / X.shape[1]


def _fit_ocsvm(groups: Sequence[np.ndarray], s: FitSettings) -> tuple[ocsvm.OcsvmParams, np.ndarray, dict[int, str]]:
    clean = [X[np.isfinite(X).all(axis=1)] if np.ndim(X) == 2 else X for X in groups]
    parts: list[ocsvm.OcsvmParams] = []
    fitted: list[int] = []
    failures: dict[int, str] = {}
    for i, X in enumerate(clean):
        try:
            gamma = median_gamma(X) if s.gamma == "median" and len(X) >= 2 else s.gamma
            if gamma == "median":
                raise FleetscoreError(f"training data has {len(X)} complete row(s); at least 2 are needed")
            part = ocsvm.fit_one(X, s.nu, gamma)
            if s.alarm_rate is not None:
                offset = decision_offset(ocsvm.decision_function(part, np.zeros(len(X), np.int64), X), s.alarm_rate)
                part = get_kind("ocsvm").shift(part, np.array([offset]))
        except FleetscoreError as exc:
            failures[i] = str(exc)
            continue
        parts.append(part)
        fitted.append(i)
    width = next((np.shape(X)[1] for X in groups if np.ndim(X) == 2 and np.shape(X)[1] > 0), 1)
    params = ocsvm.OcsvmParams.concat(parts) if parts else ocsvm.OcsvmParams.empty(width)
    return params, np.array(fitted, dtype=np.int64), failures


def _shape(s: FitSettings) -> dict[str, tuple]:
    """The robust kind's per-feature rules (sides, persistence, capped thresholds) of the settings."""
    return {"side": s.side, "gated": s.gated, "capped": s.capped}


def _usable_rows(X: np.ndarray) -> int:
    return int(np.count_nonzero(np.isfinite(X[:, 0]))) if np.ndim(X) == 2 and np.shape(X)[1] else 0


def fit_shard(groups: Sequence[np.ndarray], settings: FitSettings,
              phases: Sequence[np.ndarray] | None = None) -> ShardFit:
    """Fit one model per group; see the module docstring for which kind each group gets.

    ``phases[i]``: time of day of each row of group i (lets robust models fit daily profiles).
    """
    if settings.values:
        groups = [X[:, : settings.values] if np.ndim(X) == 2 else X for X in groups]
    n = len(groups)
    kinds: list[str | None] = [None] * n
    slots = np.full(n, -1, dtype=np.int32)
    fallback = np.zeros(n, dtype=bool)
    sizes = np.zeros(n, dtype=np.int32)
    reasons: list[str | None] = [None] * n
    bundle: Bundle = {}

    get_kind(settings.kind)
    enough = [i for i in range(n) if _usable_rows(groups[i]) >= settings.min_history]
    for i in set(range(n)) - set(enough):
        reasons[i] = f"{_usable_rows(groups[i])} row(s) of history; {settings.kind} needs {settings.min_history}"
    if settings.kind == "robust":
        params, fitted, failures = robust.fit_many([groups[i] for i in enough], settings.alarm_rate or DEFAULT_ALARM_RATE,
                                                   settings.heavy_tails, (),
                                                   None if phases is None else [phases[i] for i in enough],
                                                   settings.seasonal, **_shape(settings))
    else:
        params, fitted, failures = _fit_ocsvm([groups[i] for i in enough], settings)
    _place(bundle, settings.kind, params, [enough[k] for k in fitted], kinds, slots, sizes, reasons)
    for k, why in failures.items():
        reasons[enough[k]] = why

    if settings.fallback:
        rest = [i for i in range(n) if kinds[i] is None]
        rate = settings.alarm_rate or DEFAULT_ALARM_RATE
        params, fitted, failures = robust.fit_many([groups[i] for i in rest], rate, settings.heavy_tails,
                                                   settings.short_history, **_shape(settings))
        placed = [rest[k] for k in fitted]
        why_short = [reasons[i] for i in placed]
        _place(bundle, "robust", params, placed, kinds, slots, sizes, reasons)
        fallback[placed] = True
        for i, why in zip(placed, why_short):
            reasons[i] = f"robust fallback: {why}"
        for k, why in failures.items():
            reasons[rest[k]] = f"{reasons[rest[k]]}; fallback: {why}" if reasons[rest[k]] else why
    return ShardFit(bundle, kinds, slots, fallback, sizes, reasons)


def _place(bundle: Bundle, kind: str, params: object, groups: list[int], kinds: list[str | None],
           slots: np.ndarray, sizes: np.ndarray, reasons: list[str | None]) -> None:
    """Append ``params`` (models for ``groups``, in order) to the bundle's arrays of ``kind``."""
    if not groups:
        return
    spec = get_kind(kind)
    before = bundle[kind].n_models if kind in bundle else 0
    bundle[kind] = spec.params_type.concat([bundle[kind], params]) if kind in bundle else params
    size = spec.size_of(params)
    for k, g in enumerate(groups):
        kinds[g] = kind
        slots[g] = before + k
        sizes[g] = int(size[k])
        reasons[g] = None
