"""The dashboard's JSON API under ``/api``: every number a page shows, in the OpenAPI schema.

Each route returns the value its page renders (:mod:`fleetscore.web.views`). With a token
configured every route needs it (``Authorization: Bearer`` or the login cookie), else 401 JSON.
Unknown or malformed ids answer 404 ``{"detail": ...}``; bad parameters 400 or 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from fleetscore.core.runs import ListPage
from fleetscore.web import incidents, views
from fleetscore.web.auth import require_token
from fleetscore.web.ids import segment_id
from fleetscore.web.routing import ApiRoute, fleet_of

Hours = Annotated[int, Query(ge=1, le=views.MAX_HOURS, description="Length of the window in hours.")]
End = Annotated[str | None, Query(description="End of the window (ISO 8601); default: end of the latest scored window.")]
ListLimit = Annotated[int, Query(ge=1, le=10_000, description="At most this many entries.")]
Offset = Annotated[int, Query(ge=0, description="Skip this many entries first (in key order: device, sensor).")]
#: A run's per-model lists, paged under ``/api/runs/{run_id}/<name>``: what each holds.
RUN_LISTS = {"failures": "models that could not be scored, with the reason",
             "unhealthy": "models flagging far more rows than they were calibrated for",
             "unmatched": "(device, sensor) keys whose readings had no model, with their readings and why"}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown or malformed id"},
                                              401: {"description": "Token missing or wrong"}}


@dataclass(frozen=True)
class RunList:
    runs: list[views.RunView]


def build_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["dashboard"], route_class=ApiRoute,
                       dependencies=[Depends(require_token)], responses=NOT_FOUND)

    @router.get("/overview", response_model=views.Overview)
    def overview(request: Request, hours: Hours = views.DEFAULT_HOURS, end: End = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = views.RECENT_RUNS) -> views.Overview:
        """Recent runs, status counts, anomalies per hour over the window, ingest counters."""
        return views.overview(fleet_of(request), views.ingest_stats(request.app), hours, end, limit)

    @router.get("/runs", response_model=RunList)
    def runs(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> RunList:
        """Runs, newest first."""
        return RunList([views.run_view(r) for r in fleet_of(request).runs(limit)])

    @router.get("/runs/{run_id}", response_model=views.RunDetail)
    def run(request: Request, run_id: str) -> views.RunDetail:
        """One run: its record, tasks with timings, failed models with reasons, and the tails of its logs."""
        return views.run_detail(fleet_of(request), run_id)

    for name, holds in RUN_LISTS.items():
        add_run_list_route(router, name, holds)

    @router.get("/fleet", response_model=views.FleetView)
    def fleet(
        request: Request,
        hours: Hours = views.DEFAULT_HOURS,
        end: End = None,
        by: Literal["device", "sensor"] = "device",
        sort: Literal["rate", "anomalies", "rows", "device", "sensor"] = "rate",
        order: Literal["asc", "desc"] = "desc",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        rows: Annotated[int, Query(ge=1, le=500, description="Rows of the heatmap.")] = 30,
        device: Annotated[str | None, Query(description="Only this device's sensors.")] = None,
    ) -> views.FleetView:
        """Anomaly rate per device (or sensor) × hour, and the devices or sensors sorted by anomalies."""
        return views.fleet_view(fleet_of(request), hours, end, by, sort, order, limit, rows, device)

    @router.get("/devices/{device}/sensors/{sensor}", response_model=views.SensorView)
    def sensor(request: Request, device: str, sensor: str, hours: Hours = views.DEFAULT_HOURS, end: End = None,
               max_points: Annotated[int, Query(ge=10, le=100_000)] = views.DEFAULT_POINTS) -> views.SensorView:
        """Readings of one sensor with scores and anomalies, and its model. Ids are URL segments where
        ``~2F`` stands for ``/`` and ``~7E`` for ``~``."""
        return views.sensor_view(fleet_of(request), segment_id(device), segment_id(sensor), hours, end, max_points)

    @router.get("/models", response_model=views.ModelsView)
    def models(request: Request) -> views.ModelsView:
        """Model versions, the released one, and the models of the release that failed to train."""
        return views.models_view(fleet_of(request))

    add_incident_routes(router)
    return router


def add_run_list_route(router: APIRouter, name: str, holds: str) -> None:
    """``/api/runs/{run_id}/<name>``: one page of the run's ``name`` list, with the list's total."""

    @router.get(f"/runs/{{run_id}}/{name}", response_model=ListPage, summary=f"A run's {name}",
                description=f"One page of the run's {holds}, in key order, and how many there are (``total``).")
    def run_list(request: Request, run_id: str, limit: ListLimit = 100, offset: Offset = 0) -> ListPage:
        return fleet_of(request).run_list(views.check_run(run_id), name, limit, offset)


def add_incident_routes(router: APIRouter) -> None:
    """``/api/incidents``: the list (the page's filters and ``limit``), one incident, acknowledge, mark; the dead letters."""

    @router.get("/incidents", response_model=incidents.IncidentList)
    def incident_list(
        request: Request,
        status: Annotated[str | None, Query(description=f"One of {', '.join(incidents.FILTER_STATUSES)}.")] = None,
        device: Annotated[str | None, Query(description="Only this device's incidents.")] = None,
        sensor: Annotated[str | None, Query(description="Only incidents involving this sensor.")] = None,
        min_severity: Annotated[str | None, Query(description="Peak severity at least this (0-100).")] = None,
        since: Annotated[str | None, Query(description="Only incidents with a flag at or after this time (ISO 8601).")] = None,
        limit: incidents.Limit = incidents.DEFAULT_LIMIT,
    ) -> incidents.IncidentList:
        """Incidents: open, then acknowledged, resolved and superseded; newest first within each. Bad filters: 400."""
        filters = incidents.parse_filters(status, device, sensor, min_severity, since, limit)
        return incidents.incident_list(fleet_of(request), filters)

    @router.get("/alerts/dead-letters", response_model=incidents.DeadLetters)
    def dead_letters(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> incidents.DeadLetters:
        """Notifications a receiver kept refusing, newest first with the reason, and the outbox's counts."""
        return incidents.dead_letters(fleet_of(request), limit)

    @router.get("/incidents/{incident_id}")
    def incident(request: Request, incident_id: str) -> dict[str, Any]:
        """One incident with its sensors, acknowledgement and marks (``~2F`` in the id segment stands for ``/``)."""
        return incidents.incident_detail(fleet_of(request), segment_id(incident_id)).as_dict()

    @router.post("/incidents/{incident_id}/ack")
    def ack(request: Request, incident_id: str, body: incidents.AckBody | None = None) -> dict[str, Any]:
        """Acknowledge an incident (``{"by": name}``, default ``api``); answers the incident as it now is."""
        by = body.by if body else None
        return incidents.acknowledge(fleet_of(request), segment_id(incident_id), by, incidents.API_AUTHOR).as_dict()

    @router.post("/incidents/{incident_id}/mark")
    def mark(request: Request, incident_id: str, body: incidents.MarkBody) -> dict[str, Any]:
        """Mark an incident ``true``, ``false`` or ``ignore`` with a note; kept with its time and name (default ``api``)."""
        return incidents.mark(fleet_of(request), segment_id(incident_id), body.mark, body.note, body.by,
                              incidents.API_AUTHOR).as_dict()
