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
from reclaim.contract import major
from reclaim.serving.store import tables as t

#: Columns the accounts table may be sorted by.
ACCOUNT_SORTS = ("failed", "recovered", "recovery_rate", "recovered_amount", "account_id")


def _failed(
    start: datetime,
    end: datetime,
    accounts: Collection[str] | None,
    search: str | None = None,
) -> sa.Subquery:
    """The failed payments of ``[start, end)`` (within ``accounts``; account ids containing
    ``search``) with ``won``: 1 where a succeeded attempt exists.

    For a few accounts, a correlated EXISTS on the attempts' payment index reads only their
    attempts (≈100× faster for one account of 500); for the whole platform, one pass over the
    succeeded attempts joined to the payments is the faster plan on both databases.
    """
    p, a = t.payments.c, t.attempts.c
    columns = [p.payment_id, p.account_id, p.currency, p.amount, p.application_fee_amount,
               p.failed_at, p.decline_code, p.charge_model, p.card_brand,
               p.failed_local_hour.label("local_hour")]  # fmt: skip
    if accounts is None and not search:
        ok = (
            sa.select(a.payment_id.label("payment_id"))
            .where(a.outcome == "succeeded")
            .group_by(a.payment_id)
            .subquery("ok")
        )
        won: Any = ok.c.payment_id.is_not(None)
        source: Any = t.payments.outerjoin(ok, ok.c.payment_id == p.payment_id)
    else:
        won = sa.exists().where(a.payment_id == p.payment_id, a.outcome == "succeeded")
        source = t.payments
    query = (
        sa.select(*columns, sa.case((won, 1), else_=0).label("won"))
        .select_from(source)
        .where(p.failed_at >= start, p.failed_at < end)
    )
    if accounts is not None:
        query = query.where(p.account_id.in_(sorted(accounts)))
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(p.account_id.like(f"%{escaped}%", escape="\\"))
    return query.subquery("fp")


def _totals(fp: sa.Subquery) -> list[Any]:
    """Failed, recovered, recovered amount and fee (minor units) over ``fp``'s rows."""
    return [
        sa.func.count().label("failed"),
        sa.func.coalesce(sa.func.sum(fp.c.won), 0).label("recovered"),
        sa.func.coalesce(sa.func.sum(fp.c.won * fp.c.amount), 0).label("amount"),
        sa.func.coalesce(
            sa.func.sum(fp.c.won * sa.func.coalesce(fp.c.application_fee_amount, 0)), 0
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


def _day(engine: Engine, column: Any) -> Any:
    """The UTC calendar day of a time column, in this database's dialect."""
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
    for the period of the same length just before (``previous``), and per UTC day for both.

    Returns ``{"currencies": [...], "previous": [...], "by_day": [...],
    "previous_by_day": [...]}``; each currency row has ``failed``, ``recovered``,
    ``recovery_rate`` (in [0, 1]), ``recovered_amount``, ``platform_fee`` and
    ``account_share`` (major units of that currency); a day row has ``day``
    (``YYYY-MM-DD``), ``currency``, ``failed``, ``recovered`` and ``recovered_amount``.
    One query over both periods, each payment counted in the period of its first failure
    (exact even where a period does not start at midnight).
    """
    fp = _failed(start - (end - start), end, accounts)
    current = sa.case((fp.c.failed_at >= start, 1), else_=0).label("current")
    day = _day(engine, fp.c.failed_at).label("day")
    daily = (
        sa.select(current, day, fp.c.currency, *_totals(fp))
        .group_by(current, day, fp.c.currency)
        .order_by(current, day, fp.c.currency)
    )
    with engine.connect() as conn:
        rows = conn.execute(daily).all()
    # a period's totals are its days' totals: exact integers, summed within each currency
    totals: dict[int, dict[str, list[int]]] = {0: {}, 1: {}}
    days: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for which, d, cur, *counts in rows:
        total = totals[which].setdefault(cur, [0, 0, 0, 0])
        for k, v in enumerate(counts):
            total[k] += int(v)
        failed, recovered, amount, _ = counts
        days[which].append({"day": str(d), "currency": cur, "failed": int(failed),
                            "recovered": int(recovered),
                            "recovered_amount": major(amount, cur)})  # fmt: skip
    return {
        "currencies": [_row(cur, *totals[1][cur]) for cur in sorted(totals[1])],
        "previous": [_row(cur, *totals[0][cur]) for cur in sorted(totals[0])],
        "by_day": days[1],
        "previous_by_day": days[0],
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
    fp = _failed(start, end, accounts, search)
    table = (
        sa.select(fp.c.account_id, fp.c.currency, *_totals(fp))
        .group_by(fp.c.account_id, fp.c.currency)
        .subquery("per_account")
    )
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
#: ``reclaim.vocab``), how many merchant retries the payment got, or the customer's local
#: hour when it first failed (``unknown`` where the timezone is).
BREAKDOWNS = (
    "decline_category", "decline_code", "charge_model", "card_brand", "retries", "local_hour",
)  # fmt: skip


def account_known(engine: Engine, account_id: str) -> bool:
    """Whether the store holds a payment of ``account_id`` or a configuration for it."""
    with engine.connect() as conn:
        for table in (t.payments, t.account_config):
            found = conn.execute(
                sa.select(sa.literal(1)).where(table.c.account_id == account_id).limit(1)
            ).first()
            if found is not None:
                return True
    return False


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
    if by == "decline_category":
        return by_category(breakdown(engine, start, end, "decline_code", accounts))
    a = t.attempts.c
    fp = _failed(start, end, accounts)
    source: Any = fp
    if by == "retries":
        tried = (
            sa.select(a.payment_id.label("payment_id"), sa.func.count().label("n"))
            .where(a.initiator == "merchant", a.attempt_number > 0)
            .group_by(a.payment_id)
            .subquery("tried")
        )
        source = fp.outerjoin(tried, tried.c.payment_id == fp.c.payment_id)
        key: Any = sa.func.coalesce(tried.c.n, 0)
    else:
        key = fp.c[by]
    query = (
        sa.select(key.label("key"), sa.func.count(), sa.func.coalesce(sa.func.sum(fp.c.won), 0))
        .select_from(source)
        .group_by(key)
    )
    with engine.connect() as conn:
        rows = [(k, int(f), int(r)) for k, f, r in conn.execute(query)]
    return _sorted_groups(rows, numeric=by in ("retries", "local_hour"))


def by_category(code_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`breakdown` rows by decline code, merged by decline category (``reclaim.vocab``)."""
    merged: dict[str, list[int]] = {}
    for row in code_rows:
        category = vocab.decline_category(row["key"], None, None, None) or "unknown"
        total = merged.setdefault(category, [0, 0])
        total[0] += row["failed"]
        total[1] += row["recovered"]
    return _sorted_groups([(k, f, r) for k, (f, r) in merged.items()], numeric=False)


def _sorted_groups(rows: list[tuple[Any, int, int]], numeric: bool) -> list[dict[str, Any]]:
    """Group rows for people: by key where keys are numbers (an unknown one last), else the
    largest group first."""
    out = [
        {"key": "unknown" if k is None else str(k), "failed": f, "recovered": r,
         "recovery_rate": r / f if f else 0.0}
        for k, f, r in rows
    ]  # fmt: skip
    if numeric:
        known = [row for row in out if row["key"] != "unknown"]
        return sorted(known, key=lambda row: int(row["key"])) + [
            row for row in out if row["key"] == "unknown"
        ]
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
