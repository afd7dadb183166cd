"""``POST /v1/decisions`` and ``POST /v1/decisions/batch``: the next action for failed
payments. Scheduler (or admin) keys only; a key scoped to some accounts sees no other
account's payments.

Both go through the app's :class:`~reclaim.serving.batcher.DecisionBatcher`: requests waiting
while a decision is computed are decided together, and the event loop never computes one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from reclaim import logs
from reclaim.serving import decide as domain
from reclaim.serving.auth import Principal
from reclaim.serving.batcher import DecisionBatcher
from reclaim.serving.deps import BatcherDep, EngineDep, MetricsDep, PolicyDep, SchedulerDep
from reclaim.serving.metrics import Metrics
from reclaim.serving.policy_holder import PolicyHolder
from reclaim.serving.schemas import (
    BatchDecisionOut,
    BatchDecisionRequest,
    DecisionOut,
    DecisionRequest,
)
from reclaim.serving.store import repository as repo

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])

CHUNK = 50  # a batch is queued this many decisions at a time: single requests wait for a chunk

RESPONSES = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "This key's role cannot ask for decisions"},
    404: {"description": "A payment not held by the service, or not visible to this key"},
    409: {
        "description": "An inline context says otherwise than the store about a stored "
        "payment (a field, an attempt), or an id alone is held by several of the key's "
        "accounts: the field is named"
    },
    503: {"description": "No policy loaded yet"},
}


@contextmanager
def _as_http() -> Iterator[None]:
    """The domain's refusals as HTTP errors."""
    try:
        yield
    except domain.UnknownPayment as exc:
        raise HTTPException(404, str(exc)) from exc
    except (domain.AmbiguousPayment, domain.ContextConflict) as exc:
        raise HTTPException(409, str(exc)) from exc
    except domain.NoPolicy as exc:
        raise HTTPException(503, str(exc)) from exc


async def _run(
    requests: list[DecisionRequest],
    holder: PolicyHolder,
    metrics: Metrics,
    principal: Principal,
    batcher: DecisionBatcher,
) -> list[DecisionOut]:
    if holder.current is None:
        raise HTTPException(503, str(domain.NoPolicy(holder.uri)))
    answers: list[DecisionOut] = []
    with _as_http():
        for start in range(0, len(requests), CHUNK):
            answers += await batcher.decide(requests[start : start + CHUNK], principal)
    for a in answers:
        action = ("retry" if a.retry else "no_retry") + ("+message" if a.channel else "")
        metrics.decisions.labels(action).inc()
    return answers


@router.post("", summary="The next action for one failed payment", responses=RESPONSES)
async def decide_one(
    request: DecisionRequest,
    policy: PolicyDep,
    metrics: MetricsDep,
    principal: SchedulerDep,
    batcher: BatcherDep,
) -> DecisionOut:
    with logs.bound(account_id=request.account, payment_id=request.id):
        return (await _run([request], policy, metrics, principal, batcher))[0]


@router.post(
    "/batch", summary="The next action for up to 1,000 failed payments", responses=RESPONSES
)
async def decide_batch(
    body: BatchDecisionRequest,
    engine: EngineDep,
    policy: PolicyDep,
    metrics: MetricsDep,
    principal: SchedulerDep,
    batcher: BatcherDep,
) -> BatchDecisionOut:
    # all or nothing: every payment is checked before the first chunk is decided (the batcher
    # checks each chunk again as it decides it)
    requests = body.decisions
    held = await run_in_threadpool(
        repo.accounts_holding, engine, [r.id for r in requests], principal.accounts
    )
    with _as_http():
        domain.resolve(requests, held, principal.sees)
    return BatchDecisionOut(decisions=await _run(requests, policy, metrics, principal, batcher))
