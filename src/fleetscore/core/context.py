"""Per-reading context features: each reading described by its level and how it departs from its own
recent past, so one small model can see spikes, level shifts and drifts, and stuck sensors.

For readings sorted by (device, sensor, ts), reading t of a series gets (``CONTEXT_FEATURES``):

* ``level``: the value itself (gross level shifts; the model's own spread absorbs daily cycles);
* ``resid``: value − median of the previous ``BASE`` readings (spikes, noise bursts), once the
  drift's baseline exists only as far as the value departs from that too (the smaller departure, 0
  if their signs differ): readings back to normal after a short level change, which still lifts
  the recent median, are not spikes;
* ``drift``: the shift of the median of the last 3 readings from the median of ``LONG`` readings
  ending ``GAP`` readings earlier (ramps that the short baseline follows), counted only as far as
  the reading itself shares it and as far as it shows against a nearer baseline too (``LONG``
  readings ending ``NEAR_GAP`` back): of shifts that must agree, the smallest, 0 if their signs
  differ. Right after an anomaly ends, the short median still holds its readings but the reading
  is back; a dozen readings later, the anomaly fills one baseline's window but not the other's;
* ``flat``: log of the largest |first difference| over the last 3 readings (a stuck sensor repeats
  its value exactly: the log falls far below anything the sensor's noise produces).

Windows are counted in readings, never cross a series boundary, and a feature without enough
history is NaN (models skip it). Medians rather than means keep a single spike from leaking into
the readings after it.

`novelty` adds, per feature, whether the reading is a new extreme of its recent past: +1 above
every one of the previous ``NOVELTY`` readings' values of that feature, -1 below all of them, 0
neither, NaN without history. A robust model counts a deviation only in the direction the reading
is new (`fleetscore.core.robust`): a burst no larger than the last day's bursts, or a level shift
that has persisted, stops alarming, while its onset and anything beyond it still do. It is
computed from the readings alone (never from earlier decisions), so a reading's score does not
depend on where scoring windows start. Scoring a window needs the ``LOOKBACK`` readings before it.
Pure numpy.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

CONTEXT_FEATURES = ("level", "resid", "drift", "flat")
#: Features whose far tail is exponential, not Gaussian (log of a small |difference|: see calibrate).
HEAVY_TAILED = (False, False, False, True)
#: Features a model can learn from a short history (an hour says little about the daily range of the
#: level or of its slow changes, but enough about reading-to-reading noise): fallback models use these.
SHORT_HISTORY = (False, True, False, True)
#: Features whose center follows the sensor's daily cycle (a robust model's daily profile): the level
#: and the changes the cycle's slope causes in the residual and the drift; not the noise-driven flat.
SEASONAL = (True, True, True, False)
BASE = 10
SHORT = 3
LONG = 15
GAP = 12
#: The drift must also show against the ``LONG`` readings ending this many readings back (a second
#: baseline: an anomaly that fills the first baseline's window has mostly left this one, or not yet reached it).
NEAR_GAP = 6
#: Previous readings a reading must be more extreme than to count as new (a day of 5-minute readings).
NOVELTY = 288
#: Readings of history the features need: the novelty's window of readings, each with its own history.
LOOKBACK = GAP + LONG + NOVELTY
#: The flat feature adds this fraction of |value| so an exact repeat gives a finite, very low log.
FLAT_EPS = 1e-9


def _lagged_medians(x: np.ndarray, width: int, lags: tuple[int, ...]) -> list[np.ndarray]:
    """Per lag: out[t] = median(x[t - lag - width + 1 .. t - lag]), NaN for the first lag + width - 1 rows.

    The sliding medians are computed once and shifted for each lag.
    """
    med = np.median(sliding_window_view(x, width), axis=-1) if x.size >= width else np.empty(0)
    outs = []
    for lag in lags:
        out = np.full(x.shape, np.nan)
        if med.size > lag:
            out[width - 1 + lag:] = med[: med.size - lag]
        outs.append(out)
    return outs


def _agreeing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per element the one of ``a``, ``b`` nearer zero when both have the same sign, else 0."""
    return np.where(np.sign(a) == np.sign(b), np.where(np.abs(a) <= np.abs(b), a, b), 0.0)


def context_features(values: np.ndarray, series_start: np.ndarray) -> np.ndarray:
    """Feature matrix (n, 4) for ``values`` sorted by series then time.

    ``series_start`` holds the row index where each series begins (ascending, first is 0).
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    out = np.full((n, len(CONTEXT_FEATURES)), np.nan)
    if n == 0:
        return out
    starts = np.asarray(series_start, dtype=np.int64)
    # position of each row inside its series: how much history it has
    first = np.zeros(n, dtype=np.int64)
    first[starts] = starts
    pos = np.arange(n) - np.maximum.accumulate(first)

    out[:, 0] = x
    with np.errstate(invalid="ignore", over="ignore"):
        short = _lagged_medians(x, SHORT, (0,))[0]
        base, near = _lagged_medians(x, LONG, (GAP, NEAR_GAP))
        resid = x - _lagged_medians(x, BASE, (1,))[0]
        resid = np.where(pos >= GAP + LONG - 1, _agreeing(resid, x - base), resid)
        out[:, 1] = np.where(pos >= BASE, resid, np.nan)
        drift = _agreeing(_agreeing(short - base, x - base), short - near)
        out[:, 2] = np.where(pos >= GAP + LONG - 1, drift, np.nan)
        step = np.abs(np.diff(x, prepend=np.nan))
        largest = np.full(n, np.nan)
        if n >= SHORT:
            largest[SHORT - 1:] = np.max(sliding_window_view(step, SHORT), axis=-1)
        out[:, 3] = np.where(pos >= SHORT, np.log(largest + FLAT_EPS * (np.abs(x) + 1e-300)), np.nan)
    return out


def _window_extreme(f: np.ndarray, length: np.ndarray, op: np.ufunc) -> np.ndarray:
    """out[t] = op-reduction (NaN-ignoring) of f[t - length[t] .. t - 1]; NaN where length[t] == 0.

    A sparse table: level k holds the reduction over 2**k rows, so any window is two lookups.
    """
    n = f.size
    out = np.full(n, np.nan)
    if n == 0 or not length.max(initial=0):
        return out
    levels = [f]
    while 2 ** len(levels) <= length.max():
        prev, step = levels[-1], 2 ** (len(levels) - 1)
        levels.append(np.concatenate([op(prev[:-step], prev[step:]), prev[n - step:]]))
    table = np.stack(levels)
    has = length > 0
    t = np.flatnonzero(has)
    level = np.floor(np.log2(length[has])).astype(np.int64)
    first, last = t - length[has], t - 2 ** level
    with np.errstate(invalid="ignore"):
        out[has] = op(table[level, first], table[level, last])
    return out


def novelty(X: np.ndarray, series_start: np.ndarray) -> np.ndarray:
    """Per feature of X (rows sorted by series then time): +1 / -1 where the value is above / below all
    of the previous ``NOVELTY`` readings' (fewer at a series' start), 0 otherwise, NaN without history."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    out = np.full(X.shape, np.nan)
    if n == 0:
        return out
    first = np.zeros(n, dtype=np.int64)
    first[np.asarray(series_start, dtype=np.int64)] = np.asarray(series_start, dtype=np.int64)
    length = np.minimum(np.arange(n) - np.maximum.accumulate(first), NOVELTY)
    for j in range(X.shape[1]):
        hi = _window_extreme(X[:, j], length, np.fmax)
        lo = _window_extreme(X[:, j], length, np.fmin)
        with np.errstate(invalid="ignore"):
            code = np.where(X[:, j] > hi, 1.0, np.where(X[:, j] < lo, -1.0, 0.0))
        out[:, j] = np.where(np.isnan(hi) | np.isnan(X[:, j]), np.nan, code)
    return out
