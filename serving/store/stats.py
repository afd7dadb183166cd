"""Recovery statistics computed in the database: what the ``/v1/stats`` API serves.

Each query aggregates in SQL (SQLite and PostgreSQL alike) over the failed payments of a
period — by the time of their first failure — and whether each was recovered (a succeeded
attempt). Money is summed per currency in minor units, exactly, and converted to major units
only on the way out; it is never summed across currencies. ``accounts`` restricts every query
to the connected accounts a scoped key may see (None: all).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim import vocab
from reclaim.contract import ZERO_DECIMAL
from reclaim.serving.store import tables as t

#: Columns the accounts table may be sorted by.
ACCOUNT_SORTS = ("failed", "recovered", "recovery_rate", "recovered_amount", "account_id")


def major(minor: Any, currency: str) -> float:
    """Minor units as the currency's major units (cents to dollars; yen stay yen)."""
    if minor is None:
        return 0.0
    minor = int(minor)  # PostgreSQL sums integers as NUMERIC
    return float(minor) if currency in ZERO_DECIMAL else minor / 100.0


def _recovered() -> sa.Subquery:
    a = t.attempts.c
    return (
        sa.select(a.payment_id.label("payment_id"))
        .where(a.outcome == "succeeded")
        .group_by(a.payment_id)
        .subquery("ok")
    )


def _scope(
    query: sa.Select, start: datetime, end: datetime, accounts: Collection[str] | None
) -> sa.Select:
    p = t.payments.c
    query = query.where(p.failed_at >= start, p.failed_at < end)
    if accounts is not None:
        query = query.where(p.account_id.in_(sorted(accounts)))
    return query


def _totals(ok: sa.Subquery) -> list[Any]:
    p = t.payments.c
    won = ok.c.payment_id.is_not(None)
    return [
        sa.func.count().label("failed"),
        sa.func.count(ok.c.payment_id).label("recovered"),
        sa.func.coalesce(sa.func.sum(sa.case((won, p.amount), else_=0)), 0).label("amount"),
        sa.func.coalesce(
            sa.func.sum(sa.case((won, sa.func.coalesce(p.application_fee_amount, 0)), else_=0)),
            0,
        ).label("fee"),
    ]


def _row(currency: str, failed: int, recovered: int, amount: int, fee: int) -> dict[str, Any]:
    return {
        "currency": currency,
        "failed": int(failed),
        "recovered": int(recovered),
        "recovery_rate": recovered / failed if failed else 0.0,
        "recovered_amount": major(amount, currency),
        "platform_fee": major(fee, currency),
        "account_share": major(int(amount) - int(fee), currency),
    }


def _day(engine: Engine) -> Any:
    """The UTC calendar day of a payment's first failure, in this database's dialect."""
    column = t.payments.c.failed_at
    if engine.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.strftime("%Y-%m-%d", column)


def overview(
    engine: Engine,
    start: datetime,
    end: datetime,
    accounts: Collection[str] | None = None,
) -> dict[str, Any]:
    """Failed and recovered payments of ``[start, end)`` per currency, with the same totals
    for the period of the same length just before (``previous``), and per UTC day.

    Returns ``{"currencies": [...], "previous": [...], "by_day": [...]}``; each currency row
    has ``failed``, ``recovered``, ``recovery_rate`` (in [0, 1]), ``recovered_amount``,
    ``platform_fee`` and ``account_share`` (major units of that currency); a day row has
    ``day`` (``YYYY-MM-DD``), ``currency``, ``failed``, ``recovered`` and
    ``recovered_amount``.
    """
    ok = _recovered()
    p = t.payments.c
    base = sa.select(p.currency, *_totals(ok)).select_from(
        t.payments.outerjoin(ok, ok.c.payment_id == p.payment_id)
    )
    day = _day(engine).label("day")
    daily = sa.select(day, p.currency, *_totals(ok)).select_from(
        t.payments.outerjoin(ok, ok.c.payment_id == p.payment_id)
    )
    with engine.connect() as conn:
        now = conn.execute(
            _scope(base, start, end, accounts).group_by(p.currency).order_by(p.currency)
        ).all()
        before = conn.execute(
            _scope(base, start - (end - start), start, accounts)
            .group_by(p.currency)
            .order_by(p.currency)
        ).all()
        days = conn.execute(
            _scope(daily, start, end, accounts).group_by(day, p.currency).order_by(day, p.currency)
        ).all()
    return {
        "currencies": [_row(*r) for r in now],
        "previous": [_row(*r) for r in before],
        "by_day": [
            {
                "day": str(d),
                "currency": cur,
                "failed": int(f),
                "recovered": int(r),
                "recovered_amount": major(a, cur),
            }
            for d, cur, f, r, a, _ in days
        ],
    }


def account_rows(
    engine: Engine,
    start: datetime,
    end: datetime,
    accounts: Collection[str] | None = None,
    search: str | None = None,
    sort: str = "failed",
    descending: bool = True,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One row per connected account and currency of ``[start, end)``, sorted and paged in
    the database; with the number of rows in all pages. ``search`` matches account ids by
    substring."""
    if sort not in ACCOUNT_SORTS:
        raise ValueError(f"sort must be one of {ACCOUNT_SORTS}, got {sort!r}")
    ok = _recovered()
    p = t.payments.c
    grouped = _scope(
        sa.select(p.account_id, p.currency, *_totals(ok)).select_from(
            t.payments.outerjoin(ok, ok.c.payment_id == p.payment_id)
        ),
        start,
        end,
        accounts,
    )
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        grouped = grouped.where(p.account_id.like(f"%{escaped}%", escape="\\"))
    table = grouped.group_by(p.account_id, p.currency).subquery("per_account")
    keys = {
        "failed": table.c.failed,
        "recovered": table.c.recovered,
        "recovery_rate": sa.cast(table.c.recovered, sa.Float) / table.c.failed,
        "recovered_amount": table.c.amount,
        "account_id": table.c.account_id,
    }
    key = keys[sort].desc() if descending else keys[sort].asc()
    # amounts compare only within a currency: sorted by amount, rows go currency by currency
    first = [table.c.currency] if sort == "recovered_amount" else []
    query = (
        sa.select(table)
        .order_by(*first, key, table.c.account_id, table.c.currency)
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    return [
        {"account_id": account, **_row(currency, f, r, a, fee)}
        for account, currency, f, r, a, fee in rows
    ], int(total)


#: What a breakdown may group by: a payment column, the decline category (from the code, by
#: ``reclaim.vocab``), or how many merchant retries the payment got.
BREAKDOWNS = ("decline_category", "decline_code", "charge_model", "card_brand", "retries")


def breakdown(
    engine: Engine,
    start: datetime,
    end: datetime,
    by: str,
    accounts: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Failed and recovered payments of ``[start, end)`` and the recovery rate per group of
    ``by`` (one of :data:`BREAKDOWNS`): counts only, so currencies never mix."""
    if by not in BREAKDOWNS:
        raise ValueError(f"by must be one of {BREAKDOWNS}, got {by!r}")
    ok = _recovered()
    p, a = t.payments.c, t.attempts.c
    source = t.payments.outerjoin(ok, ok.c.payment_id == p.payment_id)
    if by == "retries":
        tried = (
            sa.select(a.payment_id.label("payment_id"), sa.func.count().label("n"))
            .where(a.initiator == "merchant", a.attempt_number > 0)
            .group_by(a.payment_id)
            .subquery("tried")
        )
        source = source.outerjoin(tried, tried.c.payment_id == p.payment_id)
        key: Any = sa.func.coalesce(tried.c.n, 0)
    else:
        key = p.decline_code if by == "decline_category" else getattr(p, by)
    query = _scope(
        sa.select(key.label("key"), sa.func.count(), sa.func.count(ok.c.payment_id)).select_from(
            source
        ),
        start,
        end,
        accounts,
    ).group_by(key)
    with engine.connect() as conn:
        rows = [(k, int(f), int(r)) for k, f, r in conn.execute(query)]
    if by == "decline_category":
        merged: dict[str, list[int]] = {}
        for code, f, r in rows:
            category = vocab.decline_category(code, None, None, None) or "unknown"
            merged.setdefault(category, [0, 0])
            merged[category][0] += f
            merged[category][1] += r
        rows = [(k, f, r) for k, (f, r) in merged.items()]
    out = [
        {"key": str(k), "failed": f, "recovered": r, "recovery_rate": r / f if f else 0.0}
        for k, f, r in rows
    ]
    if by == "retries":
        return sorted(out, key=lambda row: int(row["key"]))
    return sorted(out, key=lambda row: (-row["failed"], row["key"]))


def operations(
    engine: Engine,
    now: datetime,
    stuck_after: float,
    accounts: Collection[str] | None = None,
) -> dict[str, Any]:
    """How the service is keeping up at ``now``: retries due and not yet made (and how late the
    oldest is, in seconds), actions in flight, webhook events not processed after
    ``stuck_after`` seconds (platform-wide: events name no account until processed), and
    decisions of the last 30 days that hit a network retry cap."""
    s, e, d = t.scheduled_actions.c, t.stripe_events.c, t.decision_log.c
    due = sa.select(sa.func.count(), sa.func.min(s.retry_at)).where(
        s.status == "scheduled", s.retry_at <= now
    )
    flying = sa.select(sa.func.count()).where(s.status == "in_flight")
    stuck = sa.select(sa.func.count()).where(
        e.status.in_(["received", "failed"]),
        e.received_at < now - timedelta(seconds=stuck_after),
    )
    capped = sa.select(sa.func.count()).where(
        d.reason == "network_cap", d.decided_at >= now - timedelta(days=30)
    )
    if accounts is not None:
        visible = sorted(accounts)
        due = due.where(s.account_id.in_(visible))
        flying = flying.where(s.account_id.in_(visible))
        owned = sa.select(t.payments.c.payment_id).where(t.payments.c.account_id.in_(visible))
        capped = capped.where(d.payment_id.in_(owned))
    with engine.connect() as conn:
        n_due, oldest = conn.execute(due).one()
        out = {
            "due": int(n_due),
            "oldest_due_seconds": 0.0,
            "in_flight": int(conn.execute(flying).scalar_one()),
            "webhooks_stuck": int(conn.execute(stuck).scalar_one()) if accounts is None else None,
            "network_cap_hits_30d": int(conn.execute(capped).scalar_one()),
        }
    if oldest is not None:
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=now.tzinfo)
        out["oldest_due_seconds"] = max((now - oldest).total_seconds(), 0.0)
    return out
