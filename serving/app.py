"""The scoring API's app factory. ``reclaim serve`` runs it under uvicorn.

Nothing happens at import time: the store, the migrations, the metrics and the policy are set
up in the app's lifespan from the settings given (or read from the environment).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from reclaim import logs
from reclaim.serving import dashboard, guards
from reclaim.serving import decide as domain
from reclaim.serving import webhooks as events
from reclaim.serving.auth import KeyCache
from reclaim.serving.batcher import DecisionBatcher
from reclaim.serving.decide import Experiment
from reclaim.serving.metrics import Metrics, worker_exited
from reclaim.serving.policy_holder import PolicyHolder
from reclaim.serving.report_cache import ReportCache
from reclaim.serving.routes import accounts, decisions, health, payments, stats, webhooks
from reclaim.serving.skew import SkewMonitor
from reclaim.serving.store import repository as repo
from reclaim.serving.store.configs import ConfigCache
from reclaim.serving.store.migrate import ready
from reclaim.serving.store.repository import make_engine
from reclaim.serving.stripe_reads import StripeReader
from reclaim.settings import Settings, get_settings


def create_app(settings: Settings | None = None, configure_logs: bool | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment). ``configure_logs``
    (default: when the settings come from the environment, as in ``reclaim serve``'s worker
    processes) sets the process's logging from ``RECLAIM_LOG_LEVEL`` and
    ``RECLAIM_LOG_FORMAT``."""
    if configure_logs is None:
        configure_logs = settings is None
    settings = settings or get_settings()
    if configure_logs:
        logs.configure(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.make_data_folder(settings.database_url)
        ready(settings.database_url, settings.migrate_on_start)
        app.state.engine = make_engine(settings.database_url)
        holder = PolicyHolder(settings.policy_uri, settings.mlflow_tracking_uri)
        holder.refresh()
        holder.watch(settings.policy_reload_seconds)
        app.state.policy = holder
        metrics = app.state.metrics
        engine, experiment = app.state.engine, app.state.experiment
        config_cache = app.state.config_cache

        skew = app.state.skew

        def decide(requests: list) -> list:
            loaded = holder.current
            if loaded is None:
                raise domain.NoPolicy(holder.uri)
            skew.use(getattr(loaded.policy, "feature_reference", None))
            return domain.decide(
                requests,
                engine,
                loaded,
                experiment=experiment,
                config_cache=config_cache,
                observe=skew.observe,
            )

        batcher = DecisionBatcher(
            decide,
            lambda ids, accounts: repo.accounts_holding(engine, ids, accounts),
            settings.decision_batch_max,
        )
        batcher.on_batch = metrics.decision_batch.observe
        app.state.batcher = batcher.start()

        def counted(counts: dict[str, int], stuck: int, dead: int) -> None:
            for result, n in counts.items():
                metrics.webhook_retries.labels(result).inc(n)
            metrics.webhooks_stuck.set(stuck)
            metrics.webhooks_dead.set(dead)

        retrier, stop_retrying = events.retry_in_background(
            app.state.engine,
            settings.webhook_retry_seconds,
            timedelta(seconds=settings.webhook_stuck_seconds),
            counted,
            app.state.stripe_reader,
        )
        app.state.report_warm_up = dashboard.warm_reports(app)
        try:
            yield
        finally:
            batcher.stop()
            stop_retrying.set()
            retrier.join(10)
            holder.stop()
            app.state.engine.dispose()
            worker_exited()

    app = FastAPI(
        title="Reclaim",
        version="0.1.0",
        lifespan=lifespan,
        summary="Recover failed payments on Stripe Connect marketplaces.",
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.skew = SkewMonitor(None, app.state.metrics)
    app.state.keys = KeyCache(settings.auth_cache_seconds)
    app.state.config_cache = ConfigCache(settings.config_cache_seconds)
    app.state.reports = ReportCache(settings.report_cache_seconds)
    app.state.experiment = Experiment.from_settings(settings)
    # what webhook events lack is read from Stripe; without a key such events wait (and say so)
    app.state.stripe_reader = (
        StripeReader(settings.stripe_client()) if settings.stripe_api_key is not None else None
    )

    app.add_middleware(guards.RequestMetrics, metrics=app.state.metrics)
    app.add_middleware(guards.RequestIds)
    app.add_exception_handler(RequestValidationError, guards.validation_error)
    app.add_exception_handler(Exception, guards.internal_error)
    app.add_middleware(
        guards.BodyLimit,
        limit=lambda path: (
            settings.webhook_max_bytes
            if path.startswith("/v1/webhooks/")
            else settings.max_body_bytes
        ),
    )

    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(decisions.router)
    app.include_router(payments.router)
    app.include_router(accounts.router)
    app.include_router(stats.router)
    app.include_router(dashboard.router)
    return app
