"""Where the scheduler's decisions come from: the scoring API over HTTP, or a stand-in that
never retries (for measuring the scheduler alone, and in tests)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import httpx

from reclaim.serving.store import repository as repo


class Decider(Protocol):
    def decide(self, refs: list[repo.Ref], now: datetime) -> list[dict[str, Any]]:
        """The scoring API's decisions for stored payments (account, id), at ``now``."""


class ScoringClient:
    """The scoring API over HTTP, with a scheduler key."""

    def __init__(self, url: str, api_key: str, timeout: float = 60.0):
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def decide(self, refs: list[repo.Ref], now: datetime) -> list[dict[str, Any]]:
        body = {
            "decisions": [
                {"account_id": a, "payment_id": p, "now": now.isoformat()} for a, p in refs
            ]
        }
        response = self.http.post("/v1/decisions/batch", json=body)
        response.raise_for_status()
        return response.json()["decisions"]


class NoRetry:
    """A decider that answers "no retry, no message" at once for every payment: for measuring
    the scheduler without the scoring API, and in tests. ``asked`` lists the payments asked."""

    def __init__(self) -> None:
        self.asked: list[repo.Ref] = []

    def decide(self, refs: list[repo.Ref], now: datetime) -> list[dict[str, Any]]:
        self.asked += refs
        return [
            {
                "account_id": a,
                "payment_id": p,
                "decided_at": now.isoformat(),
                "retry": None,
                "no_retry_reason": "policy",
                "channel": None,
                "propensity": 1.0,
                "model_version": "no-retry",
            }
            for a, p in refs
        ]
