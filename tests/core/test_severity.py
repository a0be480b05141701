"""The shared severity scale: tail probabilities to [0, 100] and back."""

import numpy as np

from fleetscore.core.severity import severity_from_tail, tail_from_severity


def test_anchor_points() -> None:
    got = severity_from_tail(np.array([1.0, 1e-4, 1e-8, 1e-12]))
    np.testing.assert_allclose(got, [0.0, 50.0, 75.0, 87.5])


def test_monotone_bounded_and_nan_kept() -> None:
    p = np.logspace(0, -150, 500)
    s = severity_from_tail(p)
    assert np.all(np.diff(s) > 0)  # strictly increasing as p falls: rankings keep their order
    assert s.min() >= 0 and s.max() < 100
    assert severity_from_tail(np.array([0.0]))[0] <= 100
    assert np.isnan(severity_from_tail(np.array([np.nan]))).all()
    assert severity_from_tail(np.array([2.0]))[0] == 0.0  # probabilities above 1 count as 1


def test_inverse() -> None:
    p = np.logspace(-1, -20, 20)
    np.testing.assert_allclose(tail_from_severity(severity_from_tail(p)), p, rtol=1e-9)
