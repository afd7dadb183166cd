"""``POST /v1/decisions`` and ``POST /v1/decisions/batch``: the next action for failed
payments."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from reclaim.serving import decide as domain
from reclaim.serving.deps import EngineDep, MetricsDep, PolicyDep
from reclaim.serving.schemas import (
    BatchDecisionOut,
    BatchDecisionRequest,
    DecisionOut,
    DecisionRequest,
)

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])


def _run(requests: list[DecisionRequest], engine, holder, metrics) -> list[DecisionOut]:
    loaded = holder.current
    if loaded is None:
        raise HTTPException(503, f"no policy loaded yet from {holder.uri}")
    try:
        answers = domain.decide(requests, engine, loaded)
    except domain.UnknownPayment as exc:
        raise HTTPException(404, str(exc)) from exc
    for a in answers:
        action = ("retry" if a.retry else "no_retry") + ("+message" if a.channel else "")
        metrics.decisions.labels(action).inc()
    return answers


@router.post(
    "",
    summary="The next action for one failed payment",
    responses={
        404: {"description": "payment_id not held by the service"},
        503: {"description": "No policy loaded yet"},
    },
)
def decide_one(
    request: DecisionRequest, engine: EngineDep, policy: PolicyDep, metrics: MetricsDep
) -> DecisionOut:
    return _run([request], engine, policy, metrics)[0]


@router.post(
    "/batch",
    summary="The next action for up to 1,000 failed payments",
    responses={
        404: {"description": "A payment_id not held by the service"},
        503: {"description": "No policy loaded yet"},
    },
)
def decide_batch(
    body: BatchDecisionRequest, engine: EngineDep, policy: PolicyDep, metrics: MetricsDep
) -> BatchDecisionOut:
    return BatchDecisionOut(decisions=_run(body.decisions, engine, policy, metrics))
