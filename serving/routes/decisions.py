"""``POST /v1/decisions`` and ``POST /v1/decisions/batch``: the next action for failed
payments. Scheduler (or admin) keys only; a key scoped to some accounts sees no other
account's payments."""

from __future__ import annotations

import threading

from fastapi import APIRouter, HTTPException

from reclaim.serving import decide as domain
from reclaim.serving.auth import Principal
from reclaim.serving.deps import (
    DecisionSlotsDep,
    EngineDep,
    ExperimentDep,
    MetricsDep,
    PolicyDep,
    SchedulerDep,
)
from reclaim.serving.metrics import Metrics
from reclaim.serving.policy_holder import PolicyHolder
from reclaim.serving.schemas import (
    BatchDecisionOut,
    BatchDecisionRequest,
    DecisionOut,
    DecisionRequest,
)

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])

RESPONSES = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "This key's role cannot ask for decisions"},
    404: {"description": "A payment not held by the service, or not visible to this key"},
    503: {"description": "No policy loaded yet"},
}


def _run(
    requests: list[DecisionRequest],
    engine,
    holder: PolicyHolder,
    metrics: Metrics,
    principal: Principal,
    slots: threading.BoundedSemaphore,
    experiment: domain.Experiment | None,
) -> list[DecisionOut]:
    for r in requests:  # a scoped key can neither see nor decide for other accounts
        if r.payment is not None and not principal.sees(r.payment.account_id):
            raise HTTPException(404, f"no payment {r.payment.payment_id!r} for this key")
    if principal.accounts is not None:
        by_id = [r.payment_id for r in requests if r.payment is None]
        for pid, account in domain.accounts_of(engine, by_id).items():
            if not principal.sees(account):
                raise HTTPException(404, f"no payment {pid!r} is stored; send its context")
    loaded = holder.current
    if loaded is None:
        raise HTTPException(503, f"no policy loaded yet from {holder.uri}")
    try:
        with slots:  # CPU-bound: queue here rather than contend for the GIL and the store
            answers = domain.decide(requests, engine, loaded, experiment=experiment)
    except domain.UnknownPayment as exc:
        raise HTTPException(404, str(exc)) from exc
    for a in answers:
        action = ("retry" if a.retry else "no_retry") + ("+message" if a.channel else "")
        metrics.decisions.labels(action).inc()
    return answers


@router.post("", summary="The next action for one failed payment", responses=RESPONSES)
def decide_one(
    request: DecisionRequest,
    engine: EngineDep,
    policy: PolicyDep,
    metrics: MetricsDep,
    principal: SchedulerDep,
    slots: DecisionSlotsDep,
    experiment: ExperimentDep,
) -> DecisionOut:
    return _run([request], engine, policy, metrics, principal, slots, experiment)[0]


@router.post(
    "/batch", summary="The next action for up to 1,000 failed payments", responses=RESPONSES
)
def decide_batch(
    body: BatchDecisionRequest,
    engine: EngineDep,
    policy: PolicyDep,
    metrics: MetricsDep,
    principal: SchedulerDep,
    slots: DecisionSlotsDep,
    experiment: ExperimentDep,
) -> BatchDecisionOut:
    return BatchDecisionOut(
        decisions=_run(body.decisions, engine, policy, metrics, principal, slots, experiment)
    )
