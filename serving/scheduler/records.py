"""The scheduler's record: one ``scheduled_actions`` row per decision point, and the query
of the payments waiting for a decision."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from reclaim.serving import stripe_actions
from reclaim.serving.store import tables as t

OPEN = ("scheduled", "in_flight")
PLAN_BATCH = 200  # decisions asked per tick: keeps a tick well inside the lease
ACT_BATCH = 200  # due actions re-checked and recorded together


def action_row(
    payment_id: str,
    account_id: str,
    after_attempt: int,
    n: int,
    decided_at: datetime,
    retry_at: datetime | None,
    model_version: str | None,
    propensity: float | None,
    no_retry_reason: str | None = None,
) -> dict[str, Any]:
    """A ``scheduled_actions`` row: the ``n``-th plan of a payment's decision point after
    attempt ``after_attempt`` — a retry due at ``retry_at`` under its idempotency key, or, with
    no ``retry_at``, done at once as "no retry"."""
    attempt = after_attempt + 1
    return {
        "action_id": f"{account_id}:{payment_id}:{after_attempt}:{n}",
        "payment_id": payment_id,
        "account_id": account_id,
        "after_attempt": after_attempt,
        "decided_at": decided_at,
        "model_version": model_version,
        "propensity": propensity,
        "retry_at": retry_at,
        "status": "scheduled" if retry_at else "done",
        "attempt_number": attempt if retry_at else None,
        "idempotency_key": stripe_actions.idempotency_key(account_id, payment_id, attempt)
        if retry_at
        else None,
        "outcome": None if retry_at else f"no_retry:{no_retry_reason}",
        "tries": 0,
        "updated_at": datetime.now(UTC),
    }


@functools.cache
def pending_statement(recent: bool) -> sa.Select:
    """The query of :meth:`Scheduler.pending_decisions`, built once (a driver of simulated
    time asks it thousands of times); parameters ``limit`` and, if ``recent``, ``since``."""
    at, a, p = t.attempts.c, t.scheduled_actions.c, t.payments.c
    last = sa.select(at.account_id, at.payment_id, sa.func.max(at.attempt_number).label("n"))
    if recent:
        since = sa.bindparam("since", type_=at.attempted_at.type)
        touched = (
            sa.select(at.account_id, at.payment_id)
            .where(at.attempted_at >= since)
            .union(sa.select(a.account_id, a.payment_id).where(a.status == "replan"))
            .subquery("touched")
        )
        # joined, not ``IN``: SQLite scans a table for a row value IN a subquery, and looks
        # each touched payment's attempts up by its index for a join
        last = last.select_from(
            touched.join(
                t.attempts,
                sa.and_(
                    at.account_id == touched.c.account_id, at.payment_id == touched.c.payment_id
                ),
            )
        )
    last = last.group_by(at.account_id, at.payment_id).subquery()

    def mine(c: Any) -> Any:  # rows about the same payment as ``last``'s row
        return sa.and_(c.account_id == last.c.account_id, c.payment_id == last.c.payment_id)

    recovered = sa.exists().where(mine(at), at.outcome == "succeeded")
    acted = sa.exists().where(
        mine(a),
        sa.or_(a.status.in_(OPEN), sa.and_(a.after_attempt == last.c.n, a.status != "replan")),
    )
    replans = (
        sa.select(sa.func.count()).where(mine(a), a.after_attempt == last.c.n).scalar_subquery()
    )
    return (
        sa.select(last.c.account_id, last.c.payment_id, last.c.n, replans)
        .join(t.payments, mine(p))
        .where(~recovered, ~acted, p.closed_at.is_(None))
        .where(p.account_id.not_in(sa.select(t.account_status.c.account_id)))
        .order_by(last.c.payment_id, last.c.account_id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
