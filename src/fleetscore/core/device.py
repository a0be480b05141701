"""Per-device models: one robust PCA model over all sensors of a device whose sensors move together.

The other kinds give every (device, sensor) its own model; the device kind models a device-time (one
timestamp, a reading of each of the device's ``p`` sensors) as one point, so a fault that shows as
a *combination* of moderate departures (a closed valve: less flow, a warmer pump, a different
vibration) alarms once, with the sensors that explain it. Per device-time:

* **features** (`device_features`), scored per sensor: its ``level`` (the reading) and its
  ``recent`` level, the mean of its last `WINDOW` readings (this one included) without the `TRIM`
  highest and `TRIM` lowest. A persistent shift stands out of the noise about ``sqrt(WINDOW)`` times
  more in ``recent``; trimming keeps a single spike from leaking into the next readings, which
  ``level`` flags at once. A device-time's features depend only on the `HISTORY` device-times
  before it, never on where a scoring window starts;
* **model features**: a sensor with a recent level is modelled as (``recent``, ``level - recent``):
  a slow component and a fast one (a departure from the recent level), each standardised by its
  training median and spread (the larger of the MAD and the 5%-winsorised sd, both as a normal sigma:
  the MAD alone collapses on quantised sensors whose readings mostly repeat one value);
* **correlation** ``R`` of the standardised model features: reweighted (rows beyond the chi-square
  99.5% quantile left out, `REWEIGHTS` times), shrunk toward independence (``n`` rows against ``q``
  pseudo-rows), then probabilistic PCA: ``R = V_k Λ_k V_k' + σ² (I - V_k V_k')`` with ``k`` components
  explaining `EXPLAINED` of the trace and ``σ²`` the mean variance of the others. The distance
  ``d² = z' R⁻¹ z`` is then Hotelling's T² on the ``k`` components plus Q (the squared prediction
  error) over ``σ²``. The model is stored mapped back to the scored features (``center``, ``scale``
  and the correlation ``cov`` of (level, recent) per sensor), so a missing reading leaves the exact
  marginal of the observed features: ``d² = z_o' Σ_oo⁻¹ z_o``, ``df = |o|``;
* **per-sensor contributions** ``c_s = g_s' (P_ss)⁻¹ g_s`` (``g = Σ_oo⁻¹ z_o``, ``P = Σ_oo⁻¹``): the drop
  of ``d²`` when sensor s is reconstructed from the others (Alcala & Qin 2009), chi-square with the
  sensor's observed features under the model. The omnibus ``d²`` is the strongest test against
  departures spread over the sensors but dilutes one sensor's departure among all the features; the
  largest contribution does not. ``v`` = -log10 of twice the smaller of the omnibus tail probability
  and (sensors observed) × the smallest per-sensor one (Bonferroni; `combined_decades`);
* **calibration**: the tail of ``v`` over the model's *own training rows* (`fit_tail`: as
  `fleetscore.core.calibrate` fits tails, through the body quantiles, so anomalies in training make
  the model alarm less, never more) gives ``p``, the probability that a normal device-time is this
  far out;
* **decision** ``intercept - (-log10 p)`` with ``intercept = -log10(alarm_rate)`` after fitting: < 0 (an
  anomaly) exactly when ``p`` is below the alarm rate, counting decades of rarity past it (`shift`
  of the kinds moves the intercept). **severity** is `fleetscore.core.severity.severity_from_tail`
  of ``p``. **top_sensors**: up to `TOP_SENSORS` sensors by contribution, most first, on flagged rows
  (-1 elsewhere and past the sensors with a positive contribution).

Short training windows: a slow sensor (a temperature) barely moves in a short training window and
then wanders far from it; its training spread understates where it will be. Each model feature's
*effective* training sample size ``n_eff = n / tau`` (``tau`` the integrated autocorrelation time of
the sensor's readings for the slow component, of the departure itself for the fast one) widens
its scale for scoring by the ratio of Student's t (``n_eff - 1`` degrees of freedom) to the normal
quantile at the sensor's share of the alarm rate, times ``sqrt(1 + 1/n_eff)`` (the predictive interval
of a new value from ``n_eff`` independent ones). White-noise sensors keep their scale, a sensor seen
a few independent times in training counts that much less, and a slow sensor's departures (spikes)
stay as sharp as its noise allows. The calibration uses the unwidened scale: the widening stands for
what the training window could not show.

Degenerate devices: a sensor constant in training must stay at its value (any change is far out, and
named); a sensor without training readings is not used; a sensor without enough history for a recent
level is modelled by its level alone; one sensor gives a univariate robust model of its level and
departures; fewer training rows than features lean on the shrinkage. A device-time with nothing
observed scores as normal (``p = 1``, severity 0), as the per-sensor kinds skip a missing feature; an
infinite or absurd reading is far out (clipped, never NaN); an infinite training reading is left out.

Many models per shard as flat arrays (`DeviceParams`): device m's sensors are rows
``sensor_offsets[m]:sensor_offsets[m + 1]`` of the per-sensor arrays, its correlation block the next
``(p_m F)²`` entries of ``cov`` (features sensor-major). Scoring (`score`) is vectorised over any mix
of devices: one pass per distinct sensor count, never one per device. Pure numpy: arrays in, arrays out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fleetscore.core.calibrate import BODY, DEFAULT_ALARM_RATE, MIN_TAIL_ROWS
from fleetscore.core.indices import check_index
from fleetscore.core.severity import severity_from_tail
from fleetscore.errors import FleetscoreError, InputError, ModelFormatError

TAIL_BODY = BODY

#: Arrays written now; the versions this fleetscore reads. Format 2 adds each device's tick (``tick_us``,
#: see `fleetscore.core.devicegrid`); format 1 (written before device models could be trained through the
#: pipeline, without a tick) is refused with a request to retrain.
FORMAT_VERSION = 2
READABLE_FORMATS = (2,)
#: The tick of a device model built without one (`fit_one` on bare arrays): a second.
DEFAULT_TICK_US = 1_000_000

#: Features per sensor, in this order.
FEATURES = ("level", "recent")
N_FEATURES = len(FEATURES)
#: ``recent`` is the trimmed mean of the last WINDOW readings of the sensor (this one included) ...
WINDOW = 15
#: ... without its TRIM highest and TRIM lowest ...
TRIM = 2
#: ... and needs at least this many finite readings among them (else NaN: scored without it).
MIN_RECENT = 10
#: Device-times of history before a scored one that its features need.
HISTORY = WINDOW - 1
#: Model each sensor as (recent level, departure from it) where it has a recent level (see `fit_one`).
SPLIT = True
#: Up to this many sensors are named per flagged device-time.
TOP_SENSORS = 3

#: A device needs this many training rows with some finite reading.
MIN_ROWS = 3
#: A feature needs this many finite training values to be used by the model.
MIN_FEATURE_ROWS = 3
#: Retained components explain at least this share of the (robust) correlation's trace.
EXPLAINED = 0.9
#: Reweighting of the correlation: rows beyond this chi-square quantile are left out, this many times.
TRIM_QUANTILE = 0.995
REWEIGHTS = 3
#: The scale: winsorised at these quantiles, divided by the winsorised sd of a standard normal.
WINSOR = 0.05
_WINSOR_SIGMA = 0.9114
_MAD_TO_SIGMA = 1.4826
#: Sokal's window for the integrated autocorrelation time: sum lags up to _SOKAL_C * tau.
_SOKAL_C = 5.0
#: Fitted tail shapes of ``v`` are kept in [MIN_SHAPE, MAX_SHAPE]: the nominal shape is 1 (``p`` uniform); a
#: shape read off two quantiles of a few hundred autocorrelated rows is noisy, so extrapolation neither
#: much heavier (a model that never alarms) nor lighter than Gaussian (one that alarms too often).
MIN_SHAPE, MAX_SHAPE = 0.8, 2.0
#: Cap on -log10 p (keeps the decision finite for absurd inputs).
MAX_DECADES = 1e300
#: Standardised features are clipped here: an absurd (even infinite) reading is far out, never NaN.
_MAX_Z = 1e150
#: Rows scored per vectorised block: about this many covariance entries gathered at once.
_BLOCK_ENTRIES = 1 << 21

_LN10 = math.log(10.0)
_LN2 = math.log(2.0)
_FLOAT_PER_SENSOR = ("center", "scale")
_FLOAT_PER_DEVICE = ("tail_center", "tail_scale", "tail_shape", "intercept")


def _bad(name: str, problem: str) -> ModelFormatError:
    return ModelFormatError(f"invalid device model array {name!r}: {problem}")


@dataclass(frozen=True, eq=False)
class DeviceParams:
    """Parameters of M device models over S sensors in all; construction validates (ModelFormatError)."""

    sensor_offsets: np.ndarray  # (M + 1,) int64: device m's sensors are [off[m], off[m + 1]), >= 1 each
    center: np.ndarray  # (S, F) float64, finite
    scale: np.ndarray  # (S, F) float64, finite, > 0 (the widened scale used for scoring)
    used: np.ndarray  # (S, F) bool: False = no training values, the feature is ignored
    cov: np.ndarray  # (sum_m (p_m F)^2,) float64: each device's correlation model, row-major, SPD
    n_components: np.ndarray  # (M,) int64: retained components k (informational)
    tail_center: np.ndarray  # (M,) float64 finite
    tail_scale: np.ndarray  # (M,) float64 finite > 0
    tail_shape: np.ndarray  # (M,) float64 finite > 0
    intercept: np.ndarray  # (M,) float64 finite
    tick_us: np.ndarray | None = None  # (M,) int64 > 0: width of a device-time (`fleetscore.core.devicegrid`)
    history: int = HISTORY  # device-times of history the features were built with

    def __post_init__(self) -> None:
        off = _int_array(self.sensor_offsets, "sensor_offsets")
        if off.ndim != 1 or off.size == 0 or off[0] != 0 or np.any(np.diff(off) < 1):
            raise _bad("sensor_offsets", "must be 1-D, start at 0 and increase (every device has >= 1 sensor)")
        object.__setattr__(self, "sensor_offsets", _frozen(off))
        m, s = off.size - 1, int(off[-1])
        for name in (*_FLOAT_PER_SENSOR, "cov", *_FLOAT_PER_DEVICE):
            a = np.asarray(getattr(self, name))
            if a.dtype.kind != "f":
                raise _bad(name, f"dtype {a.dtype} is not floating")
            a = _frozen(np.array(a, dtype=np.float64, order="C"))
            if not np.isfinite(a).all():
                raise _bad(name, "contains NaN or inf")
            object.__setattr__(self, name, a)
        used = np.asarray(self.used)
        if used.dtype != np.bool_:
            raise _bad("used", f"dtype {used.dtype} is not bool")
        object.__setattr__(self, "used", _frozen(np.array(used, order="C")))
        k = _int_array(self.n_components, "n_components")
        object.__setattr__(self, "n_components", _frozen(k))
        tick = _int_array(np.full(m, DEFAULT_TICK_US) if self.tick_us is None else self.tick_us, "tick_us")
        object.__setattr__(self, "tick_us", _frozen(tick))
        if tick.shape != (m,) or np.any(tick <= 0):
            raise _bad("tick_us", f"must be positive with shape ({m},), got shape {tick.shape}")
        for name in (*_FLOAT_PER_SENSOR, "used"):
            if getattr(self, name).shape != (s, N_FEATURES):
                raise _bad(name, f"shape {getattr(self, name).shape}, expected {(s, N_FEATURES)}")
        for name in (*_FLOAT_PER_DEVICE, "n_components"):
            if getattr(self, name).shape != (m,):
                raise _bad(name, f"shape {getattr(self, name).shape}, expected ({m},)")
        width = np.diff(off) * N_FEATURES
        if self.cov.shape != (int(np.sum(width * width)),):
            raise _bad("cov", f"shape {self.cov.shape}, expected ({int(np.sum(width * width))},) for these devices")
        if np.any(self.scale <= 0):
            raise _bad("scale", "must be > 0")
        if np.any(self.tail_scale <= 0) or np.any(self.tail_shape <= 0):
            raise _bad("tail_scale" if np.any(self.tail_scale <= 0) else "tail_shape", "must be > 0")
        if np.any(k < 0) or np.any(k > width):
            raise _bad("n_components", "must lie in [0, features of the device]")
        if isinstance(self.history, bool) or not isinstance(self.history, (int, np.integer)) or self.history < 0:
            raise _bad("history", f"must be an integer >= 0, got {self.history!r}")
        object.__setattr__(self, "history", int(self.history))
        for p in self.widths():
            blocks = self.group(np.flatnonzero(self.n_sensors == p))[3]
            if np.max(np.abs(blocks - np.swapaxes(blocks, 1, 2))) > 1e-9 * max(1.0, float(np.max(np.abs(blocks)))):
                raise _bad("cov", "a device's block is not symmetric")
            try:
                np.linalg.cholesky(blocks)
            except np.linalg.LinAlgError:
                raise _bad("cov", "a device's block is not positive definite") from None

    @property
    def n_models(self) -> int:
        return self.sensor_offsets.size - 1

    @property
    def n_sensors(self) -> np.ndarray:
        """Sensors of each device, shape (M,)."""
        return np.diff(self.sensor_offsets)

    @property
    def max_sensors(self) -> int:
        return int(self.n_sensors.max(initial=0))

    @property
    def cov_offsets(self) -> np.ndarray:
        """(M + 1,) offsets of each device's block in ``cov``."""
        width = self.n_sensors * N_FEATURES
        return np.concatenate([[0], np.cumsum(width * width)]).astype(np.int64)

    def covariance(self, m: int) -> np.ndarray:
        """Device m's correlation model (p_m F, p_m F)."""
        off = self.cov_offsets
        q = int(self.n_sensors[m]) * N_FEATURES
        return self.cov[off[m]:off[m + 1]].reshape(q, q)

    def group(self, devices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """center, scale, used (D, p F) and correlation blocks (D, p F, p F) of devices with p sensors each."""
        devices = np.asarray(devices, dtype=np.int64)
        p = int(self.n_sensors[devices[0]]) if devices.size else 0
        rows = (self.sensor_offsets[devices][:, None] + np.arange(p)).ravel()
        q = p * N_FEATURES
        cells = (self.cov_offsets[devices][:, None] + np.arange(q * q)).ravel()
        return (self.center[rows].reshape(-1, q), self.scale[rows].reshape(-1, q), self.used[rows].reshape(-1, q),
                self.cov[cells].reshape(-1, q, q))

    def widths(self) -> np.ndarray:
        """The distinct sensor counts of the devices (one vectorised pass per width when scoring)."""
        return np.unique(self.n_sensors)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numeric arrays (no objects: loads with allow_pickle=False); inverse of `from_arrays`."""
        arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64),
                  "history": np.array(self.history, dtype=np.int64)}
        return arrays | {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> DeviceParams:
        """Validate arrays written by `to_arrays`; ModelFormatError if missing, mistyped or inconsistent."""
        version = np.asarray(arrays.get("format_version"))
        if version.shape == () and version.dtype.kind in "iu" and int(version) == 1:
            raise ModelFormatError("device models of format 1 have no tick (the width of a device-time); retrain "
                                   "them with fleetscore train")
        missing = [k for k in ("format_version", "history", *_FIELDS) if k not in arrays]
        if missing:
            raise ModelFormatError(f"device model arrays missing: {', '.join(missing)}")
        if version.shape != () or version.dtype.kind not in "iu" or int(version) not in READABLE_FORMATS:
            raise _bad("format_version", f"got {version!r}, this version reads {READABLE_FORMATS}")
        history = np.asarray(arrays["history"])
        if history.shape != () or history.dtype.kind not in "iu":
            raise _bad("history", f"must be an integer scalar, got {history.dtype} {history.shape}")
        if int(history) != HISTORY:
            raise ModelFormatError(f"device models were built on {int(history)} device-times of history; this "
                                   f"fleetscore's device features use {HISTORY}: retrain them")
        return cls(**{k: np.asarray(arrays[k]) for k in _FIELDS}, history=int(history))

    def take(self, indices: Sequence[int] | np.ndarray) -> DeviceParams:
        """The devices at ``indices`` (in that order, repeats allowed) as a new shard."""
        idx = check_index(indices, self.n_models, "indices", "device models")
        counts = self.n_sensors[idx]
        rows = _ranges(self.sensor_offsets[idx], counts)
        width = self.n_sensors * N_FEATURES
        cov_off = np.concatenate([[0], np.cumsum(width * width)])
        cov_rows = _ranges(cov_off[idx], (width * width)[idx])
        fields = {k: getattr(self, k)[rows] for k in (*_FLOAT_PER_SENSOR, "used")}
        fields |= {k: getattr(self, k)[idx] for k in ("n_components", *_FLOAT_PER_DEVICE, "tick_us")}
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return DeviceParams(sensor_offsets=offsets, cov=self.cov[cov_rows], history=self.history, **fields)

    @classmethod
    def concat(cls, parts: Sequence[DeviceParams]) -> DeviceParams:
        """Stack shards into one, devices in order."""
        if not parts:
            raise InputError("concat needs at least one shard; use DeviceParams.empty()")
        histories = {p.history for p in parts}
        if len(histories) != 1:
            raise InputError(f"cannot concat device shards built on different histories {sorted(histories)}")
        counts = np.concatenate([p.n_sensors for p in parts])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        fields = {k: np.concatenate([getattr(p, k) for p in parts]) for k in _FIELDS[1:]}
        return cls(sensor_offsets=offsets, history=parts[0].history, **fields)

    @classmethod
    def empty(cls, n_features: int = N_FEATURES) -> DeviceParams:
        """A shard with no devices (``n_features`` per sensor, as other kinds' ``empty``: must be F)."""
        if n_features != N_FEATURES:
            raise InputError(f"device models have {N_FEATURES} features per sensor, not {n_features}")
        f = np.empty((0, N_FEATURES))
        z = np.empty(0)
        return cls(np.zeros(1, dtype=np.int64), f, f, np.empty((0, N_FEATURES), dtype=bool), z,
                   np.empty(0, dtype=np.int64), z, z, z, z, np.empty(0, dtype=np.int64))

    def with_intercept(self, intercept: np.ndarray) -> DeviceParams:
        """Same models with other intercepts (decision' = decision + intercept' - intercept)."""
        fields = {k: getattr(self, k) for k in _FIELDS if k != "intercept"}
        return DeviceParams(intercept=np.asarray(intercept, dtype=np.float64), history=self.history, **fields)

    def size(self) -> np.ndarray:
        """Scoring cost of each device per device-time, relative: its features squared."""
        return (self.n_sensors * N_FEATURES) ** 2


_FIELDS = ("sensor_offsets", *_FLOAT_PER_SENSOR, "used", "cov", "n_components", *_FLOAT_PER_DEVICE, "tick_us")


@dataclass(frozen=True, eq=False)
class DeviceScores:
    """Per device-time: decision (< 0 anomaly), severity in [0, 100], up to 3 sensors (-1: none)."""

    decision: np.ndarray  # (N,) float64
    severity: np.ndarray  # (N,) float64
    top_sensors: np.ndarray  # (N, TOP_SENSORS) int64: sensor index within its device, most contributing first

    @property
    def is_anomaly(self) -> np.ndarray:
        return self.decision < 0


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _int_array(a: object, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise _bad(name, f"dtype {a.dtype} is not integer")
    return np.array(a, dtype=np.int64, order="C")


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + count) for each pair."""
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if ends.size else 0
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - counts), counts) + np.arange(total)


# ---------------------------------------------------------------------------------------------- features

def device_features(values: np.ndarray, starts: Sequence[int] | np.ndarray = (0,)) -> np.ndarray:
    """Features (N, P, F) of device-times ``values`` (N, P): rows sorted by device, then time.

    ``starts``: the row where each device's run begins (ascending, first 0). NaN is a missing reading.
    A row's ``recent`` feature reads only the `HISTORY` rows before it in its run (rows before the run
    count as missing), so scoring a window with that much history before it gives the same features
    as scoring the whole span.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"device readings must be 2-D (device-times, sensors), got shape {x.shape}")
    n, p = x.shape
    out = np.empty((n, p, N_FEATURES))
    out[:, :, 0] = x  # an infinite reading stays: it is scored as far out
    x = np.where(np.isinf(x), np.nan, x)  # ... but left out of the recent level
    if n == 0:
        return out
    starts = np.asarray(starts, dtype=np.int64)
    if starts.ndim != 1 or starts.size == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= n:
        raise InputError("starts must be ascending row indices of the device runs, the first 0")
    run = np.repeat(np.arange(starts.size), np.diff(np.append(starts, n)))
    # each run gets WINDOW - 1 missing rows before it, so windows never reach into the previous run
    padded_idx = np.arange(n) + (run + 1) * (WINDOW - 1)
    padded = np.full((n + starts.size * (WINDOW - 1), p), np.nan)
    padded[padded_idx] = x
    block = max(1, (1 << 22) // max(1, p * WINDOW))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        first = padded_idx[lo] - (WINDOW - 1)
        view = sliding_window_view(padded[first:padded_idx[hi - 1] + 1], WINDOW, axis=0)  # (rows, P, W)
        view = view[padded_idx[lo:hi] - padded_idx[lo]]
        out[lo:hi, :, 1] = _trimmed_mean(view)
    return out


def _trimmed_mean(windows: np.ndarray) -> np.ndarray:
    """Mean of each window's finite values without the TRIM lowest and highest; NaN below MIN_RECENT."""
    width = windows.shape[-1]
    count = np.count_nonzero(~np.isnan(windows), axis=-1)
    out = np.full(count.shape, np.nan)
    full = count == width
    if full.any():  # the common case: a partial sort finds the extremes
        w = windows[full]
        if TRIM:
            w = np.partition(w, (TRIM - 1, width - TRIM), axis=-1)
        out[full] = w[:, TRIM:width - TRIM].mean(axis=-1)
    gappy = (count >= MIN_RECENT) & ~full
    if gappy.any():
        s = np.sort(windows[gappy], axis=-1)  # NaN sorts last
        c = count[gappy]
        csum = np.cumsum(np.nan_to_num(s, nan=0.0), axis=-1)
        total = np.take_along_axis(csum, (c - TRIM - 1)[:, None], axis=-1)[:, 0]
        if TRIM:
            total = total - csum[:, TRIM - 1]
        out[gappy] = total / (c - 2 * TRIM)
    return out


# ------------------------------------------------------------------------------------------- statistics

def _scale(col: np.ndarray) -> tuple[float, float]:
    """(median, spread): the larger of MAD and the WINSOR-winsorised sd, both as a normal sigma; 0 if constant."""
    center = float(np.median(col))
    mad = float(np.median(np.abs(col - center))) * _MAD_TO_SIGMA
    lo, hi = np.quantile(col, (WINSOR, 1.0 - WINSOR))
    wsd = float(np.std(np.clip(col, lo, hi))) / _WINSOR_SIGMA
    spread = max(mad, wsd)
    if spread <= 1e-12 * max(1.0, abs(center)):
        spread = 0.0
    return center, spread


def autocorrelation_time(x: np.ndarray) -> float:
    """Integrated autocorrelation time of a series (Sokal's adaptive window), >= 1; 1 with < 4 values."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 4:
        return 1.0
    x = x - x.mean()
    var = float(x @ x)
    if var <= 0:
        return 1.0
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n] / var
    taus = 1.0 + 2.0 * np.cumsum(acf[1:])
    lags = np.arange(1, n)
    ok = np.flatnonzero(lags >= _SOKAL_C * taus)
    tau = taus[ok[0]] if ok.size else taus[-1]
    return float(min(max(tau, 1.0), n))


def t_quantile(tail: float, dof: float) -> float:
    """Upper quantile t of Student's t with ``dof`` degrees of freedom, P(T > t) = ``tail``.

    Hill's approximation (CACM Algorithm 396), within 1e-4 relative of the exact quantile; exact for 1
    and 2 degrees of freedom.
    """
    p = 2.0 * tail
    n = float(dof)
    if n <= 1.0:
        return math.cos(p * math.pi / 2.0) / math.sin(p * math.pi / 2.0)
    if n <= 2.0:
        return math.sqrt(2.0 / (p * (2.0 - p)) - 2.0)
    a = 1.0 / (n - 0.5)
    b = 48.0 / (a * a)
    c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36
    d = ((94.5 / (b + c) - 3.0) / b + 1.0) * math.sqrt(a * math.pi / 2.0) * n
    x = d * p
    y = x ** (2.0 / n)
    if y > 0.05 + a:
        x = NormalDist().inv_cdf(1.0 - p / 2.0)
        y = x * x
        if n < 5:
            c += 0.3 * (n - 4.5) * (x + 0.6)
        c = (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b + c
        y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x
        y = math.expm1(a * y * y)
    else:
        y = ((1.0 / (((n + 6.0) / (n * y) - 0.089 * d - 0.822) * (n + 2.0) * 3.0) + 0.5 / (n + 4.0)) * y - 1.0) \
            * (n + 1.0) / (n + 2.0) + 1.0 / y
    return math.sqrt(n * y)


def widening(n_eff: float, tail: float) -> float:
    """Scale factor for a sensor seen ``n_eff`` independent times in training, at tail probability ``tail``."""
    n_eff = max(1.0, float(n_eff))
    dof = max(1.0, math.floor(n_eff - 1.0))
    return t_quantile(tail, dof) / NormalDist().inv_cdf(1.0 - tail) * math.sqrt(1.0 + 1.0 / n_eff)


def _chi2_quantile(df: float, prob: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile."""
    a = 2.0 / (9.0 * df)
    return df * max(0.0, 1.0 - a + NormalDist().inv_cdf(prob) * math.sqrt(a)) ** 3


def wilson_hilferty(d2: np.ndarray, df: np.ndarray) -> np.ndarray:
    """``d2`` on one scale whatever ``df``: about N(0, 1) when ``d2`` is chi-square with ``df`` degrees of freedom."""
    df = np.maximum(np.asarray(df, dtype=np.float64), 1.0)
    a = 2.0 / (9.0 * df)
    z: np.ndarray = (np.cbrt(np.maximum(d2, 0.0) / df) - (1.0 - a)) / np.sqrt(a)
    return z


def _weibull_tail(v: np.ndarray) -> tuple[float, float, float] | None:
    """(center, scale, shape) through the `TAIL_BODY` quantiles, or None when the body is degenerate."""
    center = float(np.median(v))
    x1, x2 = (float(q) - center for q in np.quantile(v, TAIL_BODY))
    if not 0 < x1 < x2:
        return None
    s1, s2 = 2.0 * (1.0 - TAIL_BODY[0]), 2.0 * (1.0 - TAIL_BODY[1])
    shape = (math.log(-math.log(s2)) - math.log(-math.log(s1))) / math.log(x2 / x1)
    shape = min(max(shape, MIN_SHAPE), MAX_SHAPE)
    return center, x2 / (-math.log(s2)) ** (1.0 / shape), shape


def fit_tail(v: np.ndarray) -> tuple[float, float, float]:
    """(center, scale, shape) of the tail model P(V > v) of the training rows' decades ``v``.

    Above the median ``c``: ``P(V > v) = exp(-((v - c) / scale) ** shape) / 2`` (below it, mirrored),
    through the `TAIL_BODY` quantiles as `fleetscore.core.calibrate.tail_threshold` fits its tail,
    the shape kept in [MIN_SHAPE, MAX_SHAPE]. Anomalies in the training rows (a device's rows hold
    those of all its sensors: 1% per sensor is 8% of an 8-sensor device's rows) can only make the fitted
    tail heavier: the model then alarms less, never more. With fewer than
    `MIN_TAIL_ROWS` rows (or a degenerate body): the nominal tail (``p`` uniform: ``v`` exponential,
    scale 1 / ln 10) widened by (1 + 2 / sqrt(n)).
    """
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    fit = _weibull_tail(v) if v.size >= MIN_TAIL_ROWS else None
    if fit is not None:
        return fit
    center = max(float(np.median(v)) if v.size else 0.0, math.log10(2.0))
    return center, (1.0 + 2.0 / math.sqrt(max(v.size, 1))) / _LN10, 1.0


def tail_decades(u: np.ndarray, center: np.ndarray, scale: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """-log10 P(U > u) under the tail model (`fit_tail`), computed in logs (no underflow), >= 0."""
    x = (np.asarray(u, dtype=np.float64) - center) / scale
    with np.errstate(over="ignore", invalid="ignore"):
        above = (np.power(np.maximum(x, 0.0), shape) + _LN2) / _LN10
        below = -np.log1p(-0.5 * np.exp(-np.power(np.maximum(-x, 0.0), shape))) / _LN10
    out = np.where(x >= 0, above, below)
    return np.minimum(np.where(np.isnan(out), 0.0, out), MAX_DECADES)


# ------------------------------------------------------------------------------------------------ fitting

def _correlation(z: np.ndarray) -> tuple[np.ndarray, int]:
    """Robust PPCA correlation model (q, q) of standardised rows ``z`` (NaN = missing), and its k."""
    n, q = z.shape
    zf = np.where(np.isfinite(z), z, 0.0)
    keep = np.ones(n, dtype=bool)
    cut = _chi2_quantile(q, TRIM_QUANTILE) / _chi2_quantile(q, 0.5)
    for step in range(REWEIGHTS + 1):
        rows = zf[keep]
        cov = rows.T @ rows / max(rows.shape[0], 1)
        sd = np.sqrt(np.diag(cov))
        ok = sd > 1e-12
        corr = np.eye(q)
        corr[np.ix_(ok, ok)] = cov[np.ix_(ok, ok)] / np.outer(sd[ok], sd[ok])
        corr = (rows.shape[0] * corr + q * np.eye(q)) / (rows.shape[0] + q)  # shrink: q pseudo-rows of independence
        lam, vec = np.linalg.eigh(corr)
        lam, vec = lam[::-1], vec[:, ::-1]
        k = 0 if q == 1 else min(q - 1, int(np.searchsorted(np.cumsum(lam) / lam.sum(), EXPLAINED) + 1))
        noise = max(float(lam[k:].mean()), 1e-6)
        v = vec[:, :k]
        model = (v * lam[:k]) @ v.T + noise * (np.eye(q) - v @ v.T)
        model = (model + model.T) / 2.0
        if step == REWEIGHTS:
            return model, k
        d2 = np.einsum("ij,jk,ik->i", zf, np.linalg.inv(model), zf)
        median = float(np.median(d2[keep]))
        new = d2 <= cut * median if median > 0 else keep
        if new.sum() < max(MIN_ROWS, q + 1) or np.array_equal(new, keep):
            return model, k
        keep = new
    raise AssertionError("unreachable")


def _split_basis(split: np.ndarray) -> np.ndarray:
    """(q, q) block-diagonal map from model features y to the scored ones x = (level, recent) per sensor.

    A split sensor is modelled as y = (recent, level - recent): x = [[1, 1], [1, 0]] y; the others as
    y = x (identity).
    """
    p = split.size
    basis = np.zeros((p * N_FEATURES, p * N_FEATURES))
    for s_, on in enumerate(split):
        block = np.array([[1.0, 1.0], [1.0, 0.0]]) if on else np.eye(N_FEATURES)
        basis[s_ * N_FEATURES:(s_ + 1) * N_FEATURES, s_ * N_FEATURES:(s_ + 1) * N_FEATURES] = block
    return basis


def _in_readings(basis: np.ndarray, center: np.ndarray, scale: np.ndarray, corr: np.ndarray,
                 used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center, scale, correlation) of x = basis @ y where y = center + scale * w, w ~ corr; unused x: identity."""
    cov = basis @ (corr * np.outer(scale, scale)) @ basis.T
    sd = np.sqrt(np.diag(cov))
    out = cov / np.outer(sd, sd)
    out[~used] = 0.0
    out[:, ~used] = 0.0
    out[np.diag_indices_from(out)] = 1.0
    return basis @ center, np.where(used, sd, 1.0), (out + out.T) / 2.0


def fit_one(values: np.ndarray, alarm_rate: float = DEFAULT_ALARM_RATE, tick_us: int = DEFAULT_TICK_US) -> DeviceParams:
    """Fit one device model on ``values`` (T, p): its device-times in time order, NaN = missing reading.

    ``tick_us``: the width of the device's device-times (stored with the model, `fleetscore.core.devicegrid`).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"device training data must be 2-D (device-times, sensors >= 1), got shape {x.shape}")
    if not 0 < alarm_rate < 0.5:
        raise InputError(f"alarm_rate must be in (0, 0.5), got {alarm_rate!r}")
    x = np.where(np.isinf(x), np.nan, x)  # an absurd training reading is left out, like a missing one
    usable = int(np.count_nonzero(np.isfinite(x).any(axis=1)))
    if usable < MIN_ROWS:
        raise InputError(f"device training data has {usable} usable row(s); a device model needs at least {MIN_ROWS}")
    t, p = x.shape
    q = p * N_FEATURES
    feats = device_features(x)
    level, recent = feats[..., 0], feats[..., 1]
    # sensors with a recent level are modelled as (recent level, departure from it): a slow component
    # and a fast one, each widened by its own effective sample size
    split = (np.count_nonzero(np.isfinite(level - recent), axis=0) >= MIN_FEATURE_ROWS) & SPLIT
    y = np.stack([np.where(split, recent, level), np.where(split, level - recent, recent)], axis=-1).reshape(t, q)

    center, spread = np.zeros(q), np.zeros(q)
    used = np.zeros(q, dtype=bool)
    for j in range(q):
        col = y[:, j][np.isfinite(y[:, j])]
        if col.size >= MIN_FEATURE_ROWS:
            used[j] = True
            center[j], spread[j] = _scale(col)
    if not used.any():
        raise InputError("no sensor of the device has enough finite training readings")
    constant = used & (spread == 0)
    modelled = used & ~constant
    scale = np.where(modelled, spread, np.where(used, np.maximum(np.abs(center) * 1e-9, 1e-12), 1.0))
    corr = np.eye(q)
    k = 0
    if modelled.any():
        block, k = _correlation((y[:, modelled] - center[modelled]) / scale[modelled])
        corr[np.ix_(modelled, modelled)] = block
    basis = _split_basis(split)
    x_used = used.copy()
    x_used.reshape(p, N_FEATURES)[split] = True  # both readings' features exist where the sensor is split

    def build(y_scale: np.ndarray, tail: tuple[float, float, float], intercept: float) -> DeviceParams:
        cx, sx, rx = _in_readings(basis, center, y_scale, corr, x_used)
        return DeviceParams(np.array([0, p]), cx.reshape(p, N_FEATURES), sx.reshape(p, N_FEATURES),
                            x_used.reshape(p, N_FEATURES), rx.ravel(), np.array([k]),
                            np.array([tail[0]]), np.array([tail[1]]), np.array([tail[2]]), np.array([intercept]),
                            np.array([tick_us], dtype=np.int64))

    v = _measure(build(scale, (0.0, 1.0, 2.0), 0.0), np.zeros(t, dtype=np.int64), feats)[0]
    tail = fit_tail(v)

    # widen each non-constant feature's scale by what its effective training sample cannot show:
    # a (recent) level by the level's autocorrelation, a departure from the recent level by its own
    sensors_used = max(1, int(np.count_nonzero(used.reshape(p, N_FEATURES).any(axis=1))))
    share = alarm_rate / (2.0 * sensors_used)
    factor = np.ones(q)
    for j in np.flatnonzero(modelled).tolist():
        sensor, slot = divmod(j, N_FEATURES)
        series = y[:, j] if split[sensor] and slot == 1 else x[:, sensor]
        series = series[np.isfinite(series)]
        factor[j] = widening(series.size / autocorrelation_time(series), share)
    return build(scale * factor, tail, -math.log10(alarm_rate))


def fit_many(groups: Sequence[np.ndarray], alarm_rate: float = DEFAULT_ALARM_RATE,
             ticks_us: Sequence[int] | None = None) -> tuple[DeviceParams, np.ndarray, dict[int, str]]:
    """Fit one model per device matrix: (params of the fitted ones, their group indices, group -> failure reason).

    ``ticks_us[i]``: the tick of device i (default: `DEFAULT_TICK_US`).
    """
    parts: list[DeviceParams] = []
    fitted: list[int] = []
    failures: dict[int, str] = {}
    for i, x in enumerate(groups):
        try:
            parts.append(fit_one(x, alarm_rate, DEFAULT_TICK_US if ticks_us is None else int(ticks_us[i])))
        except FleetscoreError as exc:
            failures[i] = str(exc)
            continue
        fitted.append(i)
    params = DeviceParams.concat(parts) if parts else DeviceParams.empty()
    return params, np.array(fitted, dtype=np.int64), failures


# ---------------------------------------------------------------------------------------- co-movement

@dataclass(frozen=True)
class CoMovement:
    """How much a device's sensors move together in its training data (`co_movement`)."""

    log10_p: float  # Bartlett's test of independence of the sensors' changes: log10 of its p-value
    r2: float  # mean adjusted R² of one sensor's changes explained by the others' changes
    sensors: int  # sensors that change at all
    rows: int  # device-times with a change of every such sensor

    @property
    def together(self) -> bool:
        """Significant, large enough to matter, on enough rows: what ``auto`` picks the device kind on."""
        return (self.sensors >= 2 and self.rows >= COMOVE_MIN_ROWS and self.log10_p <= COMOVE_LOG10_P
                and self.r2 >= COMOVE_R2)


#: ``auto`` picks the device kind where the sensors' changes are dependent beyond doubt (p < 1e-5; SKAB's
#: pump experiments give 2e-6 to 1e-52 on 400 rows; of 2,000 simulated devices of independent sensors
#: with 1% anomalies the most dependent-looking give 2e-5 on 200 rows, but 1e-8 on a day of minute
#: readings: shared anomalies are dependence too, though a small one) ...
COMOVE_LOG10_P = -5.0
#: ... and predict each other enough to matter: on average this share of a sensor's changes is explained
#: by the other sensors' (adjusted R²; SKAB's pump: 0.03 to 0.17; those simulated devices: 0.011 at most) ...
COMOVE_R2 = 0.02
#: ... on at least this many complete device-times (fewer are too little evidence: the sensors are taken
#: as independent; a few hundred chance correlations are neither significant nor large).
COMOVE_MIN_ROWS = 200


def _ranks(col: np.ndarray) -> np.ndarray:
    """Ranks of ``col`` (ties share their mean rank)."""
    order = np.argsort(col, kind="stable")
    s = col[order]
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    group = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    last = np.append(first[1:], s.size) - 1
    out = np.empty(s.size)
    out[order] = ((first + last) / 2.0)[group]
    return out


def co_movement(values: np.ndarray) -> CoMovement:
    """Whether a device's sensors move together, from its training device-times ``values`` (T, p), label-free.

    The device kind pays off where a fault shows as a departure from how the sensors move together;
    a shared slow cycle (the time of day) is no such structure, so the test looks at the sensors'
    *changes* from one device-time to the next. On their rank correlation (robust to heavy tails and
    spikes) it computes Bartlett's test of sphericity with the effective sample size of the changes
    (their autocorrelation time, `autocorrelation_time`), and the mean adjusted R² of each sensor's
    changes regressed on the others'. Sensors that never change are left out; device-times missing a
    change of some sensor are skipped.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] < 2:
        return CoMovement(0.0, 0.0, int(x.shape[1]) if x.ndim == 2 else 0, 0)
    d = np.diff(np.where(np.isfinite(x), x, np.nan), axis=0)
    moving = np.array([np.nanstd(col) > 0 if np.isfinite(col).sum() > 1 else False for col in d.T])
    d = d[:, moving]
    d = d[np.isfinite(d).all(axis=1)]
    n, p = d.shape
    if p < 2 or n < max(COMOVE_MIN_ROWS // 4, p + 3):  # too few to say anything (together needs more still)
        return CoMovement(0.0, 0.0, p, n)
    ranks = np.stack([_ranks(col) for col in d.T], axis=1)
    corr = np.corrcoef(ranks, rowvar=False)
    corr = (n * corr + p * np.eye(p)) / (n + p)  # shrunk: always invertible
    tau = float(np.mean([autocorrelation_time(col) for col in d.T]))
    n_eff = max(n / tau, p + 2.0)
    df = p * (p - 1) / 2.0
    stat = -(n_eff - 1.0 - (2.0 * p + 5.0) / 6.0) * float(np.linalg.slogdet(corr)[1])
    r2 = 1.0 - 1.0 / np.diag(np.linalg.inv(corr))
    adjusted = 1.0 - (1.0 - r2) * (n_eff - 1.0) / max(n_eff - p, 1.0)
    log10_p = float(chi2_log10_sf(np.array([max(stat, 0.0)]), np.array([df]))[0])
    return CoMovement(log10_p, float(np.mean(adjusted)), p, n)


# ------------------------------------------------------------------------------------------------ scoring

def _features_3d(params: DeviceParams, X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 2 and X.shape[1] % N_FEATURES == 0:
        X = X.reshape(X.shape[0], -1, N_FEATURES)
    if X.ndim != 3 or X.shape[2] != N_FEATURES:
        raise InputError(f"device features must have shape (rows, sensors, {N_FEATURES}), got {X.shape}")
    need = int(params.n_sensors[idx].max(initial=0))
    if X.shape[1] < need:
        raise InputError(f"device features have {X.shape[1]} sensor column(s); the scored devices have up to {need}")
    return X


def _check_rows(params: DeviceParams, model_idx: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(model_idx)
    n = np.shape(X)[0] if np.ndim(X) else -1
    if idx.shape != (n,):
        raise InputError(f"model_idx must have shape ({n},), got {idx.shape}")
    idx = check_index(idx, params.n_models, "model_idx", "device models")
    return idx, _features_3d(params, X, idx)


def _measure(params: DeviceParams, idx: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, contributions) of every row: one vectorised pass per sensor count.

    ``v`` is -log10 of the nominal tail probability of the row (`combined_decades`; NaN where nothing
    is observed); contributions (N, P) the reconstruction-based contribution of each sensor (-inf
    past a device's sensors or where the sensor has nothing observed).
    """
    n = X.shape[0]
    v = np.full(n, np.nan)
    widths = params.n_sensors[idx]
    contrib = np.full((n, int(widths.max(initial=0))), -np.inf)
    local = np.zeros(params.n_models, dtype=np.int64)
    for width in np.unique(widths):
        p = int(width)
        rows = np.flatnonzero(widths == p)
        devices = np.flatnonzero(params.n_sensors == p)
        local[devices] = np.arange(devices.size)
        center, scale, used, cov = params.group(devices)
        prec = np.linalg.inv(cov)
        q = p * N_FEATURES
        eye = np.eye(q, dtype=bool)
        block = max(1, _BLOCK_ENTRIES // (q * q))
        for lo in range(0, rows.size, block):
            r = rows[lo:lo + block]
            d = local[idx[r]]
            with np.errstate(invalid="ignore", over="ignore"):
                z = np.clip((X[r, :p].reshape(r.size, q) - center[d]) / scale[d], -_MAX_Z, _MAX_Z)
            seen = ~np.isnan(z) & used[d]
            z = np.where(seen, z, 0.0)
            pr = prec[d]  # every used feature observed: the device's precision
            part = np.flatnonzero((seen != used[d]).any(axis=1))
            if part.size:  # some missing: the marginal of the observed features (identity elsewhere)
                hide = ~seen[part]
                pr[part] = np.linalg.inv(np.where(hide[:, :, None] | hide[:, None, :], eye, cov[d[part]]))
            g = np.einsum("nij,nj->ni", pr, z)
            d2 = np.minimum(np.einsum("ni,ni->n", z, g), 1e300)
            rbc = _contributions(g, pr)
            sensor_df = seen.reshape(r.size, p, N_FEATURES).sum(axis=2)
            v[r] = combined_decades(d2, seen.sum(axis=1), rbc, sensor_df)
            contrib[r, :p] = np.where(sensor_df > 0, rbc, -np.inf)
    return v, contrib


def _contributions(g: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """Per sensor s: g_s' (P_ss)⁻¹ g_s, the drop of d² when s is reconstructed from the others (n, p).

    Under the model it is chi-square with the sensor's observed features as degrees of freedom (the
    squared distance of the sensor from its conditional expectation given the other sensors).
    """
    n, q = g.shape
    p = q // N_FEATURES
    gs = g.reshape(n, p, N_FEATURES)
    blocks = prec.reshape(n, p, N_FEATURES, p, N_FEATURES)
    s = np.arange(p)
    a, b, c = blocks[:, s, 0, s, 0], blocks[:, s, 0, s, 1], blocks[:, s, 1, s, 1]  # (n, p) each
    g0, g1 = gs[..., 0], gs[..., 1]
    with np.errstate(over="ignore", invalid="ignore"):
        out = (c * g0 * g0 - 2.0 * b * g0 * g1 + a * g1 * g1) / (a * c - b * b)
    return np.minimum(np.where(np.isnan(out), np.inf, out), 1e300)


def _log_erfc(x: np.ndarray) -> np.ndarray:
    """log erfc(x) without underflow (Numerical Recipes' erfcc: relative error < 1.2e-7 everywhere)."""
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * ax)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    log_pos = np.log(t) - ax * ax + poly  # log erfc(|x|)
    out: np.ndarray = np.where(x >= 0, log_pos, np.log(2.0 - np.exp(log_pos)))
    return out


def chi2_log10_sf(x: np.ndarray, df: np.ndarray) -> np.ndarray:
    """log10 P(chi2_df > x): exact for 1 and 2 degrees of freedom, Wilson-Hilferty otherwise."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    df = np.asarray(df)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        one = _log_erfc(np.sqrt(x / 2.0))
        two = -x / 2.0
        many = np.log(0.5) + _log_erfc(wilson_hilferty(x, df) / math.sqrt(2.0))
    return np.minimum(np.where(df == 1, one, np.where(df == 2, two, many)), 0.0) / _LN10


def combined_decades(d2: np.ndarray, df: np.ndarray, contrib: np.ndarray, sensor_df: np.ndarray) -> np.ndarray:
    """-log10 of the nominal tail probability of a device-time: the omnibus and the per-sensor tests.

    The omnibus ``d2`` (all observed features, ``df``) is the most powerful test against departures
    spread over the sensors; it dilutes a departure of one sensor among all the features, which the
    largest per-sensor contribution (chi-square with the sensor's observed features) does not. The
    row's probability is twice the smaller of the omnibus one and the per-sensor one times the
    sensors observed (Bonferroni); the model's own training rows then calibrate it (`fit_tail`).
    NaN where nothing is observed.
    """
    observed = sensor_df > 0
    per_sensor = np.where(observed, chi2_log10_sf(contrib, np.maximum(sensor_df, 1)), 0.0).min(axis=1, initial=0.0)
    per_sensor = per_sensor + np.log10(np.maximum(observed.sum(axis=1), 1))
    log10_p = math.log10(2.0) + np.minimum(chi2_log10_sf(d2, np.maximum(df, 1)), per_sensor)
    return np.where(np.asarray(df) > 0, np.minimum(-np.minimum(log10_p, 0.0), MAX_DECADES), np.nan)


def _decisions(params: DeviceParams, idx: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(decision, -log10 p, contributions) of every row."""
    v, contrib = _measure(params, idx, X)
    decades = tail_decades(v, params.tail_center[idx], params.tail_scale[idx], params.tail_shape[idx])
    return params.intercept[idx] - decades, decades, contrib


def score(params: DeviceParams, model_idx: np.ndarray, X: np.ndarray) -> DeviceScores:
    """Score device-time r (features ``X[r]``, (P, F) or flattened) with device model ``model_idx[r]``.

    ``X`` comes from `device_features` (P >= the scored devices' sensors; NaN = missing; columns
    beyond a device's sensors are ignored). Vectorised over all rows, whatever their devices: one
    pass per distinct sensor count, never one per device.
    """
    idx, X = _check_rows(params, model_idx, X)
    decision, decades, contrib = _decisions(params, idx, X)
    severity = severity_from_tail(np.power(10.0, -decades))
    top = np.full((X.shape[0], TOP_SENSORS), -1, dtype=np.int64)
    flagged = np.flatnonzero(decision < 0)
    if flagged.size:
        top[flagged] = _top_sensors(contrib[flagged])
    return DeviceScores(decision, severity, top)


def _top_sensors(contrib: np.ndarray) -> np.ndarray:
    """Up to TOP_SENSORS sensors with a positive contribution, most first; -1 fills."""
    n = contrib.shape[0]
    floor = 1e-12 * np.maximum(1.0, contrib.max(axis=1, keepdims=True, initial=0.0))
    contrib = np.where(contrib > floor, contrib, -np.inf)
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :TOP_SENSORS]
    out = np.where(np.isfinite(np.take_along_axis(contrib, order, axis=1)), order, -1)
    if out.shape[1] < TOP_SENSORS:
        out = np.hstack([out, np.full((n, TOP_SENSORS - out.shape[1]), -1, dtype=out.dtype)])
    return out


def decision_function(params: DeviceParams, model_idx: np.ndarray, X: np.ndarray,
                      phase: np.ndarray | None = None, kernel: str | None = None) -> np.ndarray:
    """Decisions only (the `fleetscore.core.kinds.ModelKind` signature; ``phase`` and ``kernel`` unused)."""
    idx, X = _check_rows(params, model_idx, X)
    return _decisions(params, idx, X)[0]
