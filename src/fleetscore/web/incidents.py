"""What the incident pages (``/incidents``, ``/incidents/{id}``) and ``/api/incidents`` show and do, from Fleet only.

Pages (:mod:`fleetscore.web.pages`) and the API (:mod:`fleetscore.web.api`) answer from the same
values and actions here. Filters arrive as query text and are checked with messages naming the
parameter (bad value → 400, never a 500). The acknowledge and mark forms are accepted from this site
only: besides the login cookie (SameSite=Strict), :func:`check_same_site` refuses a post a browser
says is cross-site (``Sec-Fetch-Site`` / ``Origin``), which also guards a dashboard without a token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetscore.catalog.incidents import ACTIVE_FILTER, MAX_BY, MAX_NOTE
from fleetscore.core.incidents import STATUSES, Incident, SensorShare
from fleetscore.core.times import HOUR_US, iso, parse_time
from fleetscore.errors import InputError, NotFoundError
from fleetscore.web import views
from fleetscore.web.ids import id_segment

if TYPE_CHECKING:
    from fleetscore.api import Fleet

#: Statuses the list filters on: each status, and ``active`` (open or acknowledged).
FILTER_STATUSES = (*STATUSES, ACTIVE_FILTER)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Who an acknowledgement or mark is recorded as when the form's or body's name is empty.
WEB_AUTHOR, API_AUTHOR = "web", "api"
#: Context drawn around an incident on its page: a quarter of its span, at least this much on each side.
MIN_CONTEXT_US = 30 * 60 * 1_000_000
#: Points per sensor chart on the incident page (every flag is kept when thinning).
CHART_POINTS = 2000
#: Dead letters the incidents page lists (all of them: ``/api/alerts/dead-letters``).
DEAD_LETTERS_SHOWN = 20
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most incidents returned.")]


@dataclass(frozen=True)
class Filters:
    """What the incident list is narrowed to; every field is optional."""

    status: str | None = None
    device: str | None = None
    sensor: str | None = None
    min_severity: float | None = None
    since: str | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True)
class IncidentList:
    """``/incidents``: active incidents first (open, acknowledged), then resolved and superseded, newest first."""

    incidents: list[dict[str, Any]]
    count: int
    filters: Filters


@dataclass(frozen=True)
class DeadLetters:
    """Notifications a receiver kept refusing, newest first with the reason, and the outbox's counts."""

    counts: dict[str, int]
    dead_letters: list[dict[str, Any]]


def _text(value: str | None, name: str) -> str | None:
    """A filter's id, None when absent or blank; InputError for text that cannot be an id."""
    if value is None or not value.strip():
        return None
    try:
        return views.check_id(value, name)
    except NotFoundError:
        raise InputError(f"{name}: not a possible id ({value[:40]!r})") from None


def parse_filters(status: str | None = None, device: str | None = None, sensor: str | None = None,
                  min_severity: str | None = None, since: str | None = None, limit: int = DEFAULT_LIMIT) -> Filters:
    """The filters from query text; InputError naming the parameter and what it accepts."""
    status = status.strip() if status else None
    if status and status not in FILTER_STATUSES:
        raise InputError(f"status: must be one of {', '.join(FILTER_STATUSES)}, got {status[:40]!r}")
    severity: float | None = None
    if min_severity is not None and min_severity.strip():
        try:
            severity = float(min_severity)
        except ValueError:
            severity = math.nan
        if not 0.0 <= severity <= 100.0:
            raise InputError(f"min_severity: must be a number from 0 to 100, got {min_severity[:40]!r}")
    since_text = since.strip() if since and since.strip() else None
    if since_text is not None:
        since_text = iso(parse_time(since_text, "since"))
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"limit: must be between 1 and {MAX_LIMIT}, got {limit}")
    return Filters(status or None, _text(device, "device"), _text(sensor, "sensor"), severity, since_text, limit)


def _order(incident: Incident) -> int:
    return STATUSES.index(incident.status) if incident.status in STATUSES else len(STATUSES)


def incident_list(fleet: Fleet, filters: Filters) -> IncidentList:
    """The incidents matching ``filters``: open, then acknowledged, resolved, superseded; newest first within each."""
    found = fleet.incidents(status=filters.status, device=filters.device, since=filters.since, limit=filters.limit,
                            sensor=filters.sensor, min_severity=filters.min_severity)
    ordered = sorted(found, key=lambda i: (_order(i), -i.start_us))
    return IncidentList([i.as_dict() for i in ordered], len(ordered), filters)


def dead_letters(fleet: Fleet, limit: int = DEAD_LETTERS_SHOWN) -> DeadLetters:
    """The newest ``limit`` dead letters (``fleetscore alerts dead-letters retry`` redrives them) and the counts."""
    return DeadLetters(fleet.alert_counts(), [n.as_dict() for n in fleet.dead_letters(limit)])


def incident_detail(fleet: Fleet, incident_id: str) -> Incident:
    """One incident; NotFoundError for an unknown id or one that cannot be an id (looked up only if it could)."""
    return fleet.incident(views.check_id(incident_id, "incident"))


def _author(by: str | None, default: str) -> str:
    return (by or "").strip() or default


def acknowledge(fleet: Fleet, incident_id: str, by: str | None, default: str) -> Incident:
    """Acknowledge an incident as ``by`` (``default`` when empty)."""
    return fleet.ack_incident(views.check_id(incident_id, "incident"), _author(by, default))


def mark(fleet: Fleet, incident_id: str, verdict: str, note: str | None, by: str | None, default: str) -> Incident:
    """Mark an incident ``true``, ``false`` or ``ignore`` with a note, as ``by`` (``default`` when empty)."""
    return fleet.mark_incident(views.check_id(incident_id, "incident"), verdict, (note or "").strip(), _author(by, default))


# --- the incident page's charts -----------------------------------------------------------------
def chart_span(fleet: Fleet, incident: Incident) -> tuple[int, str]:
    """Hours and end of the window drawn on the incident page: its span plus context, in whole hours.

    The context after the last flag stops at the end of the newest scored window (nothing is known beyond).
    """
    context = max((incident.last_us - incident.start_us) // 4, MIN_CONTEXT_US)
    scored = max((to_us for _, to_us in fleet.committed_windows()), default=incident.last_us + context)
    hi = _ceil_hour(max(min(incident.last_us + context, scored), incident.last_us + 1))
    lo = (incident.start_us - context) // HOUR_US * HOUR_US
    return min(max(1, (hi - lo) // HOUR_US), views.MAX_HOURS), iso(hi)


def _ceil_hour(us: int) -> int:
    return -(-us // HOUR_US) * HOUR_US


def _spanning(series: views.Series, span: views.Span) -> views.Series:
    """``series`` with an empty point at each end of ``span``, so every sensor's chart has the same x range."""
    padded: dict[str, Any] = {"ts": [span.start, *series.ts, span.end]}
    for f in fields(series):
        value = getattr(series, f.name)
        if f.name != "ts" and isinstance(value, list) and len(value) == len(series.ts):  # the columns along ts
            padded[f.name] = [None, *value, None]
    return replace(series, **padded)


def sensor_views(fleet: Fleet, incident: Incident) -> list[tuple[SensorShare, views.SensorView | None, str | None]]:
    """Each involved sensor's view over the incident's span and context (all with the same x range), or why there is none."""
    hours, end = chart_span(fleet, incident)
    out: list[tuple[SensorShare, views.SensorView | None, str | None]] = []
    for share in incident.sensors:
        try:
            view = views.sensor_view(fleet, incident.device, share.sensor, hours, end, CHART_POINTS)
        except NotFoundError as exc:
            out.append((share, None, str(exc)))
            continue
        out.append((share, replace(view, series=_spanning(view.series, view.window)), None))
    return out


# --- forms and bodies ---------------------------------------------------------------------------
def check_same_site(request: Request) -> None:
    """Refuse a form post sent from another site, as its browser says in ``Sec-Fetch-Site``.

    Browsers without that header are judged by ``Origin`` against ``Host`` (``null``, sent under our
    no-referrer policy, passes: SameSite=Strict still keeps the login cookie from other sites).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        cross = site not in ("same-origin", "none")
    else:
        origin = request.headers.get("origin")
        cross = bool(origin) and origin != "null" and urlsplit(origin).netloc != request.headers.get("host")
    if cross:
        raise HTTPException(status_code=403, detail="forms of this dashboard are accepted from its own pages only")


def incident_path(incident_id: str) -> str:
    return f"/incidents/{id_segment(incident_id)}"


class AckBody(BaseModel):
    """``POST /api/incidents/{id}/ack``: who acknowledges (default ``api``)."""

    model_config = ConfigDict(extra="forbid")
    by: str | None = Field(default=None, max_length=MAX_BY)


class MarkBody(BaseModel):
    """``POST /api/incidents/{id}/mark``: the verdict, a note, and who gives it (default ``api``)."""

    model_config = ConfigDict(extra="forbid")
    mark: Literal["true", "false", "ignore"]
    note: str = Field(default="", max_length=MAX_NOTE)
    by: str | None = Field(default=None, max_length=MAX_BY)
