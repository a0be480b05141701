"""What `fleetscore train` fits when the user does not pin it: kind, features, thresholds, fallbacks.

Defaults that need no labels (``kind = features = "auto"``, nothing pinned):

* kind ``robust`` on ``context`` features (level, residual against the recent past, drift, stuck),
  each feature's threshold calibrated on the model's own training data to ``DEFAULT_ALARM_RATE``;
* keys with fewer than ``AUTO_MIN_HISTORY`` feature rows get a robust fallback on what they have;
* a device whose sensors move together in its training data (``AUTO_DEVICE``: the label-free test of
  `fleetscore.core.device.co_movement`) gets one ``device`` model over its sensors instead
  (`fleetscore.core.fitting`); single-sensor devices and devices of independent sensors never do.

``--kind device`` gives every device a device model (its sensors without enough history, the
robust fallback), on ``context`` features for those fallbacks, calibrated like the defaults.

``--kind ocsvm`` without ``--nu``/``--gamma`` is a tuned one-class SVM: context features, gamma by
the median-distance rule, ``AUTO_NU``, intercept calibrated to the alarm rate. Pinning ``--nu`` or
``--gamma`` (and no ``--alarm-rate``) keeps the classic semantics exactly: ocsvm on ``raw``
features (unless ``--features`` says otherwise), scikit-learn's own decision threshold, any key
with 2 rows trained. In every mode a key whose model cannot be fitted gets a robust fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetscore.core.calibrate import DEFAULT_ALARM_RATE
from fleetscore.errors import InputError

AUTO = "auto"
AUTO_KIND = "robust"
AUTO_FEATURES = "context"
CLASSIC_FEATURES = "raw"
CLASSIC_NU = 0.05
CLASSIC_GAMMA = "scale"
#: nu of a tuned ocsvm: few support vectors (cheap to score); the calibrated intercept sets the threshold.
AUTO_NU = 0.02
AUTO_GAMMA = "median"
#: Feature rows a key needs for the version's kind in the calibrated modes (an hour of minute data).
AUTO_MIN_HISTORY = 60
CLASSIC_MIN_HISTORY = 2
#: Whether the defaults may pick the device kind per device (where its sensors move together).
AUTO_DEVICE = True


@dataclass(frozen=True)
class TrainingChoice:
    """Resolved training settings, as `fleetscore.services.train.train` takes them."""

    kind: str
    features: str
    nu: float
    gamma: float | str
    alarm_rate: float | None
    min_history: int
    auto_device: bool = False


def resolve(kind: str | None, nu: float | None, gamma: float | str | None, features: str | None,
            alarm_rate: float | None) -> TrainingChoice:
    """Fill what the user left open (None or "auto") following the module docstring."""
    kind = AUTO if kind in (None, "") else kind
    pinned = nu is not None or gamma is not None
    auto_device = kind == AUTO and not pinned and AUTO_DEVICE and AUTO_KIND == "robust"
    if kind == AUTO:
        kind = "ocsvm" if pinned else AUTO_KIND
    if kind != "ocsvm" and pinned:
        raise InputError(f"--nu and --gamma are ocsvm settings; --kind {kind} does not take them")
    classic = kind == "ocsvm" and pinned and alarm_rate is None
    if features in (None, "", AUTO):
        features = CLASSIC_FEATURES if classic else AUTO_FEATURES
    return TrainingChoice(
        kind=kind,
        features=features,
        nu=nu if nu is not None else (CLASSIC_NU if classic else AUTO_NU),
        gamma=gamma if gamma is not None else (CLASSIC_GAMMA if classic else AUTO_GAMMA),
        alarm_rate=None if classic else (DEFAULT_ALARM_RATE if alarm_rate is None else alarm_rate),
        min_history=CLASSIC_MIN_HISTORY if classic else AUTO_MIN_HISTORY,
        auto_device=auto_device,
    )
