"""``POST /v1/decisions`` and ``POST /v1/decisions/batch``: the next action for failed
payments. Scheduler (or admin) keys only; a key scoped to some accounts sees no other
account's payments."""

from __future__ import annotations

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
from reclaim.serving.slots import FairSlots

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])

CHUNK = 50  # decisions computed per hold of a decision slot

RESPONSES = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "This key's role cannot ask for decisions"},
    404: {"description": "A payment not held by the service, or not visible to this key"},
    503: {"description": "No policy loaded yet"},
}


def _check_owners(requests: list[DecisionRequest], engine, principal: Principal) -> None:
    """Every payment a request names must be this key's to decide for, judged by its stored
    owner where it is stored: another account's payment is a 404 worded exactly as one that
    is not stored, and an inline context may not re-assign a stored payment to another
    account (409)."""
    owners = domain.accounts_of(engine, [r.id for r in requests])
    for r in requests:
        stored = owners.get(r.id)
        claimed = r.payment.account_id if r.payment is not None else None
        if any(a is not None and not principal.sees(a) for a in (stored, claimed)):
            raise HTTPException(404, domain.UnknownPayment(r.id).args[0])
        if stored is not None and claimed is not None and stored != claimed:
            raise HTTPException(
                409,
                f"payment.account_id: payment {r.id!r} is stored under another connected "
                "account; a payment's account cannot change",
            )


def _run(
    requests: list[DecisionRequest],
    engine,
    holder: PolicyHolder,
    metrics: Metrics,
    principal: Principal,
    slots: FairSlots,
    experiment: domain.Experiment | None,
) -> list[DecisionOut]:
    _check_owners(requests, engine, principal)
    loaded = holder.current
    if loaded is None:
        raise HTTPException(503, f"no policy loaded yet from {holder.uri}")
    answers: list[DecisionOut] = []
    try:
        # CPU-bound: queue here rather than contend for the GIL and the store. A batch takes
        # the slot one chunk at a time, so single decisions wait for a chunk, never a batch.
        for start in range(0, len(requests), CHUNK):
            with slots:
                chunk = requests[start : start + CHUNK]
                answers += domain.decide(chunk, engine, loaded, experiment=experiment)
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
