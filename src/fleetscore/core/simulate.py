"""Deterministic IoT fleet simulator with labelled anomalies, for the demo, tests and benchmarks.

Every (device, sensor) pair gets a realistic signal: a per-sensor typical level and scale
(temperature ≈ 60, pressure ≈ 1013, vibration ≈ 0.5, rpm ≈ 1500, ...), a per-pair level offset,
a daily cycle with per-pair amplitude and phase, a slow random walk and Gaussian noise. On top of
that, non-overlapping anomalies of four kinds are injected and labelled: ``spike``, ``drift``,
``stuck`` and ``noise``.

Why it is built the way it is:

* **Determinism independent of chunking.** Random numbers are not drawn from a sequential
  generator but computed by a counter-based hash of (seed, stream, device index, sensor index,
  reading or slot index) (splitmix64 finaliser). A device's data therefore depends only on the
  seed and its own indices: the same for any ``devices_per_chunk``, any fleet size and any
  number of other sensors. That is the vectorised equivalent of one RNG per device, and it lets
  whole chunks be generated with numpy array operations (measured ≈ 15M rows/s on one core:
  1M series × 60 readings in about 4 s; bounded memory through :func:`iter_simulate`).
* **Non-overlapping anomalies.** Each series is cut into slots of ``_SLOT`` readings (with a
  random per-series phase); a slot holds at most one anomaly segment, so segments never overlap.
  The probability of a slot holding an anomaly is chosen so that the expected fraction of
  labelled readings equals ``anomaly_rate`` (also for the short slots at the series ends).

The module is pure: no I/O, no clock, no global state; arguments in, Arrow tables out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from numbers import Integral, Real

import numpy as np
import pyarrow as pa

from fleetscore.core.schema import MAX_TS_US, MIN_TS_US, READING_SCHEMA
from fleetscore.errors import InputError

#: Output schema of the simulator: the canonical readings plus the ground truth.
SIMULATION_SCHEMA = pa.schema(
    list(READING_SCHEMA)
    + [
        pa.field("label", pa.int8(), nullable=False),
        pa.field("anomaly_kind", pa.string(), nullable=False),
    ]
)

#: Upper bound on readings per (device, sensor) series, against accidental huge allocations.
MAX_READINGS_PER_SERIES = 10_000_000

#: ``anomaly_kind`` values; normal rows carry the empty string (never null).
ANOMALY_KINDS = ("spike", "drift", "stuck", "noise")
_KIND_TEXT = ("",) + ANOMALY_KINDS  # code 0 = normal, 1..4 = ANOMALY_KINDS

#: Sensor names in order; sensors past this list are named ``sensor-09``, ``sensor-10``, ...
SENSOR_NAMES = ("temperature", "vibration", "pressure", "humidity", "current", "voltage", "flow", "rpm")

# name: (typical level, spread of per-pair level offsets, noise sigma, largest daily amplitude)
_PROFILES: dict[str, tuple[float, float, float, float]] = {
    "temperature": (60.0, 5.0, 0.5, 4.0),
    "vibration": (0.5, 0.1, 0.02, 0.05),
    "pressure": (1013.0, 10.0, 1.0, 3.0),
    "humidity": (45.0, 8.0, 1.0, 10.0),
    "current": (12.0, 2.0, 0.2, 1.5),
    "voltage": (230.0, 3.0, 0.8, 2.0),
    "flow": (25.0, 5.0, 0.6, 3.0),
    "rpm": (1500.0, 50.0, 8.0, 40.0),
}
_GENERIC_PROFILE = (100.0, 10.0, 1.0, 5.0)

_SLOT = 12  # readings per anomaly slot (one segment at most per slot)
_SEG_MIN, _SEG_MAX = 4, 12  # length in readings of drift / stuck / noise segments
_WALK_KNOT_S = 3_600.0  # random-walk knots one per hour of simulated time
_WALK_STEP = 0.1  # random-walk step per knot, in noise sigmas
_DAY_S = 86_400.0
_BLOCK_VALUES = 1 << 17  # readings computed per numpy block (cache friendly)

# Independent random streams (one hash input each).
(
    _S_OFFSET,
    _S_SIGMA,
    _S_AMP,
    _S_PHASE,
    _S_SLOT_PHASE,
    _S_NOISE_A,
    _S_NOISE_B,
    _S_WALK_A,
    _S_WALK_B,
    _S_EVENT,
    _S_KIND,
    _S_LEN,
    _S_POS,
    _S_MAG,
    _S_SIGN,
    _S_OFFSET_B,
) = range(1, 17)

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def sensor_names(sensors: int) -> list[str]:
    """The first ``sensors`` sensor names the simulator uses."""
    return [SENSOR_NAMES[i] if i < len(SENSOR_NAMES) else f"sensor-{i + 1:02d}" for i in range(sensors)]


def device_name(index: int) -> str:
    """Device id for a 0-based index: ``dev-00001``, ``dev-00002``, ... (at least 5 digits)."""
    return f"dev-{index + 1:05d}"


def simulate_fleet(
    devices: int,
    sensors: int,
    start: datetime,
    hours: float,
    interval_s: float = 60.0,
    anomaly_rate: float = 0.01,
    seed: int = 0,
) -> pa.Table:
    """Readings of ``devices`` × ``sensors`` series every ``interval_s`` for ``hours``, with labels.

    Columns (see :data:`SIMULATION_SCHEMA`): ``ts`` (timestamp[us, UTC]), ``device``, ``sensor``,
    ``value`` (float64), ``label`` (int8, 1 inside an injected anomaly) and ``anomaly_kind``
    (``spike``/``drift``/``stuck``/``noise``, ``""`` for normal rows). Rows are ordered by device,
    sensor, time. Each series has ``floor(hours * 3600 / interval_s)`` readings at
    ``start + k * interval_s``; a naive ``start`` means UTC. Identical for identical arguments.
    """
    return pa.concat_tables(
        list(iter_simulate(devices, sensors, start, hours, interval_s, anomaly_rate, seed))
    )


def iter_simulate(
    devices: int,
    sensors: int,
    start: datetime,
    hours: float,
    interval_s: float = 60.0,
    anomaly_rate: float = 0.01,
    seed: int = 0,
    devices_per_chunk: int = 1000,
) -> Iterator[pa.Table]:
    """The rows of :func:`simulate_fleet`, one table per range of ``devices_per_chunk`` devices.

    Memory stays bounded by the chunk size, and the concatenated chunks equal
    :func:`simulate_fleet` with the same arguments whatever ``devices_per_chunk`` is.
    Arguments are validated when this is called, before the first chunk is produced.
    """
    _check_int("devices", devices, 1)
    _check_int("sensors", sensors, 1)
    _check_int("devices_per_chunk", devices_per_chunk, 1)
    _check_int("seed", seed, 0)
    hours = _check_real("hours", hours)
    interval_s = _check_real("interval_s", interval_s)
    anomaly_rate = _check_real("anomaly_rate", anomaly_rate)
    if hours <= 0:
        raise InputError(f"hours must be > 0, got {hours!r}")
    if interval_s < 1e-6:
        raise InputError(f"interval_s must be at least 1 microsecond (> 0), got {interval_s!r}")
    if not 0.0 <= anomaly_rate <= 0.5:
        raise InputError(f"anomaly_rate must be between 0 and 0.5, got {anomaly_rate!r}")
    if not isinstance(start, datetime):
        raise InputError(f"start must be a datetime, got {type(start).__name__}")
    per_series = hours * 3600.0 / interval_s + 1e-9
    if per_series > MAX_READINGS_PER_SERIES:
        raise InputError(
            f"hours / interval_s give {per_series:.4g} readings per series; at most "
            f"{MAX_READINGS_PER_SERIES:,} are supported (shorten hours or lengthen interval_s)"
        )
    n = int(math.floor(per_series))
    if n < 1:
        raise InputError(
            f"hours ({hours!r}) is shorter than one interval_s ({interval_s!r} s): no reading would be produced"
        )
    start_utc = start if start.tzinfo is not None else start.replace(tzinfo=UTC)
    delta = start_utc - datetime(1970, 1, 1, tzinfo=UTC)
    start_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    offsets_us = np.round(np.arange(n, dtype=np.float64) * (interval_s * 1e6)).astype(np.int64)
    if start_us < MIN_TS_US or start_us + int(offsets_us[-1]) >= MAX_TS_US:
        raise InputError(
            f"start ({start.isoformat()}) and hours ({hours!r}) put readings outside 1970..2200, "
            "where readings are rejected"
        )
    ts_us = start_us + offsets_us
    return _chunks(devices, sensors, ts_us, n, anomaly_rate, int(seed), int(devices_per_chunk))


def _chunks(
    devices: int,
    sensors: int,
    ts_us: np.ndarray,
    n: int,
    rate: float,
    seed: int,
    per_chunk: int,
) -> Iterator[pa.Table]:
    names = sensor_names(sensors)
    sensor_arr = pa.array(names, type=pa.string())
    profiles = np.array([_PROFILES.get(name, _GENERIC_PROFILE) for name in names], dtype=np.float64)
    kind_arr = pa.array(_KIND_TEXT, type=pa.string())
    # seconds since the start (for the random walk) and time of day (for the daily cycle)
    t_s = (ts_us - ts_us[0]).astype(np.float64) / 1e6
    tod = np.mod(ts_us, 86_400_000_000).astype(np.float64) / 1e6
    for lo in range(0, devices, per_chunk):
        hi = min(devices, lo + per_chunk)
        yield _chunk(lo, hi, sensors, ts_us, t_s, tod, n, rate, seed, profiles, sensor_arr, kind_arr)


def _chunk(
    lo: int,
    hi: int,
    sensors: int,
    ts_us: np.ndarray,
    t_s: np.ndarray,
    tod: np.ndarray,
    n: int,
    rate: float,
    seed: int,
    profiles: np.ndarray,
    sensor_arr: pa.Array,
    kind_arr: pa.Array,
) -> pa.Table:
    nd = hi - lo
    pairs = nd * sensors
    # numbers are computed in cache-sized blocks of devices (the result does not depend on it)
    step = max(1, _BLOCK_VALUES // (sensors * n))
    parts = [
        _series(b, min(hi, b + step), sensors, t_s, tod, n, rate, seed, profiles)
        for b in range(lo, hi, step)
    ]
    values = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    kind = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])

    kind_flat = kind.ravel()
    dev_names = pa.array([device_name(i) for i in range(lo, hi)], type=pa.string())
    row_dev = np.repeat(np.arange(nd, dtype=np.int32), sensors * n)
    row_sen = np.tile(np.repeat(np.arange(sensors, dtype=np.int32), n), nd)
    return pa.Table.from_arrays(
        [
            pa.array(np.tile(ts_us, pairs), type=pa.int64()).cast(SIMULATION_SCHEMA.field("ts").type),
            dev_names.take(pa.array(row_dev)),
            sensor_arr.take(pa.array(row_sen)),
            pa.array(values.ravel(), type=pa.float64()),
            pa.array((kind_flat > 0).astype(np.int8), type=pa.int8()),
            kind_arr.take(pa.array(kind_flat)),
        ],
        schema=SIMULATION_SCHEMA,
    )


def _series(
    lo: int,
    hi: int,
    sensors: int,
    t_s: np.ndarray,
    tod: np.ndarray,
    n: int,
    rate: float,
    seed: int,
    profiles: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Values and anomaly kind codes, both (pairs, n), of devices [lo, hi) × all sensors."""
    nd = hi - lo
    pairs = nd * sensors
    dev_idx = np.repeat(np.arange(lo, hi, dtype=np.uint64), sensors)
    sen_idx = np.tile(np.arange(sensors, dtype=np.uint64), nd)
    prof = profiles[sen_idx.astype(np.intp)]  # (pairs, 4)
    level, spread, noise, amp_max = prof[:, 0], prof[:, 1], prof[:, 2], prof[:, 3]

    keys = _pair_keys(seed, dev_idx, sen_idx)  # (pairs,) uint64, one per series

    # per-series parameters
    offset = _normal(keys, _S_OFFSET, _S_OFFSET_B) * spread
    sigma = noise * (0.7 + 0.6 * _uniform(_mix(keys ^ _stream(_S_SIGMA))))
    amp = amp_max * _uniform(_mix(keys ^ _stream(_S_AMP))) ** 2  # many near zero
    phase = 2.0 * np.pi * _uniform(_mix(keys ^ _stream(_S_PHASE)))

    col = np.arange(n, dtype=np.uint64)
    grid = (keys[:, None] + col[None, :] * np.uint64(_GOLDEN)).ravel()  # (pairs * n,)
    z = _normal(grid, _S_NOISE_A, _S_NOISE_B).reshape(pairs, n)

    values = (level + offset)[:, None] + amp[:, None] * np.sin(
        (2.0 * np.pi / _DAY_S) * tod[None, :] + phase[:, None]
    )
    values += _walk(keys, sigma, t_s)
    clean = values.copy()  # signal without noise: stuck segments freeze on it
    values += sigma[:, None] * z

    if rate > 0.0:
        kind = _inject(keys, values, clean, z, sigma, n, rate)
    else:
        kind = np.zeros((pairs, n), dtype=np.int8)
    return values, kind


def _walk(keys: np.ndarray, sigma: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """Slow random walk: Gaussian steps at hourly knots, linearly interpolated, starting at 0."""
    knots = int(t_s[-1] // _WALK_KNOT_S) + 2
    kcol = np.arange(knots, dtype=np.uint64)
    steps = _normal((keys[:, None] + kcol[None, :] * np.uint64(_GOLDEN)).ravel(), _S_WALK_A, _S_WALK_B)
    steps = steps.reshape(len(keys), knots)
    steps[:, 0] = 0.0
    path = np.cumsum(steps, axis=1) * (_WALK_STEP * sigma)[:, None]
    pos = t_s / _WALK_KNOT_S
    i = np.floor(pos).astype(np.intp)
    f = pos - i
    return path[:, i] * (1.0 - f) + path[:, i + 1] * f


def _inject(
    keys: np.ndarray,
    values: np.ndarray,
    clean: np.ndarray,
    z: np.ndarray,
    sigma: np.ndarray,
    n: int,
    rate: float,
) -> np.ndarray:
    """Add anomaly segments to ``values`` in place; return the kind code per reading (0 = normal)."""
    pairs = len(keys)
    code = np.zeros((pairs, n), dtype=np.int8)
    # slot grid shifted by a per-series phase so slot edges do not line up across series
    shift = (_uniform(_mix(keys ^ _stream(_S_SLOT_PHASE))) * _SLOT).astype(np.int64)  # 0.._SLOT-1
    n_slots = (n + _SLOT - 1) // _SLOT + 1
    j = np.arange(n_slots, dtype=np.int64)
    slot_lo = np.clip(j[None, :] * _SLOT - shift[:, None], 0, n)
    r = np.clip((j[None, :] + 1) * _SLOT - shift[:, None], 0, n) - slot_lo  # 0 outside the series
    slot_key = keys[:, None] + j.astype(np.uint64)[None, :] * np.uint64(_GOLDEN)

    # expected labelled readings of an event in a slot of size r, so that P(event) gives the rate
    seg_max = np.minimum(r, _SEG_MAX)
    mean_len = np.where(r >= _SEG_MIN, 0.25 + 0.75 * (_SEG_MIN + seg_max) / 2.0, 1.0)
    p_event = np.minimum(1.0, rate * r / mean_len)
    event = (_uniform(_mix(slot_key ^ _stream(_S_EVENT))) < p_event) & (r > 0)

    # from here on only the (sparse) events are touched
    ev_p, ev_j = np.nonzero(event)
    if len(ev_p) == 0:
        return code
    ek = slot_key[ev_p, ev_j]
    er, elo, emax = r[ev_p, ev_j], slot_lo[ev_p, ev_j], seg_max[ev_p, ev_j]

    def u(stream: int) -> np.ndarray:
        return _uniform(_mix(ek ^ _stream(stream)))

    # kind code 1..4: spike always possible; drift/stuck/noise only when the slot is long enough
    kind = np.where(er >= _SEG_MIN, 1 + np.minimum((u(_S_KIND) * 4).astype(np.int64), 3), 1)
    span = np.maximum(emax - _SEG_MIN + 1, 1)
    length = np.where(kind == 1, 1, _SEG_MIN + np.minimum((u(_S_LEN) * span).astype(np.int64), span - 1))
    room = np.maximum(er - length + 1, 1)
    seg_lo = elo + np.minimum((u(_S_POS) * room).astype(np.int64), room - 1)
    mag = u(_S_MAG)
    sign = np.where(u(_S_SIGN) < 0.5, -1.0, 1.0)

    # expand events to readings: event index, position inside the segment, (row, column)
    rep = np.repeat(np.arange(len(ev_p)), length)
    pos = np.arange(len(rep)) - np.repeat(np.cumsum(length) - length, length)
    rows, cols = ev_p[rep], seg_lo[rep] + pos
    k_kind, k_mag, k_sign, k_sig = kind[rep], mag[rep], sign[rep], sigma[rows]
    code[rows, cols] = k_kind

    m = k_kind == 1  # spike: one reading 6..10 sigmas off
    values[rows[m], cols[m]] += (k_sign * (6.0 + 4.0 * k_mag) * k_sig)[m]
    m = k_kind == 2  # drift: linear ramp reaching 4..8 sigmas at the segment's last reading
    values[rows[m], cols[m]] += (k_sign * (4.0 + 4.0 * k_mag) * k_sig * (pos + 1) / length[rep])[m]
    m = k_kind == 3  # stuck: frozen at the noise-free signal just before the segment
    values[rows[m], cols[m]] = clean[rows[m], np.maximum(seg_lo[rep] - 1, 0)[m]]
    m = k_kind == 4  # noise burst: noise sigma multiplied by 5..10
    values[rows[m], cols[m]] += ((4.0 + 5.0 * k_mag) * k_sig * z[rows, cols])[m]
    return code


# ---- counter-based random numbers (splitmix64 finaliser) -------------------------------------


def _stream(stream: int) -> np.uint64:
    return np.uint64((stream * _GOLDEN) & _M64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective 64-bit mixer with good avalanche, vectorised."""
    with np.errstate(over="ignore"):
        z = x ^ (x >> np.uint64(30))
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    mixed: np.ndarray = z
    return mixed


def _pair_keys(seed: int, dev_idx: np.ndarray, sen_idx: np.ndarray) -> np.ndarray:
    """One 64-bit key per (seed, device index, sensor index), independent of the chunking."""
    s = np.uint64(_scalar_mix((seed * _GOLDEN + 0x632BE59BD9B4E019) & _M64))
    with np.errstate(over="ignore"):
        d = _mix(dev_idx * np.uint64(_GOLDEN) + s)
        return _mix(d ^ (sen_idx * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x8CB92BA72F3D8DD7)))


def _scalar_mix(x: int) -> int:
    x &= _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _uniform(h: np.ndarray) -> np.ndarray:
    """Hash → float64 uniform in (0, 1) (53 bits, never exactly 0 or 1)."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(x: np.ndarray, stream_a: int, stream_b: int) -> np.ndarray:
    """Standard normal per counter ``x`` (Box-Muller on two hashed uniforms)."""
    with np.errstate(over="ignore"):
        u1 = _uniform(_mix(x ^ _stream(stream_a)))
        u2 = _uniform(_mix(x ^ _stream(stream_b)))
    r = np.sqrt(-2.0 * np.log(u1))
    normal: np.ndarray = r * np.cos(2.0 * np.pi * u2)
    return normal


# ---- argument checks -------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise InputError(f"{name} must be finite, got {value!r}")
    return out
