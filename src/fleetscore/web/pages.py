"""The dashboard's HTML pages: overview, run, fleet heatmap, sensor plot, models; and its stylesheet.

Each page renders one value from :mod:`fleetscore.web.views` (the same value ``/api/...`` returns)
with a template and server-side SVG charts (:mod:`fleetscore.web.charts`); pages have no scripts.
Sorting and windows are links with query parameters, so everything works without JavaScript.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Annotated, Literal
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from markupsafe import Markup

from fleetscore.core.incidents import MARKS
from fleetscore.core.runs import RunStatus
from fleetscore.core.times import HOUR_US, iso, parse_time
from fleetscore.errors import NotFoundError
from fleetscore.web import charts, incidents, views
from fleetscore.web.api import Hours
from fleetscore.web.ids import id_segment, segment_id
from fleetscore.web.login import require_login
from fleetscore.web.render import render, sensor_path, url, when
from fleetscore.web.routing import PageRoute, fleet_of

STATUS_COLORS = {
    RunStatus.SUCCEEDED.value: "#16a34a",
    RunStatus.PARTIAL.value: "#d97706",
    RunStatus.FAILED.value: "#dc2626",
    RunStatus.RUNNING.value: "#2563eb",
    RunStatus.QUEUED.value: "#94a3b8",
    RunStatus.ABANDONED.value: "#7c3aed",
}
#: Task phases drawn on the run page, in order, with their colours.
PHASES = (("load data", "load_data_s", "#60a5fa"), ("load models", "load_models_s", "#a78bfa"),
          ("score", "score_s", "#34d399"), ("write", "write_s", "#fbbf24"))
STATIC_FILES = {"style.css": "text/css; charset=utf-8"}
#: Ingest counters shown on the overview (all of them are one click away), with their labels.
INGEST_FIELDS = (("accepted_total", "accepted"), ("rejected_total", "rejected"), ("accepted_per_s", "readings/s"),
                 ("log_lag_bytes", "log lag (bytes)"), ("last_batch_at_us", "last batch"),
                 ("last_compaction_at_us", "last compaction"), ("last_compaction_error", "compaction error"),
                 ("error", "error"))


def _short(value: str | int) -> str:
    return when(value)[5:16]


def duration_chart(request: Request, overview: views.Overview) -> Markup:
    runs = list(reversed(overview.runs))
    return charts.bars(
        [_short(r.window_from) for r in runs],
        [r.elapsed_s or 0.0 for r in runs],
        label="duration of recent runs",
        unit="seconds",
        colors=[STATUS_COLORS.get(r.status.value, charts.LINE) for r in runs],
        titles=[f"{when(r.window_from)} · {r.status.value} · {r.elapsed_s or 0:.2f} s" for r in runs],
        links=[url(request, f"/runs/{r.run_id}") for r in runs],
        empty="no runs yet",
    )


def anomalies_chart(overview: views.Overview) -> Markup:
    hours = overview.anomalies_per_hour
    return charts.bars(
        [when(h.hour)[:16] for h in hours],
        [float(h.anomalies) for h in hours],
        label="anomalies per hour",
        unit="anomalies",
        colors=[charts.MARK] * len(hours),
        titles=[f"{when(h.hour)[:16]}: {h.anomalies:,} anomalies in {h.rows:,} predictions" for h in hours],
        times_us=np.array([parse_time(h.hour) for h in hours], dtype=np.int64),
        empty="no predictions in this window",
    )


def task_chart(detail: views.RunDetail) -> Markup:
    tasks = detail.tasks
    values = np.array([[getattr(t, field) or 0.0 for _, field, _ in PHASES] for t in tasks], dtype=np.float64)
    return charts.stacked([f"task {t.task}" for t in tasks], [(name, color) for name, _, color in PHASES],
                          values.reshape(len(tasks), len(PHASES)), label="task timings by phase")


def heatmap_chart(request: Request, view: views.FleetView) -> Markup:
    heat = view.heatmap
    rates = np.array([[np.nan if r is None else r for r in row] for row in heat.rates], dtype=np.float64)
    if view.device is None:
        links = [url(request, f"/fleet?device={quote(d, safe='')}&hours={view.window.hours}") for d in heat.rows]
    else:
        links = [url(request, sensor_path(view.device, s)) for s in heat.rows]
    return charts.heatmap(
        heat.rows, np.array([parse_time(h) for h in heat.hours], dtype=np.int64),
        rates.reshape(len(heat.rows), len(heat.hours)), np.array(heat.anomalies), np.array(heat.counts),
        label="anomaly rate per device and hour", row_links=links,
    )


def sensor_charts(view: views.SensorView) -> tuple[Markup, Markup]:
    s = view.series
    ts = np.array([parse_time(t) for t in s.ts], dtype=np.int64)
    marked = np.array([bool(a) for a in s.is_anomaly], dtype=bool)
    values = np.array([np.nan if v is None else v for v in s.value], dtype=np.float64)
    scores = np.array([np.nan if v is None else v for v in s.score], dtype=np.float64)
    band = None
    if len(s.lower) == len(s.upper) == len(s.ts):  # the flagged readings' explanations: where they were expected
        band = (np.array([np.nan if v is None else v for v in s.lower], dtype=np.float64),
                np.array([np.nan if v is None else v for v in s.upper], dtype=np.float64))
    return (
        charts.timeline(ts, values, marked, label=f"readings of {view.sensor}", unit="value", band=band),
        charts.timeline(ts, scores, marked, label="anomaly score", unit="score", reference=0.0,
                        reference_label="decision boundary (below = anomaly)", height=180, empty="not scored in this window"),
    )


@lru_cache(maxsize=len(STATIC_FILES))
def _static(name: str) -> bytes:
    return resources.files("fleetscore.web").joinpath("static", name).read_bytes()


def build_router() -> APIRouter:
    router = APIRouter(tags=["pages"], route_class=PageRoute, include_in_schema=False,
                       dependencies=[Depends(require_login)])

    @router.get("/")
    def overview_page(request: Request, hours: Hours = views.DEFAULT_HOURS, end: str | None = None) -> Response:
        view = views.overview(fleet_of(request), views.ingest_stats(request.app), hours, end)
        return render(request, "overview.html", title="Overview", view=view, colors=STATUS_COLORS, ingest_fields=INGEST_FIELDS,
                      duration_chart=duration_chart(request, view), anomalies_chart=anomalies_chart(view),
                      incident_path=incidents.incident_path)

    @router.get("/runs/{run_id}")
    def run_page(request: Request, run_id: str) -> Response:
        detail = views.run_detail(fleet_of(request), run_id)
        return render(request, "run.html", title=f"Run {detail.run.run_id[:12]}", detail=detail, run=detail.run,
                      task_chart=task_chart(detail), phases=PHASES)

    @router.get("/fleet")
    def fleet_page(
        request: Request,
        hours: Hours = views.DEFAULT_HOURS,
        end: str | None = None,
        by: Literal["device", "sensor"] = "device",
        sort: Literal["rate", "anomalies", "rows", "device", "sensor"] = "rate",
        order: Literal["asc", "desc"] = "desc",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        device: str | None = None,
    ) -> Response:
        view = views.fleet_view(fleet_of(request), hours, end, by, sort, order, limit, 30, device)
        return render(request, "fleet.html", title="Fleet", view=view, heatmap=heatmap_chart(request, view))

    @router.get("/devices/{device}/sensors/{sensor}")
    def sensor_page(request: Request, device: str, sensor: str, hours: Hours = views.DEFAULT_HOURS,
                    end: str | None = None) -> Response:
        view = views.sensor_view(fleet_of(request), segment_id(device), segment_id(sensor), hours, end)
        value_chart, score_chart = sensor_charts(view)
        s = view.series
        explained = zip(s.reason, s.expected, s.lower, s.upper) if s.reason else iter(lambda: (None,) * 4, 0)
        anomalies = [(t, v, sc, *why) for t, v, sc, a, why in zip(s.ts, s.value, s.score, s.is_anomaly, explained)
                     if a][-100:]
        return render(request, "sensor.html", title=f"{view.device} · {view.sensor}", view=view,
                      value_chart=value_chart, score_chart=score_chart, anomalies=list(reversed(anomalies)),
                      device_segment=id_segment(view.device))

    @router.get("/models")
    def models_page(request: Request) -> Response:
        return render(request, "models.html", title="Models", view=views.models_view(fleet_of(request)))

    add_incident_pages(router)
    return router


def add_incident_pages(router: APIRouter) -> None:
    """``/incidents``, ``/incidents/{id}`` and the incident page's acknowledge and mark forms (303 back to the page)."""

    @router.get("/incidents")
    def incidents_page(request: Request, status: str | None = None, device: str | None = None, sensor: str | None = None,
                       min_severity: str | None = None, since: str | None = None,
                       limit: incidents.Limit = incidents.DEFAULT_LIMIT) -> Response:
        filters = incidents.parse_filters(status, device, sensor, min_severity, since, limit)
        fleet = fleet_of(request)
        return render(request, "incidents.html", title="Incidents", view=incidents.incident_list(fleet, filters),
                      statuses=incidents.FILTER_STATUSES, incident_path=incidents.incident_path,
                      alerts=incidents.dead_letters(fleet))

    @router.get("/incidents/{incident_id}")
    def incident_page(request: Request, incident_id: str) -> Response:
        fleet = fleet_of(request)
        incident = incidents.incident_detail(fleet, segment_id(incident_id))
        hours, end = incidents.chart_span(fleet, incident)
        panels = [(share, None if view is None else sensor_charts(view)[0], note)
                  for share, view, note in incidents.sensor_views(fleet, incident)]
        return render(request, "incident.html", title=f"Incident {incident.id}", incident=incident, data=incident.as_dict(),
                      panels=panels, marks=MARKS, chart_hours=hours, chart_to=end,
                      chart_from=iso(parse_time(end) - hours * HOUR_US),
                      path=incidents.incident_path(incident.id), incident_path=incidents.incident_path)

    @router.post("/incidents/{incident_id}/ack", dependencies=[Depends(incidents.check_same_site)])
    def ack_form(request: Request, incident_id: str, by: Annotated[str, Form(max_length=4096)] = "") -> Response:
        incident = incidents.acknowledge(fleet_of(request), segment_id(incident_id), by, incidents.WEB_AUTHOR)
        return RedirectResponse(url(request, incidents.incident_path(incident.id)), status_code=303)

    @router.post("/incidents/{incident_id}/mark", dependencies=[Depends(incidents.check_same_site)])
    def mark_form(request: Request, incident_id: str, mark: Annotated[str, Form(max_length=64)],
                  note: Annotated[str, Form(max_length=4 * incidents.MAX_NOTE)] = "",
                  by: Annotated[str, Form(max_length=4096)] = "") -> Response:
        incident = incidents.mark(fleet_of(request), segment_id(incident_id), mark, note, by, incidents.WEB_AUTHOR)
        return RedirectResponse(url(request, incidents.incident_path(incident.id)), status_code=303)


def build_static_router() -> APIRouter:
    """The stylesheet, served from the package without auth (the login page needs it too)."""
    router = APIRouter(include_in_schema=False, route_class=PageRoute)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFoundError(f"no static file {name[:40]!r}")
        return Response(_static(name), media_type=STATIC_FILES[name], headers={"Cache-Control": "max-age=3600"})

    return router
