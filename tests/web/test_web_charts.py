"""Server-side SVG charts: hostile text is escaped, axes are sane, empty data says so."""

from __future__ import annotations

import numpy as np
import pytest

from fleetscore.core.times import HOUR_US
from fleetscore.web import charts

EVIL = '<script>alert(1)</script>"&\''


def all_charts(label: str) -> list[str]:
    hours = np.arange(0, 6 * HOUR_US, HOUR_US, dtype=np.int64)
    rates = np.array([[0.1, np.nan, 0.0, 0.3, 0.2, 0.0]])
    return [
        str(charts.bars([label, "b"], [1.0, 2.0], label=label, unit=label, titles=[label, label], links=[f"/x?{label}", "/y"])),
        str(charts.bars([label] * 6, [1.0] * 6, label=label, times_us=hours)),
        str(charts.timeline(hours, np.arange(6.0), np.array([0, 1, 0, 0, 1, 0], bool), label=label, unit=label,
                            reference=0.0, reference_label=label)),
        str(charts.heatmap([label], hours, rates, np.ones((1, 6), int), np.full((1, 6), 10), label=label,
                           row_links=[f"/fleet?device={label}"])),
        str(charts.stacked([label], [(label, "#fff")], np.array([[1.0]]), label=label)),
    ]


def test_text_is_escaped_everywhere() -> None:
    for svg in all_charts(EVIL):
        assert "<script" not in svg and "&lt;script&gt;" in svg
        assert svg.startswith("<svg") and svg.endswith("</svg>")


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (0.0, 7.3), (-3.2, 1e6), (5.0, 5.0), (1e-6, 3e-6)])
def test_nice_ticks_cover_the_range_evenly(lo: float, hi: float) -> None:
    ticks = charts.nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) >= 2
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])


def test_heat_colours_run_from_pale_to_dark() -> None:
    light, dark = charts.heat_color(0.0), charts.heat_color(1.0)
    brightness = lambda c: sum(int(c[i:i + 2], 16) for i in (1, 3, 5))  # noqa: E731
    assert brightness(light) > brightness(charts.heat_color(0.5)) > brightness(dark)
    assert charts.heat_color(-1) == light and charts.heat_color(7) == dark


def test_empty_charts_say_why() -> None:
    assert "no runs yet" in str(charts.bars([], [], label="x", empty="no runs yet"))
    assert "no readings" in str(charts.timeline(np.array([0]), np.array([np.nan]), np.array([False]), label="x"))
    assert "no predictions" in str(charts.heatmap([], np.array([], np.int64), np.zeros((0, 0)), np.zeros((0, 0)),
                                                  np.zeros((0, 0)), label="x"))
