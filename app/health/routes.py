"""GET /healthz, /readyz and /metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from app import __version__
from workers.celery_app import check_broker

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str = Field(description="The LEAP version that answered (also in the X-LEAP-Version header).")


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    # On the event loop: liveness must not wait for a thread that busy synchronous routes hold.
    return Health(status="ok", version=__version__)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: database, broker and storage reachable",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
)
def readyz(request: Request) -> Response:
    state = request.app.state
    checks: dict[str, str] = {}
    for name, check in (
        ("database", lambda: _check_database(request)),
        ("broker", lambda: check_broker(state.celery)),
        ("storage", lambda: state.storage.check()),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as error:
            logger.warning("readiness check %s failed: %s", name, error)
            checks[name] = f"error: {type(error).__name__}: {error}"[:300]
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check_database(request: Request) -> None:
    with request.app.state.database.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
