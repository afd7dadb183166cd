"""Stripe webhook endpoints: one for the platform, one for Connect, each with its own secret."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from reclaim.serving import webhooks
from reclaim.serving.deps import EngineDep, MetricsDep, SettingsDep

router = APIRouter(prefix="/v1/webhooks/stripe", tags=["webhooks"])

_SECRET_SETTING = {
    "platform": "stripe_webhook_secret_platform",
    "connect": "stripe_webhook_secret_connect",
}


async def _receive(
    endpoint: str, request: Request, signature: str | None, settings, engine, metrics
) -> dict[str, object]:
    secret = getattr(settings, _SECRET_SETTING[endpoint])
    if secret is None:
        raise HTTPException(503, f"RECLAIM_{_SECRET_SETTING[endpoint].upper()} is not set")
    body = await request.body()
    try:  # database work off the event loop: a locked store must not stall other routes
        receipt = await run_in_threadpool(
            webhooks.receive,
            engine,
            endpoint,
            body,
            signature,
            secret.get_secret_value(),
            settings.webhook_tolerance_seconds,
            timedelta(seconds=settings.webhook_retry_seconds),
            request.app.state.stripe_reader,
        )
    except webhooks.InvalidWebhook as exc:
        metrics.webhooks.labels(endpoint, "unknown", "rejected").inc()
        raise HTTPException(400, str(exc)) from exc
    result = receipt.status if receipt.first_delivery else "duplicate"
    metrics.webhooks.labels(endpoint, receipt.event_type, result).inc()
    if receipt.status == "failed":  # stored; a non-2xx makes Stripe deliver it again
        raise HTTPException(
            503,
            f"event {receipt.event_id} is stored but could not be processed yet; "
            "it is retried in the background and on redelivery",
            headers={"Retry-After": "60"},
        )
    return {"received": True, "event_id": receipt.event_id, "status": result}


def _route(endpoint: str, summary: str) -> None:
    """Register ``POST /v1/webhooks/stripe/<endpoint>``, verified with that endpoint's secret."""

    async def handler(
        request: Request,
        settings: SettingsDep,
        engine: EngineDep,
        metrics: MetricsDep,
        stripe_signature: Annotated[str | None, Header()] = None,
    ) -> dict[str, object]:
        return await _receive(endpoint, request, stripe_signature, settings, engine, metrics)

    router.post(
        f"/{endpoint}",
        summary=summary,
        name=f"stripe_webhook_{endpoint}",
        responses={
            400: {"description": "Forged, unsigned, stale or malformed delivery"},
            413: {"description": "Body larger than RECLAIM_WEBHOOK_MAX_BYTES"},
            503: {
                "description": "This endpoint's signing secret is not configured, or the "
                "event is stored but failed to process (Stripe redelivers it)"
            },
        },
    )(handler)


_route("platform", "Events from the platform's own account")
_route("connect", "Events from connected accounts (each names its account)")
