"""``create_app(fleet)``: the one FastAPI app that ``fleetscore serve`` runs and tests build in-process.

Each part of fleetscore that speaks HTTP contributes a router here (ingest, dashboard, API, metrics),
so there is one server, one auth rule and one OpenAPI schema (``/openapi.json``, which needs the token
when one is set; no ``/docs`` or ``/redoc``, whose pages would load Swagger UI or ReDoc from a CDN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fleetscore.api import Fleet


def create_app(fleet: Fleet, **settings: Any) -> FastAPI:
    """Build the app for ``fleet``; ``settings`` are read by the routers (e.g. token, limits)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from fleetscore.version import __version__
    from fleetscore.web import ingest as ingest_http
    from fleetscore.web.auth import FailedAttempts

    app = FastAPI(title="fleetscore", version=__version__, lifespan=ingest_http.lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fleet = fleet
    app.state.settings = settings
    app.state.failed_attempts = FailedAttempts()
    _install_schema(app)
    ingest_http.install(app, fleet, settings)

    @app.get("/healthz", tags=["ops"], response_model=None,
             responses={503: {"description": "ingest cannot store batches; the reason"}})
    async def healthz() -> JSONResponse:
        """200 while the server runs and its ingest can store batches; 503 with the reason while it cannot."""
        fault = ingest_http.ingest_fault(app)
        if fault is not None:
            return JSONResponse({"status": "unhealthy", "reason": fault}, status_code=503)
        return JSONResponse({"status": "ok"})

    from fleetscore.web import dashboard

    dashboard.install(app)
    return app


def _install_schema(app: FastAPI) -> None:
    """``GET /openapi.json``, behind the token like the API. No Swagger UI or ReDoc: they load their scripts from a CDN."""
    from fastapi import Depends
    from fastapi.responses import JSONResponse

    from fleetscore.web.auth import require_token

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())
