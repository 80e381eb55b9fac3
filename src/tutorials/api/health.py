"""Liveness, readiness and metrics: what an orchestrator and a scraper ask.

`/healthz` says the process answers (it touches nothing else, so a database outage never gets
a healthy process restarted). `/readyz` says this process can serve now: the database answers
and its schema is at the migrations' head; otherwise 503 with `Retry-After`, so a load balancer
takes it out of rotation. `/metrics` is Prometheus text.

With read replicas, readiness is the primary's (the check runs there: writes need it, and
reads fall back to it), and the body reports the routing: `"primary": "reachable"` and each
replica's state (`streaming`, `lagging`, `down`, `not a replica`), lag and replay position, by
its place in `TUTORIALS_REPLICA_URLS` (never its URL: readiness answers anyone). A replica that
is down never makes the process unready: its reads go to the primary.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.responses import Response

from tutorials.api.metrics import HttpMetrics
from tutorials.api.openapi import problems
from tutorials.api.problems import problem_response, unavailable_headers
from tutorials.api.routes import DatabaseDep
from tutorials.db.migrate import schema_is_current
from tutorials.errors import classify

router = APIRouter(tags=["operations"])
logger = logging.getLogger("tutorials.api")


class Status(BaseModel):
    status: str


class ReplicaReport(BaseModel):
    replica: int
    state: str
    lag_ms: float | None
    replay_lsn: str | None
    error: str | None


class Readiness(BaseModel):
    """`{"status": "ready"}`; with read replicas also the primary's state and the replicas'."""

    status: str
    primary: str | None = None
    replicas: list[ReplicaReport] | None = None


_OK = Status(status="ok").model_dump_json().encode()
_READY = Status(status="ready").model_dump_json().encode()


@router.get("/healthz", summary="Liveness: the process answers", response_model=Status)
async def healthz() -> Response:
    return Response(_OK, media_type="application/json")


@router.get(
    "/readyz",
    summary="Readiness: the database answers and its schema is current",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses=problems(503),
)
async def readyz(request: Request, database: DatabaseDep) -> Response:
    seconds: float = request.app.state.ready_timeout
    try:
        async with asyncio.timeout(seconds):
            current = await schema_is_current(database)
    except TimeoutError:
        return _not_ready(request, f"the database did not answer within {seconds:g} s")
    except Exception as exc:  # readiness must answer, whatever the failure
        domain = classify(exc)
        if domain is None:
            logger.error("readiness check failed", exc_info=exc)
        detail = domain.detail if domain is not None else "the database check failed"
        return _not_ready(request, detail)
    if not current:
        return _not_ready(request, "the database schema is not at the migrations' head")
    if database.replicas is None:
        return Response(_READY, media_type="application/json")
    replicas = [ReplicaReport(**vars(each)) for each in database.replicas.status()]
    body = Readiness(status="ready", primary="reachable", replicas=replicas)
    return Response(body.model_dump_json().encode(), media_type="application/json")


def _not_ready(request: Request, detail: str) -> Response:
    return problem_response(request.scope, 503, detail, headers=unavailable_headers(request))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    registry: HttpMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
