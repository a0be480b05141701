"""Charts as inline SVG rendered in Python: no JavaScript, no CDN, works offline and under a strict CSP.

Four kinds, each a function returning ``Markup`` to place in a template: :func:`bars` (categories or
hours), :func:`timeline` (a series over time with marked points and an optional expected band), :func:`heatmap` (labels × hours)
and :func:`stacked` (horizontal bars split into phases). Every text that reaches the SVG — labels,
tooltips, link targets — is escaped here. Colours are SVG attributes, never ``style``, so the
CSP can forbid inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

import numpy as np
from markupsafe import Markup

WIDTH = 960
FONT = 11
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 14, 24, 30
#: Widest bar of a bar chart (px), so a handful of bars do not turn into blocks.
MAX_BAR = 44
AXIS = "#94a3b8"
GRID = "#e2e8f0"
TEXT = "#475569"
LINE = "#2563eb"
MARK = "#dc2626"
#: The expected band behind a timeline, and the width (px) of its bar at a lone point.
BAND = "#93c5fd"
BAND_BAR = 6
EMPTY = "#f8fafc"
#: Sequential scale of the heatmap, from no anomalies (pale green) to the highest rate shown.
HEAT = ((0.0, (220, 252, 231)), (0.25, (254, 240, 138)), (0.6, (249, 115, 22)), (1.0, (153, 27, 27)))
#: Time-axis steps (minutes) tried in order until the ticks fit.
_TIME_STEPS_MIN = (1, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
_US_PER_MIN = 60_000_000
#: Minimum distance (px) between two labels on an x axis.
LABEL_SPACING = 80


@dataclass(frozen=True)
class Frame:
    """The plot area of a chart in SVG coordinates."""

    width: int
    height: int
    left: int = MARGIN_LEFT
    right: int = MARGIN_RIGHT
    top: int = MARGIN_TOP
    bottom: int = MARGIN_BOTTOM

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _svg(frame: Frame, body: list[str], label: str) -> Markup:
    head = (
        f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" xmlns="http://www.w3.org/2000/svg" '
        f'role="img" aria-label="{_attr(label)}" font-size="{FONT}" font-family="system-ui, sans-serif">'
    )
    return Markup(head + "".join(body) + "</svg>")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value < hi + step * 0.5:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _y_axis(frame: Frame, ticks: list[float], scale: _Scale, unit: str) -> list[str]:
    out = []
    for t in ticks:
        y = scale(t)
        out.append(f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{frame.x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{TEXT}">{_attr(_tick_label(t))}</text>')
    if unit:
        out.append(f'<text x="4" y="{frame.y1 - 12}" fill="{TEXT}">{_attr(unit)}</text>')
    return out


class _Scale:
    """Linear map from a data interval to a pixel interval."""

    def __init__(self, d0: float, d1: float, p0: float, p1: float) -> None:
        self.d0, self.d1, self.p0, self.p1 = d0, d1, p0, p1
        self.k = (p1 - p0) / (d1 - d0) if d1 != d0 else 0.0

    def __call__(self, value: float) -> float:
        return self.p0 + (value - self.d0) * self.k

    def array(self, values: np.ndarray) -> np.ndarray:
        return self.p0 + (values - self.d0) * self.k


def _time_step(span_us: int, max_ticks: int) -> int:
    """The smallest round step (µs) that puts at most ``max_ticks`` ticks on ``span_us``."""
    span = max(span_us, 1)
    return _US_PER_MIN * next((s for s in _TIME_STEPS_MIN if span / (s * _US_PER_MIN) <= max_ticks), _TIME_STEPS_MIN[-1])


def _time_ticks(t0: int, t1: int, max_ticks: int) -> list[int]:
    step = _time_step(t1 - t0, max_ticks)
    first = -(-t0 // step) * step
    return list(range(first, t1 + 1, step))


def _labelled_slots(times_us: np.ndarray, width: float) -> list[int]:
    """Indices of evenly spaced slots (e.g. hours) whose time is a multiple of a round step."""
    if not len(times_us):
        return []
    slot_us = int(times_us[1] - times_us[0]) if len(times_us) > 1 else _US_PER_MIN * 60
    step = _time_step(slot_us * len(times_us), max(1, int(width // LABEL_SPACING)))
    return [i for i, t in enumerate(times_us) if int(t) % max(step, slot_us) == 0]


def _time_label(us: int, previous: int | None) -> str:
    dt = datetime.fromtimestamp(us / 1e6, tz=UTC)
    new_day = previous is None or datetime.fromtimestamp(previous / 1e6, tz=UTC).date() != dt.date()
    return dt.strftime("%m-%d %H:%M") if new_day else dt.strftime("%H:%M")


def _time_labels(times_us: np.ndarray, shown: list[int]) -> dict[int, str]:
    """Slot index → its time as a label (with the date where the day changes), for the ``shown`` slots."""
    texts, previous = {}, None
    for i in shown:
        texts[i] = _time_label(int(times_us[i]), previous)
        previous = int(times_us[i])
    return texts


def _x_time_axis(frame: Frame, t0: int, t1: int, scale: _Scale) -> list[str]:
    out = [f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{frame.y0}" y2="{frame.y0}" stroke="{AXIS}"/>']
    previous = None
    for t in _time_ticks(t0, t1, max_ticks=max(2, int((frame.x1 - frame.x0) // LABEL_SPACING))):
        x = scale(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.y0}" y2="{frame.y0 + 4}" stroke="{AXIS}"/>')
        out.append(f'<text x="{x:.1f}" y="{frame.y0 + 16}" text-anchor="middle" fill="{TEXT}">{_time_label(t, previous)}</text>')
        previous = t
    return out


def _empty(frame: Frame, label: str, message: str) -> Markup:
    body = [
        f'<rect x="{frame.x0}" y="{frame.y1}" width="{frame.x1 - frame.x0}" height="{frame.y0 - frame.y1}" '
        f'fill="{EMPTY}" stroke="{GRID}"/>',
        f'<text x="{(frame.x0 + frame.x1) / 2}" y="{(frame.y0 + frame.y1) / 2}" text-anchor="middle" '
        f'fill="{TEXT}">{_attr(message)}</text>',
    ]
    return _svg(frame, body, label)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    label: str,
    unit: str = "",
    colors: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    links: Sequence[str] | None = None,
    times_us: np.ndarray | None = None,
    height: int = 200,
    empty: str = "no data yet",
) -> Markup:
    """Vertical bars, one per label; optional colour, tooltip and link per bar.

    X labels are thinned to fit; with ``times_us`` (evenly spaced times of the bars, e.g. hours) the
    labelled bars are those at round times and the labels are those times.
    """
    frame = Frame(WIDTH, height)
    if not values:
        return _empty(frame, label, empty)
    if times_us is not None:
        texts = _time_labels(times_us, _labelled_slots(times_us, frame.x1 - frame.x0))
    else:
        every = max(1, math.ceil(len(values) * LABEL_SPACING / (frame.x1 - frame.x0)))
        texts = {i: labels[i] for i in range(0, len(values), every)}
    top = max(max(values), 0.0)
    ticks = nice_ticks(0.0, top if top > 0 else 1.0, 4)
    y = _Scale(0.0, ticks[-1], frame.y0, frame.y1)
    body = _y_axis(frame, ticks, y, unit)
    slot = (frame.x1 - frame.x0) / len(values)
    width = min(max(slot * 0.75, 1.0), MAX_BAR)
    for i, value in enumerate(values):
        x = frame.x0 + i * slot + (slot - width) / 2
        top_y = y(max(value, 0.0))
        color = colors[i] if colors else LINE
        tip = titles[i] if titles else f"{labels[i]}: {_tick_label(value)}"
        rect = (
            f'<rect x="{x:.1f}" y="{top_y:.1f}" width="{width:.1f}" height="{max(frame.y0 - top_y, 0.0):.1f}" '
            f'fill="{_attr(color)}"><title>{_attr(tip)}</title></rect>'
        )
        body.append(f'<a href="{_attr(links[i])}">{rect}</a>' if links else rect)
        if i in texts:
            cx = frame.x0 + (i + 0.5) * slot
            body.append(f'<text x="{cx:.1f}" y="{frame.y0 + 16}" text-anchor="middle" fill="{TEXT}">{_attr(texts[i])}</text>')
    body.append(f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{frame.y0}" y2="{frame.y0}" stroke="{AXIS}"/>')
    return _svg(frame, body, label)


def timeline(
    ts_us: np.ndarray,
    values: np.ndarray,
    marked: np.ndarray,
    *,
    label: str,
    unit: str = "",
    reference: float | None = None,
    reference_label: str = "",
    band: tuple[np.ndarray, np.ndarray] | None = None,
    height: int = 240,
    empty: str = "no readings in this window",
) -> Markup:
    """A line over time (gaps where values are missing) with ``marked`` points drawn as red dots; ``band``
    (lower, upper per point, NaN where none) is shaded behind it."""
    frame = Frame(WIDTH, height)
    finite = np.isfinite(values)
    if not finite.any():
        return _empty(frame, label, empty)
    t0 = int(ts_us[0])
    t1 = max(int(ts_us[-1]), t0 + _US_PER_MIN)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    banded = np.zeros(len(values), dtype=bool)
    if band is not None:
        banded = np.isfinite(band[0]) & np.isfinite(band[1])
        if banded.any():
            lo, hi = min(lo, float(band[0][banded].min())), max(hi, float(band[1][banded].max()))
    if reference is not None:
        lo, hi = min(lo, reference), max(hi, reference)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    ticks = nice_ticks(lo - pad, hi + pad, 4)
    x = _Scale(t0, t1, frame.x0, frame.x1)
    y = _Scale(ticks[0], ticks[-1], frame.y0, frame.y1)
    body = _y_axis(frame, ticks, y, unit)
    body += _x_time_axis(frame, t0, t1, x)
    if reference is not None:
        ry = y(reference)
        body.append(f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{ry:.1f}" y2="{ry:.1f}" stroke="{MARK}" stroke-dasharray="4 3"/>')
        if reference_label:
            body.append(f'<text x="{frame.x1 - 4}" y="{ry - 4:.1f}" text-anchor="end" fill="{MARK}">'
                        f'{_attr(reference_label)}</text>')
    px, py = x.array(ts_us.astype(np.float64)), y.array(np.where(finite, values, 0.0))
    if band is not None and banded.any():
        body.append(_band(px, y.array(np.where(banded, band[0], 0.0)), y.array(np.where(banded, band[1], 0.0)), banded))
    for run in np.split(np.arange(len(values)), np.flatnonzero(~finite)):
        run = run[finite[run]]
        if len(run):
            points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px[run], py[run]))
            body.append(f'<polyline points="{points}" fill="none" stroke="{LINE}" stroke-width="1.2"/>')
    for i in np.flatnonzero(marked & finite):
        when = datetime.fromtimestamp(ts_us[i] / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        body.append(
            f'<circle cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="3" fill="{MARK}">'
            f'<title>anomaly at {when}: {values[i]:.4g}</title></circle>'
        )
    return _svg(frame, body, label)


def _band(px: np.ndarray, low: np.ndarray, high: np.ndarray, banded: np.ndarray) -> str:
    """The expected band (pixel rows ``low``..``high`` at ``px`` where ``banded``): an area over each run of
    consecutive banded points, a short bar at a lone one."""
    shapes = []
    for run in np.split(np.arange(len(px)), np.flatnonzero(~banded)):
        run = run[banded[run]]
        if len(run) > 1:
            outline = [*zip(px[run], high[run]), *zip(px[run][::-1], low[run][::-1])]
            shapes.append(f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in outline)}"/>')
        elif len(run):
            i = run[0]
            shapes.append(f'<rect x="{px[i] - BAND_BAR / 2:.1f}" y="{high[i]:.1f}" width="{BAND_BAR}" '
                          f'height="{max(low[i] - high[i], 1.0):.1f}"/>')
    return (f'<g class="band" fill="{BAND}" fill-opacity="0.35" stroke="none">'
            f'<title>expected band: where the model would not have flagged the reading</title>{"".join(shapes)}</g>')


def heat_color(fraction: float) -> str:
    """Colour of a heatmap cell whose value is ``fraction`` of the scale's maximum (0..1)."""
    f = min(max(fraction, 0.0), 1.0)
    for (a, ca), (b, cb) in zip(HEAT, HEAT[1:]):
        if f <= b:
            t = (f - a) / (b - a)
            r, g, bl = (round(ca[k] + (cb[k] - ca[k]) * t) for k in range(3))
            return f"#{r:02x}{g:02x}{bl:02x}"
    return "#{:02x}{:02x}{:02x}".format(*HEAT[-1][1])


def heatmap(
    rows: Sequence[str],
    hours_us: np.ndarray,
    rates: np.ndarray,
    anomalies: np.ndarray,
    counts: np.ndarray,
    *,
    label: str,
    row_links: Sequence[str] | None = None,
    empty: str = "no predictions in this window",
) -> Markup:
    """Rows × hours of anomaly rate; a cell's tooltip gives rate, anomalies and predictions."""
    label_width = 150
    cell_h = 18
    frame = Frame(WIDTH, 24 + cell_h * max(len(rows), 1) + 34, left=label_width, top=24)
    if not len(rows) or not len(hours_us):
        return _empty(frame, label, empty)
    finite = rates[np.isfinite(rates)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cell_w = (frame.x1 - frame.x0) / len(hours_us)
    body = []
    for j, text in _time_labels(hours_us, _labelled_slots(hours_us, frame.x1 - frame.x0)).items():
        x = frame.x0 + j * cell_w
        if x + 7 * len(text) <= frame.width:  # a label that would run off the right edge is left out
            body.append(f'<text x="{x:.1f}" y="{frame.y1 - 6}" fill="{TEXT}">{text}</text>')
    for i, name in enumerate(rows):
        y = frame.y1 + i * cell_h
        short = name if len(name) <= 22 else name[:21] + "…"
        text = (f'<text x="{frame.x0 - 6}" y="{y + cell_h - 5}" text-anchor="end" fill="{TEXT}">{_attr(short)}'
                f'<title>{_attr(name)}</title></text>')
        body.append(f'<a href="{_attr(row_links[i])}">{text}</a>' if row_links else text)
        for j, hour in enumerate(hours_us):
            rate = rates[i, j]
            when = datetime.fromtimestamp(int(hour) / 1e6, tz=UTC).strftime("%Y-%m-%d %H:00")
            if np.isfinite(rate):
                color = heat_color(rate / top)
                tip = f"{name} · {when}: {rate * 100:.1f} % ({int(anomalies[i, j])} of {int(counts[i, j])})"
            else:
                color, tip = EMPTY, f"{name} · {when}: no predictions"
            body.append(
                f'<rect x="{frame.x0 + j * cell_w:.1f}" y="{y}" width="{max(cell_w - 1, 1):.1f}" height="{cell_h - 1}" '
                f'fill="{color}"><title>{_attr(tip)}</title></rect>'
            )
    body += _legend(frame, top, frame.y1 + len(rows) * cell_h + 12)
    return _svg(frame, body, label)


def _legend(frame: Frame, top: float, y: float) -> list[str]:
    out = [f'<text x="{frame.x0}" y="{y + 10}" fill="{TEXT}">anomaly rate: 0 %</text>']
    x = frame.x0 + 100
    for k in range(10):
        out.append(f'<rect x="{x + k * 16}" y="{y}" width="16" height="12" fill="{heat_color(k / 9)}"/>')
    out.append(f'<text x="{x + 166}" y="{y + 10}" fill="{TEXT}">{top * 100:.1f} %</text>')
    out.append(f'<rect x="{x + 230}" y="{y}" width="16" height="12" fill="{EMPTY}" stroke="{GRID}"/>')
    out.append(f'<text x="{x + 252}" y="{y + 10}" fill="{TEXT}">no predictions</text>')
    return out


def stacked(
    rows: Sequence[str],
    parts: Sequence[tuple[str, str]],
    values: np.ndarray,
    *,
    label: str,
    unit: str = "s",
    empty: str = "no tasks",
) -> Markup:
    """Horizontal bars (one per row) split into ``parts`` (name, colour); ``values`` is rows × parts."""
    bar_h = 16
    frame = Frame(WIDTH, MARGIN_TOP + bar_h * max(len(rows), 1) + 52, left=90)
    if not len(rows):
        return _empty(frame, label, empty)
    totals = values.sum(axis=1)
    ticks = nice_ticks(0.0, float(totals.max()) or 1.0, 6)
    x = _Scale(0.0, ticks[-1], frame.x0, frame.x1)
    body = []
    axis_y = frame.y1 + len(rows) * bar_h + 4
    for k, t in enumerate(ticks):
        px = x(t)
        anchor = "end" if k == len(ticks) - 1 else "middle"
        body.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{frame.y1}" y2="{axis_y}" stroke="{GRID}"/>')
        body.append(f'<text x="{px:.1f}" y="{axis_y + 14}" text-anchor="{anchor}" fill="{TEXT}">'
                    f'{_attr(_tick_label(t))} {unit}</text>')
    for i, name in enumerate(rows):
        y = frame.y1 + i * bar_h
        body.append(f'<text x="{frame.x0 - 6}" y="{y + bar_h - 4}" text-anchor="end" fill="{TEXT}">{_attr(name)}</text>')
        start = 0.0
        for k, (part, color) in enumerate(parts):
            v = float(values[i, k])
            if v > 0:
                body.append(
                    f'<rect x="{x(start):.1f}" y="{y + 2}" width="{max(x(start + v) - x(start), 0.5):.1f}" height="{bar_h - 4}" '
                    f'fill="{_attr(color)}"><title>{_attr(f"{name} · {part}: {v:.3f} {unit}")}</title></rect>'
                )
            start += v
    lx = frame.x0
    for part, color in parts:
        body.append(f'<rect x="{lx}" y="{axis_y + 24}" width="12" height="12" fill="{_attr(color)}"/>')
        body.append(f'<text x="{lx + 16}" y="{axis_y + 34}" fill="{TEXT}">{_attr(part)}</text>')
        lx += 24 + 7 * len(part)
    return _svg(frame, body, label)
