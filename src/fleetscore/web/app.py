"""``create_app(fleet)``: the one FastAPI app that ``fleetscore serve`` runs and tests build in-process.

Each part of fleetscore that speaks HTTP contributes a router here (ingest, dashboard, API, metrics),
so there is one server, one auth rule and one OpenAPI schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fleetscore.api import Fleet


def create_app(fleet: "Fleet", **settings: Any) -> "FastAPI":
    """Build the app for ``fleet``; ``settings`` are read by the routers (e.g. token, limits)."""
    from fastapi import FastAPI

    from fleetscore import __version__
    from fleetscore.web import ingest as ingest_http

    app = FastAPI(title="fleetscore", version=__version__, lifespan=ingest_http.lifespan)
    app.state.fleet = fleet
    app.state.settings = settings
    ingest_http.install(app, fleet, settings)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: 200 while the server runs."""
        return {"status": "ok"}

    from fleetscore.web import dashboard

    dashboard.install(app)
    return app
