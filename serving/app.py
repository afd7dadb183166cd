"""The scoring API's app factory. ``reclaim serve`` runs it under uvicorn.

Nothing happens at import time: the store, the migrations, the metrics and the policy are set
up in the app's lifespan from the settings given (or read from the environment).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from reclaim.serving.decide import Experiment
from reclaim.serving.metrics import Metrics
from reclaim.serving.policy_holder import PolicyHolder
from reclaim.serving.routes import accounts, decisions, health, payments, webhooks
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade(settings.database_url)
        app.state.engine = make_engine(settings.database_url)
        holder = PolicyHolder(settings.policy_uri, settings.mlflow_tracking_uri)
        holder.refresh()
        holder.watch(settings.policy_reload_seconds)
        app.state.policy = holder
        try:
            yield
        finally:
            holder.stop()
            app.state.engine.dispose()

    app = FastAPI(
        title="Reclaim",
        version="0.1.0",
        lifespan=lifespan,
        summary="Recover failed payments on Stripe Connect marketplaces.",
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.decision_slots = threading.BoundedSemaphore(settings.decision_concurrency)
    app.state.experiment = Experiment.from_settings(settings)

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        app.state.metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        app.state.metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(decisions.router)
    app.include_router(payments.router)
    app.include_router(accounts.router)
    return app
