"""Fit all models of one shard: the primary kind where history allows, a robust fallback elsewhere.

`FitSettings` says how: the kind, its hyper-parameters (``nu``, ``gamma`` for ocsvm), the target
alarm rate (None = no calibration: exact scikit-learn semantics for pinned ocsvm settings), how
many rows a key needs for the primary kind, and whether keys below that (or whose fit failed) get
a ``robust`` fallback fitted on what little history they have. ``gamma="median"`` is the
data-driven rule: 1 / median squared distance between standardised training rows, per model.

Device models (`fleetscore.core.device`) are fitted per device from its sensors' raw readings
(`DeviceSeries`): the sensors with ``min_history`` readings are put on the device's device-times
(`fleetscore.core.devicegrid`, its tick learned from their intervals) and get one model between them,
if the device has ``min_history`` device-times; every sensor of it records its column
(``sensor_index``). With ``kind="device"`` every device gets one (its other sensors, and devices
whose fit failed, the robust fallback); with ``auto_device`` (the defaults) only devices whose
sensors move together in the training data (`fleetscore.core.device.co_movement`), the others
keep the primary kind per sensor. Pure: feature matrices and readings in, a bundle of arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetscore.core import device, ocsvm, robust
from fleetscore.core.calibrate import DEFAULT_ALARM_RATE, decision_offset
from fleetscore.core.devicegrid import build_grid, device_tick_us
from fleetscore.core.history import series_intervals
from fleetscore.core.kinds import Bundle, Params, get_kind
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
    auto_device: bool = False  # devices whose sensors move together get a device model (module docstring)


@dataclass(frozen=True)
class DeviceSeries:
    """One device of a shard as device models are fitted: its sensors' groups and raw readings (in time order)."""

    members: list[int]  # group index of each sensor, in sensor order
    ts_us: list[np.ndarray]
    values: list[np.ndarray]


@dataclass(frozen=True)
class ShardFit:
    """Per group (in input order): kind and slot of its model (None / -1 when it has none), etc."""

    bundle: Bundle
    kinds: list[str | None]
    slots: np.ndarray  # (groups,) int32
    fallback: np.ndarray  # (groups,) bool
    sizes: np.ndarray  # (groups,) int32: support vectors (ocsvm), 1 (robust), 0 (no model)
    reasons: list[str | None] = field(default_factory=list)
    sensor_index: np.ndarray | None = None  # (groups,) int32: column in its device model, -1 for other kinds


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


def _shape(s: FitSettings) -> dict[str, tuple[Any, ...]]:
    """The robust kind's per-feature rules (sides, persistence, capped thresholds) of the settings."""
    return {"side": s.side, "gated": s.gated, "capped": s.capped}


def _usable_rows(X: np.ndarray) -> int:
    return int(np.count_nonzero(np.isfinite(X[:, 0]))) if np.ndim(X) == 2 and np.shape(X)[1] else 0


def fit_shard(groups: Sequence[np.ndarray], settings: FitSettings,
              phases: Sequence[np.ndarray] | None = None, devices: Sequence[DeviceSeries] = ()) -> ShardFit:
    """Fit one model per group; see the module docstring for which kind each group gets.

    ``phases[i]``: time of day of each row of group i (lets robust models fit daily profiles);
    ``devices``: the shard's devices, for device models (``kind="device"`` or ``auto_device``).
    """
    if settings.values:
        groups = [X[:, : settings.values] if np.ndim(X) == 2 else X for X in groups]
    n = len(groups)
    kinds: list[str | None] = [None] * n
    slots = np.full(n, -1, dtype=np.int32)
    fallback = np.zeros(n, dtype=bool)
    sizes = np.zeros(n, dtype=np.int32)
    reasons: list[str | None] = [None] * n
    sensor_index = np.full(n, -1, dtype=np.int32)
    bundle: Bundle = {}

    get_kind(settings.kind)
    if settings.kind == "device" or settings.auto_device:
        _fit_devices(groups, settings, devices, bundle, kinds, slots, sizes, reasons, sensor_index)
    enough = [i for i in range(n) if kinds[i] is None and _usable_rows(groups[i]) >= settings.min_history]
    for i in set(range(n)) - set(enough):
        if kinds[i] is None and reasons[i] is None:
            reasons[i] = f"{_usable_rows(groups[i])} row(s) of history; {settings.kind} needs {settings.min_history}"
    if settings.kind != "device":  # device models are fitted above; sensors without one get the fallback
        params: Params
        if settings.kind == "robust":
            params, fitted, failures = robust.fit_many([groups[i] for i in enough],
                                                       settings.alarm_rate or DEFAULT_ALARM_RATE, settings.heavy_tails, (),
                                                       None if phases is None else [phases[i] for i in enough],
                                                       settings.seasonal, **_shape(settings))
        else:
            params, fitted, failures = _fit_ocsvm([groups[i] for i in enough], settings)
        _place(bundle, settings.kind, params, [enough[k] for k in fitted], kinds, slots, sizes, reasons)
        for k, why in failures.items():
            reasons[enough[k]] = why
    else:
        for i in enough:
            reasons[i] = reasons[i] or "no device model for this sensor's device"

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
    return ShardFit(bundle, kinds, slots, fallback, sizes, reasons, sensor_index)


def _fit_devices(groups: Sequence[np.ndarray], settings: FitSettings, devices: Sequence[DeviceSeries], bundle: Bundle,
                 kinds: list[str | None], slots: np.ndarray, sizes: np.ndarray, reasons: list[str | None],
                 sensor_index: np.ndarray) -> None:
    """Device models for the devices that get one (module docstring); their sensors' kinds, slots and columns."""
    pinned = settings.kind == "device"
    grids: list[np.ndarray] = []
    ticks: list[int] = []
    columns: list[list[int]] = []
    for dev in devices:
        keep = [k for k, g in enumerate(dev.members) if _usable_rows(groups[g]) >= settings.min_history]
        if not keep or (not pinned and len(keep) < 2):
            continue
        if not pinned and min(dev.ts_us[k].size for k in keep) <= device.COMOVE_MIN_ROWS:
            continue  # too few device-times for co-movement to show: no grid to build
        intervals = [series_intervals(dev.ts_us[k], np.array([0, dev.ts_us[k].size]))[0] for k in keep]
        tick = device_tick_us(np.array(intervals))
        ts = np.concatenate([dev.ts_us[k] for k in keep])
        col = np.repeat(np.arange(len(keep)), [dev.ts_us[k].size for k in keep])
        grid = build_grid(ts, np.concatenate([dev.values[k] for k in keep]), np.zeros(ts.size, dtype=np.int64),
                          col, np.array([tick]), len(keep)).values
        members = [dev.members[k] for k in keep]
        rows = int(np.count_nonzero(np.isfinite(grid).any(axis=1)))
        if rows < settings.min_history:
            if pinned:
                for g in members:
                    reasons[g] = f"{rows} device-time(s) of history; device needs {settings.min_history}"
            continue
        if not pinned and not device.co_movement(grid).together:
            continue
        grids.append(grid)
        ticks.append(tick)
        columns.append(members)
    if not grids:
        return
    params, fitted, failures = device.fit_many(grids, settings.alarm_rate or DEFAULT_ALARM_RATE, ticks)
    for k, why in failures.items():
        for g in columns[k]:
            reasons[g] = f"device model: {why}"
    if not fitted.size:
        return
    before = bundle["device"].n_models if "device" in bundle else 0
    bundle["device"] = device.DeviceParams.concat([bundle["device"], params]) if "device" in bundle else params
    size = params.size() // params.n_sensors  # per sensor: its share of the device-time's cost
    for slot, k in enumerate(fitted.tolist()):
        for column, g in enumerate(columns[k]):
            kinds[g] = "device"
            slots[g] = before + slot
            sizes[g] = int(size[slot])
            sensor_index[g] = column
            reasons[g] = None


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
