"""HTML rendering: the Jinja2 templates shipped in the package, their filters, and page headers.

Autoescaping is on for every template: device and sensor ids, reasons and log lines are hostile
text and are only ever inserted escaped (charts escape theirs in :mod:`fleetscore.web.charts`).
Pages carry a strict Content-Security-Policy: no scripts at all, styles and images from the app.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse

from fleetscore.web.ids import id_segment

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def num(value: Any) -> str:
    """12345 → '12,345'; floats with up to 3 significant decimals; None → '–'."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:,}"


def pct(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f} %" if value >= 0.001 or value == 0 else f"{value * 100:.3f} %"


def duration(seconds: float | None) -> str:
    """Seconds as '3.2 ms', '0.42 s', '12.3 s', '4 m 05 s' or '2 h 03 m'."""
    if seconds is None:
        return "–"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def when(value: str | int | None) -> str:
    """A time (µs, or ISO text) as 'YYYY-MM-DD HH:MM:SS' (UTC); text that is not a time comes back unchanged."""
    if value is None or value == "":
        return "–"
    if isinstance(value, int):
        return us_time(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return value
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def us_time(value: int | float | None) -> str:
    """Microseconds since the epoch as 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    if value is None:
        return "–"
    return datetime.fromtimestamp(value / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def url(request: Request, path: str) -> str:
    """A path on this app, under the root path it is mounted at."""
    return f"{request.scope.get('root_path', '')}{path}"


def query(**params: Any) -> str:
    """A URL query string of the given parameters, without those that are None."""
    return urlencode({k: v for k, v in params.items() if v is not None})


def sensor_path(device: str, sensor: str) -> str:
    return f"/devices/{id_segment(device)}/sensors/{id_segment(sensor)}"


@lru_cache(maxsize=1)
def environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("fleetscore.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, pct=pct, duration=duration, when=when, us_time=us_time)
    env.globals.update(sensor_path=sensor_path, query=query)
    return env


def render(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a page template with the common context (request, url(), login state)."""
    from fleetscore.web.auth import configured_token

    html = environment().get_template(template).render(
        request=request,
        url=lambda path: url(request, path),
        auth_on=bool(configured_token(request)),
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
