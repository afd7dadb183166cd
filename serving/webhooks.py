"""Stripe webhook ingestion: verify, store the raw event, process each event id exactly once.

:func:`receive` is what the platform and Connect endpoints call. It verifies the signature with
the endpoint's own secret through the official SDK (a forged, unsigned or stale delivery raises
:class:`InvalidWebhook` and stores nothing), stores the raw event before the caller answers 2xx,
and processes it unless it was already received. Processing turns failures, recoveries and card
updates into contract rows through the feature pipeline's normalizer; an event that fails to
process stays stored as ``failed`` and :func:`process_pending` retries it, so nothing is lost.

Stripe reports one failure through up to three events (``invoice.payment_failed``,
``payment_intent.payment_failed``, ``charge.failed``): a failure within
:data:`SAME_ATTEMPT_WINDOW` of one already stored for the payment is the same attempt. Real
retries are at least an hour apart under the network rules, so the window cannot merge two.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine

from reclaim import contract
from reclaim.features import stripe_normalize as sn
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t

log = logging.getLogger(__name__)

SAME_ATTEMPT_WINDOW = timedelta(minutes=5)
ENDPOINTS = ("platform", "connect")


class InvalidWebhook(ValueError):
    """A delivery that must be rejected with 400 and not stored."""


@dataclass(frozen=True)
class Receipt:
    """What happened to one delivery."""

    event_id: str
    event_type: str
    first_delivery: bool
    status: str  # processed | ignored | failed | received (already stored earlier)


def verify(
    payload: bytes, sig_header: str | None, secret: str, tolerance: int = 300
) -> dict[str, Any]:
    """The event as a dict, if ``sig_header`` is a valid, fresh Stripe signature of
    ``payload`` under ``secret``; else :class:`InvalidWebhook` naming what is wrong."""
    if not sig_header:
        raise InvalidWebhook("missing Stripe-Signature header")
    try:
        stripe.Webhook.construct_event(payload, sig_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise InvalidWebhook(f"signature verification failed: {exc.user_message or exc}") from exc
    except ValueError as exc:
        raise InvalidWebhook(f"payload is not a JSON event: {exc}") from exc
    event = json.loads(payload)
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise InvalidWebhook("payload has no event id")
    return event


def receive(
    engine: Engine,
    endpoint: str,
    payload: bytes,
    sig_header: str | None,
    secret: str,
    tolerance: int = 300,
) -> Receipt:
    """Verify, store and (on first delivery) process one webhook delivery."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    event = verify(payload, sig_header, secret, tolerance)
    if endpoint == "connect" and not event.get("account"):
        raise InvalidWebhook("a Connect endpoint event must name its account")
    first = repo.record_event(
        engine,
        event_id=event["id"],
        endpoint=endpoint,
        event_type=str(event.get("type")),
        account_id=event.get("account"),
        livemode=bool(event.get("livemode")),
        payload=payload.decode(),
    )
    status = process_event(engine, event["id"]) if first else "received"
    return Receipt(event["id"], str(event.get("type")), first, status)


def process_event(engine: Engine, event_id: str) -> str:
    """Process a stored event once; returns its status afterwards.

    Already processed or ignored events are left alone. An error while processing marks the
    event ``failed`` with the error, for :func:`process_pending` to retry.
    """
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(t.stripe_events.c.payload, t.stripe_events.c.status).where(
                t.stripe_events.c.event_id == event_id
            )
        ).one_or_none()
    if row is None:
        raise KeyError(f"no stored event {event_id}")
    if row.status in ("processed", "ignored"):
        return row.status
    try:
        with engine.begin() as conn:
            status, note = _apply(conn, json.loads(row.payload), event_id)
            _set_status(conn, event_id, status, note)
        return status
    except Exception as exc:  # kept and retried, never lost
        log.exception("processing event %s failed", event_id)
        with engine.begin() as conn:
            _set_status(conn, event_id, "failed", f"{type(exc).__name__}: {exc}")
        return "failed"


def process_pending(engine: Engine) -> dict[str, int]:
    """Retry every stored event not yet processed; returns the count per resulting status."""
    with engine.connect() as conn:
        ids = (
            conn.execute(
                sa.select(t.stripe_events.c.event_id)
                .where(t.stripe_events.c.status.in_(["received", "failed"]))
                .order_by(t.stripe_events.c.received_at)
            )
            .scalars()
            .all()
        )
    counts: dict[str, int] = {}
    for event_id in ids:
        status = process_event(engine, event_id)
        counts[status] = counts.get(status, 0) + 1
    return counts


def _set_status(conn: sa.Connection, event_id: str, status: str, note: str | None) -> None:
    conn.execute(
        sa.update(t.stripe_events)
        .where(t.stripe_events.c.event_id == event_id)
        .values(status=status, error=note, processed_at=datetime.now(UTC))
    )


#: The idempotency key of Reclaim's own retries (``serving.stripe_actions.idempotency_key``).
OWN_RETRY = re.compile(r"^reclaim-retry-.+-(\d+)$")


def _apply(conn: sa.Connection, event: dict[str, Any], event_id: str) -> tuple[str, str | None]:
    """Write one event's rows inside ``conn``'s transaction; returns (status, note)."""
    try:
        rows = sn.normalize_event(event)
    except sn.Unsupported as exc:
        return "ignored", exc.reason
    if rows.kind == "ignored":
        return "ignored", "event type not used"
    if rows.kind == "card_update":
        update = rows.card_update or {}
        if not update.get("customer_id"):
            return "ignored", "card update without a customer"
        row = {
            "event_id": event_id,
            "customer_id": update["customer_id"],
            "account_id": update.get("account_id"),
            "updated_at": _utc(update["updated_at"]).to_pydatetime(),
        }
        repo.insert_rows_ignoring(conn, t.card_updates, [row])
        return "processed", rows.kind
    if rows.kind == "deauthorized":
        block_account(conn, str(rows.deauthorized_account), "deauthorized", event_id)
        return "processed", rows.kind
    attempt = rows.attempt
    assert attempt is not None  # failures and recoveries always carry an attempt
    pid = attempt["payment_id"]
    stored = conn.execute(
        sa.select(
            t.attempts.c.attempt_number, t.attempts.c.attempted_at, t.attempts.c.outcome
        ).where(t.attempts.c.payment_id == pid)
    ).all()
    known = conn.execute(
        sa.select(sa.func.count()).select_from(t.payments).where(t.payments.c.payment_id == pid)
    ).scalar()
    if not known:
        if rows.payment is None:
            return "ignored", "payment not known yet"
        _insert(conn, contract.PAYMENTS, t.payments, rows.payment)
        stored = []
    own = OWN_RETRY.match(str((event.get("request") or {}).get("idempotency_key") or ""))
    if own:  # Reclaim's own retry: its number is in the key, and the scheduler records it too
        attempt["attempt_number"] = int(own.group(1))
        attempt["initiator"] = "merchant"
        _insert(conn, contract.ATTEMPTS, t.attempts, attempt)
        return "processed", "reclaim's own retry"
    at = _utc(attempt["attempted_at"])
    if any(
        outcome == attempt["outcome"] and abs(_utc(when) - at) <= SAME_ATTEMPT_WINDOW
        for _, when, outcome in stored
    ):
        # Stripe reports one attempt through several events (invoice, intent, charge)
        return "processed", "same attempt as one already stored"
    attempt["attempt_number"] = 1 + max((n for n, _, _ in stored), default=-1)
    _insert(conn, contract.ATTEMPTS, t.attempts, attempt)
    return "processed", None


def block_account(conn: sa.Connection, account_id: str, reason: str, detail: str) -> None:
    """Stop acting for an account: mark it blocked and cancel its scheduled actions."""
    now = datetime.now(UTC)
    repo.insert_rows_ignoring(
        conn, t.account_status, [{"account_id": account_id, "blocked_at": now, "reason": reason}]
    )
    conn.execute(
        sa.update(t.scheduled_actions)
        .where(t.scheduled_actions.c.account_id == account_id)
        .where(t.scheduled_actions.c.status == "scheduled")
        .values(status="cancelled", outcome=f"account_{reason}", updated_at=now)
    )
    log.error(
        "ALERT account %s blocked (%s: %s): its actions are stopped", account_id, reason, detail
    )


def _utc(value: Any) -> pd.Timestamp:
    """A timestamp in UTC (SQLite returns naive datetimes, stored as UTC)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _insert(conn: sa.Connection, spec: contract.Table, table: sa.Table, row: dict) -> None:
    frame = contract.conform(spec, pd.DataFrame([row]))
    repo.insert_rows(conn, table, frame)
