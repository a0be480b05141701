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

Features are computed from the readings alone, so a reading's features do not depend on where
scoring windows start once the ``GAP + LONG`` readings before it are read. The robust kind then
compares each deviation with the deviations of the ``GATE`` readings before it (`fleetscore.core.robust`,
"Persistence"), each of which needs its own history: scoring a window needs the ``LOOKBACK``
readings before it. Pure numpy.
"""

from __future__ import annotations

import bottleneck as bn
import numpy as np

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
#: Features whose deviations are compared with those of the readings before them (`fleetscore.core.robust`:
#: a change that persists, or no larger than the last few readings', stops alarming). Not the flat feature:
#: a second stuck period is as anomalous as the first.
GATED = (True, True, True, False)
#: Features whose deviations count on one side only (-1: below the center): a stuck sensor makes the flat
#: feature fall; large steps are the residual's to judge.
ONE_SIDED = (0, 0, 0, -1)
#: Previous readings whose deviations a reading's deviation is compared with (see GATED).
GATE = 5
#: Readings of history a scored reading needs, exactly: its features need ``GAP + LONG - 1`` readings before it
#: (the drift's older baseline), and so does each of the ``GATE`` readings its deviation is compared with.
LOOKBACK = GAP + LONG - 1 + GATE
#: The flat feature adds this fraction of |value| so an exact repeat gives a finite, very low log.
FLAT_EPS = 1e-9


def _lagged_medians(x: np.ndarray, width: int, lags: tuple[int, ...]) -> list[np.ndarray]:
    """Per lag: out[t] = median(x[t - lag - width + 1 .. t - lag]), NaN for the first lag + width - 1 rows.

    The sliding medians are computed once (bottleneck's moving median: NaN where the window holds one, like
    ``np.median`` over it, at a fraction of its cost) and shifted for each lag.
    """
    med = bn.move_median(x, width)[width - 1:] if x.size >= width else np.empty(0)
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
            largest[SHORT - 1:] = bn.move_max(step, SHORT)[SHORT - 1:]
        out[:, 3] = np.where(pos >= SHORT, np.log(largest + FLAT_EPS * (np.abs(x) + 1e-300)), np.nan)
    return out
