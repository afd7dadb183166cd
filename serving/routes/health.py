"""Liveness, readiness and metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Header, HTTPException, Response
from fastapi.responses import JSONResponse

from reclaim.serving.deps import EngineDep, MetricsDep, PolicyDep, SettingsDep
from reclaim.serving.store.repository import writes_blocked

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    # async on purpose: it runs on the event loop, never waiting for a threadpool slot that
    # database work (a locked store) may hold
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready: a policy is loaded and the store answers and takes writes",
    responses={503: {"description": "Not ready, with the reason"}},
)
def readyz(engine: EngineDep, policy: PolicyDep) -> JSONResponse:
    problems = []
    if policy.current is None:
        problems.append(f"no policy loaded from {policy.uri}: {policy.error or 'loading'}")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        blocked = writes_blocked(engine)
        if blocked:
            problems.append(f"store {blocked}")
    except Exception as exc:
        problems.append(f"store unavailable: {type(exc).__name__}")
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready", "policy_version": policy.current.version})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={401: {"description": "RECLAIM_METRICS_TOKEN is set and was not presented"}},
)
def metrics(
    m: MetricsDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    token = settings.metrics_token
    if token is not None and not hmac.compare_digest(
        (authorization or "").encode(), f"Bearer {token.get_secret_value()}".encode()
    ):
        raise HTTPException(
            401, "/metrics needs Authorization: Bearer <RECLAIM_METRICS_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return Response(m.render(), media_type="text/plain; version=0.0.4")
