"""Recovery statistics computed in the database: what the ``/v1/stats`` API and the dashboard
serve.

Each query aggregates in SQL (SQLite and PostgreSQL alike) over the failed payments of a
period — by the time of their first failure — and whether each was recovered. Money is summed
per currency in minor units, exactly, and converted to major units only on the way out; it is
never summed across currencies. ``accounts`` restricts every query to the connected accounts a
scoped key may see (None: all).

Platform-wide queries read rollups that database triggers keep as payments and attempts are
stored (migration 0007): per UTC day and currency (``stats_days``), per month, account and
currency (``stats_account_months``) and per day and breakdown group (``stats_groups``). A
period's whole days (or months) come from the rollups and its partial days at either end from
the payments themselves, so any period is exact. A scoped key's queries read its accounts'
payments through their index, which is fast without rollups. Each payment carries its own
``recovered`` flag and ``merchant_retries`` count, kept by the same triggers.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim import vocab
from reclaim.contract import major
from reclaim.serving.store import tables as t

#: Columns the accounts table may be sorted by.
ACCOUNT_SORTS = ("failed", "recovered", "recovery_rate", "recovered_amount", "account_id")

Span = tuple[datetime, datetime]


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def _next_month(at: datetime) -> datetime:
    return (at.replace(day=28) + timedelta(days=4)).replace(day=1)


def split_period(
    start: datetime, end: datetime, unit: str
) -> tuple[tuple[str, str] | None, list[Span]]:
    """``[start, end)`` as the whole UTC days (``unit`` ``day``) or months (``month``) a
    rollup holds — their keys ``[first, last)`` as the rollup writes them (``YYYY-MM-DD`` or
    ``YYYY-MM``), None if there is none — and the partial spans before and after them."""
    start, end = _utc(start), _utc(end)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        first = midnight if midnight == start else midnight + timedelta(days=1)
        last = end.replace(hour=0, minute=0, second=0, microsecond=0)
        fmt = "%Y-%m-%d"
    else:
        first = midnight.replace(day=1)
        first = first if first == start else _next_month(first)
        last = end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        fmt = "%Y-%m"
    if first >= last:
        return None, [(start, end)] if start < end else []
    edges = [(a, b) for a, b in ((start, first), (last, end)) if a < b]
    return (first.strftime(fmt), last.strftime(fmt)), edges


def _failed(
    spans: list[Span],
    accounts: Collection[str] | None,
    search: str | None = None,
) -> sa.Subquery:
    """The failed payments of the ``spans`` (within ``accounts``; account ids containing
    ``search``) with ``won`` (1 if recovered) and ``retries`` (merchant retries made)."""
    p = t.payments.c
    columns = [p.payment_id, p.account_id, p.customer_id, p.currency, p.amount,
               p.application_fee_amount, p.failed_at, p.decline_code, p.charge_model,
               p.card_brand, p.failed_local_hour.label("local_hour"), p.recovered.label("won"),
               p.merchant_retries.label("retries"), p.recovered_at, p.closed_at]  # fmt: skip
    within = [sa.and_(p.failed_at >= a, p.failed_at < b) for a, b in spans]
    query = sa.select(*columns).where(sa.or_(*within) if within else sa.false())
    return _visible(query, p.account_id, accounts, search).subquery("fp")


def _visible(query: Any, account: Any, accounts: Collection[str] | None, search: str | None) -> Any:
    """``query`` restricted to ``accounts`` and to accounts whose id or display name contains
    ``search`` (a name in any case)."""
    if accounts is not None:
        query = query.where(account.in_(sorted(accounts)))
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        named = sa.select(t.account_profiles.c.account_id).where(
            sa.func.lower(t.account_profiles.c.display_name).like(
                f"%{escaped.lower()}%", escape="\\"
            )
        )
        query = query.where(sa.or_(account.like(f"%{escaped}%", escape="\\"), account.in_(named)))
    return query


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


def _summed(parts: list[Any], keys: list[str], counts: tuple[str, ...]) -> Any:
    """The rows of ``parts`` (selects of the same columns: a rollup's and the payments') summed
    per ``keys``; groups with no failed payment left out (a rollup keeps zero rows)."""
    both = (sa.union_all(*parts) if len(parts) > 1 else parts[0]).subquery("parts")
    sums = [sa.func.sum(both.c[name]).label(name) for name in counts]
    return (
        sa.select(*[both.c[k] for k in keys], *sums)
        .group_by(*[both.c[k] for k in keys])
        .having(sa.func.sum(both.c.failed) > 0)
    )


_MONEY = ("failed", "recovered", "amount", "fee")


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


def _daily(
    engine: Engine, start: datetime, end: datetime, accounts: Collection[str] | None, period: int
) -> list[Any]:
    """Selects of ``(period, day, currency, failed, recovered, amount, fee)`` covering
    ``[start, end)``: the whole days from ``stats_days`` (platform-wide only), the rest from
    the payments."""
    whole, spans = split_period(start, end, "day") if accounts is None else (None, [(start, end)])
    mark = sa.literal_column(str(period)).label("period")
    parts: list[Any] = []
    if whole is not None:
        d = t.stats_days.c
        parts.append(
            sa.select(mark, d.day, d.currency, *[d[c] for c in _MONEY]).where(
                d.day >= whole[0], d.day < whole[1]
            )
        )
    fp = _failed(spans, accounts)
    day = _day(engine, fp.c.failed_at)
    parts.append(
        sa.select(mark, day.label("day"), fp.c.currency, *_totals(fp)).group_by(day, fp.c.currency)
    )
    return parts


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
    parts = _daily(engine, start - (end - start), start, accounts, 0) + _daily(
        engine, start, end, accounts, 1
    )
    daily = _summed(parts, ["period", "day", "currency"], _MONEY)
    with engine.connect() as conn:
        rows = conn.execute(daily).all()
    # a period's totals are its days' totals: exact integers, summed within each currency
    totals: dict[int, dict[str, list[int]]] = {0: {}, 1: {}}
    days: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for which, d, cur, *counts in sorted(rows, key=lambda r: (int(r[0]), str(r[1]), r[2])):
        total = totals[int(which)].setdefault(cur, [0, 0, 0, 0])
        for k, v in enumerate(counts):
            total[k] += int(v)
        failed, recovered, amount, _ = counts
        days[int(which)].append({"day": str(d), "currency": cur, "failed": int(failed),
                                 "recovered": int(recovered),
                                 "recovered_amount": major(int(amount), cur)})  # fmt: skip
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
    the database; with the number of rows in all pages. ``search`` matches account ids and
    display names by substring. Whole months come from ``stats_account_months``, the rest
    from the payments."""
    if sort not in ACCOUNT_SORTS:
        raise ValueError(f"sort must be one of {ACCOUNT_SORTS}, got {sort!r}")
    whole, spans = split_period(start, end, "month")
    parts: list[Any] = []
    if whole is not None:
        m = t.stats_account_months.c
        rollup = sa.select(m.account_id, m.currency, *[m[c] for c in _MONEY]).where(
            m.month >= whole[0], m.month < whole[1]
        )
        parts.append(_visible(rollup, m.account_id, accounts, search))
    fp = _failed(spans, accounts, search)
    parts.append(
        sa.select(fp.c.account_id, fp.c.currency, *_totals(fp)).group_by(
            fp.c.account_id, fp.c.currency
        )
    )
    table = _summed(parts, ["account_id", "currency"], _MONEY).subquery("per_account")

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
    # the number of rows in all pages comes with the page (a window over the same grouping),
    # so the grouping runs once; only a page past the end needs a count of its own
    query = (
        sa.select(table, sa.func.count().over().label("total"))
        .order_by(*first, key, table.c.account_id, table.c.currency)
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        total = (
            rows[0].total
            if rows
            else conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        )
    return [
        {"account_id": account, **_row(currency, f, r, a, fee)}
        for account, currency, f, r, a, fee, _ in rows
    ], int(total)


#: What a breakdown may group by: a payment column, the decline category (from the code, by
#: ``reclaim.vocab``), how many merchant retries the payment got, or the customer's local
#: hour when it first failed (``unknown`` where the timezone is).
BREAKDOWNS = (
    "decline_category", "decline_code", "charge_model", "card_brand", "retries", "local_hour",
)  # fmt: skip


def newest_failure(engine: Engine, accounts: Collection[str] | None = None) -> date | None:
    """The UTC day of the newest failed payment (among ``accounts``), or None."""
    p = t.payments.c
    query = sa.select(sa.func.max(p.failed_at))
    if accounts is not None:
        query = query.where(p.account_id.in_(sorted(accounts)))
    with engine.connect() as conn:
        newest = conn.execute(query).scalar()
    if newest is None:
        return None
    return _utc(newest).date() if isinstance(newest, datetime) else None


#: How a recovered payment came back, in the order the overview lists them.
RECOVERY_PATHS = {
    "card_updated": "a merchant retry after the card network updated the card",
    "retry": "a merchant retry on the same card",
    "customer_after_message": "the customer, after a message",
    "customer_alone": "the customer, with no message before",
}


def recovery_paths(
    engine: Engine,
    start: datetime,
    end: datetime,
    accounts: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """How the recovered payments of ``[start, end)`` came back, per currency: by a merchant
    retry after the card updater gave the customer's card new details (a
    ``payment_method.automatically_updated`` event between the first failure and the
    success, matched by customer as the scheduler matches it), by a merchant retry on the same
    card, by the customer after a message, or by the customer with no message before — each
    with its payments and amount (major units of the currency). Rows sorted by currency then
    :data:`RECOVERY_PATHS` order."""
    fp = _failed([(start, end)], accounts)
    a, m, c = t.attempts.c, t.messages.c, t.card_updates.c
    # each recovered payment's first success is at its ``recovered_at`` (kept by the store's
    # triggers): its attempt, messages before it and card updates before it are looked up by
    # the payment's own keys, so the query reads the period's payments and nothing else
    by_merchant = (
        sa.select(sa.literal(1))
        .where(
            a.account_id == fp.c.account_id, a.payment_id == fp.c.payment_id,
            a.attempted_at == fp.c.recovered_at, a.outcome == "succeeded",
            a.initiator == "merchant",
        )
        .exists()
    )  # fmt: skip
    messaged = (
        sa.select(sa.literal(1))
        .where(m.account_id == fp.c.account_id, m.payment_id == fp.c.payment_id,
               m.sent_at <= fp.c.recovered_at)
        .exists()
    )  # fmt: skip
    updated = (
        sa.select(sa.literal(1))
        .where(c.customer_id == fp.c.customer_id, c.updated_at > fp.c.failed_at,
               c.updated_at <= fp.c.recovered_at)
        .exists()
    )  # fmt: skip
    path = sa.case(
        (sa.and_(by_merchant, updated), "card_updated"),
        (by_merchant, "retry"),
        (messaged, "customer_after_message"),
        else_="customer_alone",
    ).label("path")
    query = (
        sa.select(fp.c.currency, path, sa.func.count().label("n"),
                  sa.func.sum(fp.c.amount).label("amount"))
        .where(fp.c.won == 1)  # the payments the overview counts as recovered
        .group_by(fp.c.currency, path)
    )  # fmt: skip
    with engine.connect() as conn:
        found = conn.execute(query).all()
    order = list(RECOVERY_PATHS)
    rows = [
        {"currency": cur, "path": way, "how": RECOVERY_PATHS[way], "payments": int(n),
         "amount": major(int(amount or 0), cur)}
        for cur, way, n, amount in found
    ]  # fmt: skip
    return sorted(rows, key=lambda r: (r["currency"], order.index(r["path"])))


#: How long recovered payments took from their first failure: each bucket's upper bound in
#: days (None: no bound) and its words.
RECOVERY_TIMES = (
    (1, "within a day"),
    (3, "1 to 3 days"),
    (7, "3 to 7 days"),
    (14, "7 to 14 days"),
    (None, "over 14 days"),
)

#: How a failed payment of a period stands now, in the order the overview lists them.
ENDINGS = {
    "recovered": "recovered",
    "lost": "lost: the platform stopped collecting (invoice voided or uncollectible, "
    "intent canceled)",
    "open": "still open",
}


def _days_between(engine: Engine, later: Any, earlier: Any) -> Any:
    """Days from ``earlier`` to ``later`` (fractional), in this database's dialect."""
    if engine.dialect.name == "postgresql":
        return sa.extract("epoch", later - earlier) / 86400.0
    return sa.func.julianday(later) - sa.func.julianday(earlier)


def endings(
    engine: Engine,
    start: datetime,
    end: datetime,
    accounts: Collection[str] | None = None,
) -> dict[str, Any]:
    """How the failed payments of ``[start, end)`` stand now, and how long the recovered ones
    took.

    Returns ``{"endings": [...], "times": [...], "median_days": float | None}``: an ending
    row per currency and :data:`ENDINGS` key (``currency``, ``ending``, ``how``,
    ``payments``, ``amount`` in major units), sorted by currency then that order; a time row
    per :data:`RECOVERY_TIMES` bucket (``bucket``, ``payments``; counts, so currencies mix
    safely) and the median days from first failure to recovery (None: nothing recovered).
    A payment recovered and later closed counts as recovered.
    """
    fp = _failed([(start, end)], accounts)
    ending = sa.case(
        (fp.c.won == 1, "recovered"), (fp.c.closed_at.is_not(None), "lost"), else_="open"
    ).label("ending")
    by_ending = sa.select(
        fp.c.currency, ending, sa.func.count(), sa.func.coalesce(sa.func.sum(fp.c.amount), 0)
    ).group_by(fp.c.currency, ending)
    days = _days_between(engine, fp.c.recovered_at, fp.c.failed_at)
    bucket = sa.case(
        *[(days < bound, k) for k, (bound, _) in enumerate(RECOVERY_TIMES) if bound is not None],
        else_=len(RECOVERY_TIMES) - 1,
    ).label("bucket")
    recovered = fp.c.won == 1
    by_time = sa.select(bucket, sa.func.count()).where(recovered).group_by(bucket)
    with engine.connect() as conn:
        ended = conn.execute(by_ending).all()
        counted = dict(conn.execute(by_time).all())
        n = sum(int(v) for v in counted.values())
        median = (
            conn.execute(
                sa.select(days).where(recovered).order_by(days).limit(1).offset((n - 1) // 2)
            ).scalar()
            if n
            else None
        )
    order = list(ENDINGS)
    rows = sorted(
        (
            {"currency": cur, "ending": kind, "how": ENDINGS[kind], "payments": int(count),
             "amount": major(int(amount), cur)}
            for cur, kind, count, amount in ended
        ),
        key=lambda r: (r["currency"], order.index(r["ending"])),
    )  # fmt: skip
    times = [
        {"bucket": words, "payments": int(counted.get(k, 0))}
        for k, (_, words) in enumerate(RECOVERY_TIMES)
    ]
    return {"endings": rows, "times": times,
            "median_days": None if median is None else max(float(median), 0.0)}  # fmt: skip


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
    ``by`` (one of :data:`BREAKDOWNS`): counts only, so currencies never mix. Platform-wide,
    whole days come from ``stats_groups``, the rest from the payments."""
    if by not in BREAKDOWNS:
        raise ValueError(f"by must be one of {BREAKDOWNS}, got {by!r}")
    if by == "decline_category":
        return by_category(breakdown(engine, start, end, "decline_code", accounts))
    whole, spans = split_period(start, end, "day") if accounts is None else (None, [(start, end)])
    parts: list[Any] = []
    if whole is not None:
        g = t.stats_groups.c
        parts.append(
            sa.select(g.key, g.failed, g.recovered).where(
                g.dimension == by, g.day >= whole[0], g.day < whole[1]
            )
        )
    fp = _failed(spans, accounts)
    key = sa.func.coalesce(sa.cast(fp.c[by], sa.String), "")  # as the rollup keeps it
    parts.append(
        sa.select(
            key.label("key"),
            sa.func.count().label("failed"),
            sa.func.coalesce(sa.func.sum(fp.c.won), 0).label("recovered"),
        ).group_by(key)
    )
    query = _summed(parts, ["key"], ("failed", "recovered"))
    with engine.connect() as conn:
        rows = [(k if k != "" else None, int(f), int(r)) for k, f, r in conn.execute(query)]
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


def decline_money(
    engine: Engine,
    start: datetime,
    end: datetime,
    accounts: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """The money of ``[start, end)``'s failed payments per decline category and currency:
    ``category``, ``currency``, ``failed``, ``recovered`` (payments), ``failed_amount`` and
    ``recovered_amount`` (major units of the currency). Sorted by currency, then the largest
    failed amount first."""
    fp = _failed([(start, end)], accounts)
    query = sa.select(
        fp.c.decline_code,
        fp.c.currency,
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(fp.c.won), 0),
        sa.func.coalesce(sa.func.sum(fp.c.amount), 0),
        sa.func.coalesce(sa.func.sum(fp.c.won * fp.c.amount), 0),
    ).group_by(fp.c.decline_code, fp.c.currency)
    with engine.connect() as conn:
        found = conn.execute(query).all()
    merged: dict[tuple[str, str], list[int]] = {}
    for code, currency, *counts in found:
        category = vocab.decline_category(code, None, None, None) or "unknown"
        total = merged.setdefault((category, currency), [0, 0, 0, 0])
        for k, v in enumerate(counts):
            total[k] += int(v)
    rows = [
        {"category": category, "currency": currency, "failed": f, "recovered": r,
         "failed_amount": major(fa, currency), "recovered_amount": major(ra, currency)}
        for (category, currency), (f, r, fa, ra) in merged.items()
    ]  # fmt: skip
    return sorted(rows, key=lambda r: (r["currency"], -r["failed_amount"], r["category"]))


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
    ``stuck_after`` seconds, events set aside after failing every try and events refused
    as outside the stored bounds in the last 30 days (platform-wide: events name no account
    until processed), and
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
    dead = sa.select(sa.func.count()).where(e.status == "dead")
    rejected = sa.select(sa.func.count()).where(
        e.status == "rejected", e.received_at >= now - timedelta(days=30)
    )
    capped = sa.select(sa.func.count()).where(
        d.reason == "network_cap", d.decided_at >= now - timedelta(days=30)
    )
    if accounts is not None:
        visible = sorted(accounts)
        due = due.where(s.account_id.in_(visible))
        flying = flying.where(s.account_id.in_(visible))
        capped = capped.where(d.account_id.in_(visible))
    with engine.connect() as conn:
        n_due, oldest = conn.execute(due).one()
        out = {
            "due": int(n_due),
            "oldest_due_seconds": 0.0,
            "in_flight": int(conn.execute(flying).scalar_one()),
            "webhooks_stuck": int(conn.execute(stuck).scalar_one()) if accounts is None else None,
            "webhooks_dead": int(conn.execute(dead).scalar_one()) if accounts is None else None,
            "webhooks_rejected_30d": (
                int(conn.execute(rejected).scalar_one()) if accounts is None else None
            ),
            "network_cap_hits_30d": int(conn.execute(capped).scalar_one()),
        }
    if oldest is not None:
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=now.tzinfo)
        out["oldest_due_seconds"] = max((now - oldest).total_seconds(), 0.0)
    return out
