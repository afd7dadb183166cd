"""Prometheus metrics of one app instance (its own registry, so apps in tests don't clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


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
        self.webhooks = Counter(
            "reclaim_webhook_events_total",
            "Webhook deliveries",
            ["endpoint", "type", "result"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
