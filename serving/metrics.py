"""Prometheus metrics of one app instance (its own registry, so apps in tests don't clash).

Under ``reclaim serve --workers N`` every worker process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by the command) and ``/metrics``, whichever worker answers
it, reports the sum over all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def render_registry(registry: CollectorRegistry) -> bytes:
    """The exposition of ``registry``, or of every worker's values in multiprocess mode."""
    folder = os.environ.get(MULTIPROCESS_DIR)
    if not folder:
        return generate_latest(registry)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, folder)
    return generate_latest(merged)


def worker_exited() -> None:
    """Drop this process's live gauges from the multiprocess sums (at a worker's shutdown)."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())


class Metrics:
    """Request counts and latencies, decisions by action, webhook events by type and result."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "reclaim_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "reclaim_http_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.decisions = Counter(
            "reclaim_decisions_total", "Decisions by action", ["action"], registry=self.registry
        )
        # train/serve skew over this process's recent decisions (serving.skew): the worst
        # worker's value is the one to watch
        self.feature_missing = Gauge(
            "reclaim_feature_missing_share",
            "Share of recent decisions with the feature missing (reference: at training)",
            ["feature", "window"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.feature_psi = Gauge(
            "reclaim_feature_psi",
            "Population stability index of the feature over recent decisions vs training",
            ["feature"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.feature_drift = Gauge(
            "reclaim_feature_drift",
            "1 while the feature drifts past docs/operations.md's thresholds",
            ["feature"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.decision_batch = Histogram(
            "reclaim_decision_batch_size",
            "Decisions computed per model call (requests waiting together are merged)",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.webhooks = Counter(
            "reclaim_webhook_events_total",
            "Webhook deliveries",
            ["endpoint", "type", "result"],
            registry=self.registry,
        )
        self.webhook_retries = Counter(
            "reclaim_webhook_retries_total",
            "Stored events the background worker processed again, by result",
            ["result"],
            registry=self.registry,
        )
        self.webhooks_stuck = Gauge(
            "reclaim_webhook_events_stuck",
            "Events still unprocessed past RECLAIM_WEBHOOK_STUCK_SECONDS (alert when above 0)",
            registry=self.registry,
            multiprocess_mode="livemax",  # every worker counts the same store's events
        )
        self.webhooks_dead = Gauge(
            "reclaim_webhook_events_dead",
            "Events set aside after failing every try (reclaim events list; alert when above 0)",
            registry=self.registry,
            multiprocess_mode="livemax",
        )

    def render(self) -> bytes:
        return render_registry(self.registry)


class SchedulerMetrics:
    """The scheduler's actions by outcome, its delay behind due times, messages, and alerts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.actions = Counter(
            "reclaim_scheduler_actions_total",
            "Due actions by what became of them",
            ["outcome"],
            registry=self.registry,
        )
        self.delay = Histogram(
            "reclaim_scheduler_delay_seconds",
            "Wall seconds from an action's due time to its execution",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
        )
        self.messages = Counter(
            "reclaim_scheduler_messages_total",
            "Outbox messages by result",
            ["result"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "reclaim_scheduler_alerts_total",
            "Conditions that need a person: accounts Reclaim may no longer act for",
            ["kind"],
            registry=self.registry,
        )
        self.leading = Gauge(
            "reclaim_scheduler_leading",
            "1 while this scheduler holds the lease and acts, 0 while it stands by",
            registry=self.registry,
        )
        self.due_late = Gauge(
            "reclaim_scheduler_due_late",
            "Open actions more than a minute past their due time (set by the leader)",
            registry=self.registry,
        )
        self.oldest_due = Gauge(
            "reclaim_scheduler_oldest_due_seconds",
            "Seconds the oldest open action is past its due time (set by the leader)",
            registry=self.registry,
        )
