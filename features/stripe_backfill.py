"""Backfill a platform's Stripe history into contract tables with the official SDK.

Lists charges, invoices and payment intents created since a date — on the platform and on each
connected account (``stripe_account``) — retrieves the customers they name, and assembles one
payment per invoice or standalone payment intent that failed at least once, with one attempt
per charge. Rate limits, connection errors and 5xx answers are retried with exponential
backoff; every other error stops the backfill with Stripe's message.

Stripe knows nothing of Reclaim's own customer messages, so the messages table comes back
empty; attempts carry a policy and propensity only where Reclaim wrote them into metadata.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pandas as pd
import stripe

from reclaim import contract, vocab
from reclaim.features import stripe_normalize as sn

log = logging.getLogger(__name__)
T = TypeVar("T")
Scope = str | None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter for retryable Stripe errors."""

    base_seconds: float = 0.5
    max_seconds: float = 30.0
    max_tries: int = 8

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn``; on a rate limit, connection error or 5xx, wait and try again."""
        for attempt in range(1, self.max_tries + 1):
            try:
                return fn()
            except stripe.StripeError as exc:
                retryable = (
                    isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError)
                    or (exc.http_status or 0) >= 500
                )
                if not retryable or attempt == self.max_tries:
                    raise
                wait = random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))
                log.info(
                    "%s: %s (try %d), retrying in %.2fs", what, type(exc).__name__, attempt, wait
                )
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class BackfillReport:
    """What a backfill read and what it skipped."""

    scopes: int = 0
    objects: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)


def _pages(
    client: stripe.StripeClient,
    resource: str,
    params: dict[str, Any],
    scope: Scope,
    backoff: Backoff,
) -> Iterator[dict[str, Any]]:
    """Every object of a list endpoint, page by page, each page under the backoff."""
    service = getattr(client.v1, resource)
    options: dict[str, Any] = {"stripe_account": scope} if scope else {}
    cursor: str | None = None
    while True:
        page_params = {**params, "limit": 100, **({"starting_after": cursor} if cursor else {})}
        page = backoff.call(
            lambda p=page_params: service.list(params=p, options=options),
            f"list {resource} ({scope or 'platform'})",
        )
        items = [obj.to_dict() for obj in page.data]
        yield from items
        if not page.has_more or not items:
            return
        cursor = items[-1]["id"]


def connected_accounts(
    client: stripe.StripeClient, backoff: Backoff | None = None
) -> Iterator[dict[str, Any]]:
    """Every connected account of the platform (Stripe Account objects), page by page."""
    return _pages(client, "accounts", {}, None, backoff or Backoff())


def _assemble(
    scope: Scope,
    charges: list[dict[str, Any]],
    invoices: dict[str, dict[str, Any]],
    intents: dict[str, dict[str, Any]],
    customers: dict[str, dict[str, Any]],
    report: BackfillReport,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Payments and attempts of one scope from its objects."""
    invoice_of = {
        sn.object_id(pi): inv_id
        for inv_id, inv in invoices.items()
        for pi in sn.invoice_payment_intents(inv)
    }
    groups: dict[str, list[dict[str, Any]]] = {}
    for charge in charges:
        pi_id = sn.object_id(charge.get("payment_intent"))
        if not pi_id:
            report.skipped["charge_without_payment_intent"] += 1
            continue
        groups.setdefault(invoice_of.get(pi_id, pi_id), []).append(charge)

    payments, attempts = [], []
    for pid, group in groups.items():
        group.sort(key=lambda c: (c.get("created", 0), c["id"]))
        first = next((i for i, c in enumerate(group) if c.get("status") == "failed"), None)
        if first is None:
            continue  # never failed: nothing to recover
        group = group[first:]
        head = group[0]
        obj = invoices.get(pid) or intents.get(pid)
        if obj is None:
            report.skipped["payment_object_not_listed"] += 1
            continue
        pi = intents.get(sn.object_id(head.get("payment_intent")) or "")
        try:
            decline = sn.decline_from_charge(head)
            if decline is None:  # pragma: no cover - head is a failed charge
                raise sn.Unsupported("malformed_object", f"{head['id']} has no decline")
            row = sn.payment_row(
                obj,
                scope,
                sn.to_time(head.get("created"), head["id"]),
                decline,
                payment_intent=pi,
                charge=head,
                customer=customers.get(sn.object_id(obj.get("customer")) or ""),
            )
        except sn.Unsupported as exc:
            report.skipped[exc.reason] += 1
            log.warning("skipped %s: %s", pid, exc)
            continue
        payments.append(row)
        pm_first = sn.object_id(head.get("payment_method"))
        for number, charge in enumerate(group):
            initiator = (charge.get("metadata") or {}).get("reclaim_initiator")
            if initiator not in {i.value for i in vocab.Initiator}:
                # A charge on another card than the one that failed: the customer acted.
                changed = pm_first and sn.object_id(charge.get("payment_method")) not in (
                    None,
                    pm_first,
                )
                initiator = "customer" if changed else "merchant"
            failed = charge.get("status") == "failed"
            attempt = sn.attempt_row(
                pid,
                sn.to_time(charge.get("created"), charge["id"]),
                sn.decline_from_charge(charge) if failed else None,
                charge,
                vocab.Initiator(initiator),
            )
            attempt["attempt_number"] = number
            attempts.append(attempt)
    return payments, attempts


def backfill(
    client: stripe.StripeClient,
    since: datetime,
    backoff: Backoff | None = None,
    on_scope: Callable[[Scope, int, int], None] | None = None,
) -> tuple[contract.ContractTables, BackfillReport]:
    """Read the platform's history since ``since`` into validated contract tables.

    ``on_scope(scope, done, total)`` is called after each scope for progress display.
    """
    backoff = backoff or Backoff()
    report = BackfillReport()
    created = {"created": {"gte": int(since.replace(tzinfo=since.tzinfo or UTC).timestamp())}}
    accounts = [a["id"] for a in connected_accounts(client, backoff)]
    scopes: list[Scope] = [None, *accounts]
    report.scopes = len(scopes)
    payments: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    for done, scope in enumerate(scopes, start=1):
        charges = list(_pages(client, "charges", created, scope, backoff))
        invoices = {o["id"]: o for o in _pages(client, "invoices", created, scope, backoff)}
        intents = {o["id"]: o for o in _pages(client, "payment_intents", created, scope, backoff)}
        customers: dict[str, dict[str, Any]] = {}
        wanted = {sn.object_id(o.get("customer")) for o in [*invoices.values(), *intents.values()]}
        options = {"stripe_account": scope} if scope else {}
        for cid in sorted(c for c in wanted if c):
            try:
                customers[cid] = backoff.call(
                    lambda c=cid, o=options: client.v1.customers.retrieve(c, options=o), cid
                ).to_dict()
            except stripe.InvalidRequestError:
                report.skipped["customer_not_found"] += 1
        report.objects.update(
            {
                "charges": len(charges),
                "invoices": len(invoices),
                "payment_intents": len(intents),
                "customers": len(customers),
            }
        )
        p, a = _assemble(scope, charges, invoices, intents, customers, report)
        payments += p
        attempts += a
        if on_scope is not None:
            on_scope(scope, done, len(scopes))

    frame = {
        "payments": pd.DataFrame(payments, columns=contract.PAYMENTS.column_names),
        "attempts": pd.DataFrame(attempts, columns=contract.ATTEMPTS.column_names),
        "messages": contract.empty(contract.MESSAGES),
    }
    for name, col in (("payments", "failed_at"), ("attempts", "attempted_at")):
        frame[name][col] = pd.to_datetime(frame[name][col], utc=True)
    return contract.validate(frame), report
