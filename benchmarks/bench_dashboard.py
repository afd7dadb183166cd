"""The dashboard's queries on a year of a large marketplace, on SQLite and PostgreSQL.

Fills a fresh store with ``--payments`` failed payments (default 1,000,000) across
``--accounts`` connected accounts (5,000) over a year, with their first failures and, for about
half, a succeeded retry (so ~2,000,000 attempts), then times each query the dashboard runs —
``serving.store.stats`` over the whole year, as a platform-wide key and as a key scoped to
one account — median of ``--repeats`` runs, next to a reference measured in the same run on
the same store: a plain ``count(*)`` over the payments. Aim: every page's query under 500 ms.
The year's queries read the rollups the store's triggers keep (whole days and months); the
queries over periods ending mid-day also read their partial days from the payments.

The year is loaded as a store that predates the rollups would hold it (at migration 0006),
then upgraded: the migration's backfill computes the rollups in a few set-based statements, as
it would for an existing store. ``--through-triggers`` loads at the latest migration instead,
so every insert goes through the triggers (what the API and scheduler pay per write; slow: on
a busy machine such a fill of PostgreSQL did not finish within a session).

Last, the payments of the last 30 days are assigned to an experiment and its page's report
is timed as computed (``serving.dashboard.experiment_view``), as kept for a later view, and as
computed for a key scoped to one account (that account's payments alone).

    .venv/bin/python benchmarks/bench_dashboard.py [--payments 1000000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
from _util import NoPostgres, postgres_schema, timed

from reclaim.serving.auth import Principal, Role
from reclaim.serving.dashboard import experiment_view
from reclaim.serving.report_cache import ReportCache
from reclaim.serving.store import stats
from reclaim.serving.store import tables as t
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.settings import Settings

START = datetime(2025, 1, 1, tzinfo=UTC)
CHUNK = 50_000
FX = {"usd": 1.0, "eur": 1.08, "gbp": 1.27, "jpy": 0.0067, "inr": 0.012}  # USD per unit (stated)
PRE_ROLLUPS = "0006"  # the last migration before the rollups and their triggers


def _rows(n: int, accounts: int, seed: int = 0):
    """Payments and attempts as column lists, ``CHUNK`` payments at a time."""
    rng = np.random.default_rng(seed)
    codes = np.array(["insufficient_funds", "generic_decline", "do_not_honor", "expired_card",
                      "authentication_required", "stolen_card"])  # fmt: skip
    currencies = np.array(["usd", "eur", "gbp", "jpy", "inr"])
    for lo in range(0, n, CHUNK):
        m = min(CHUNK, n - lo)
        ids = [f"in_b{i:09d}" for i in range(lo, lo + m)]
        account = rng.integers(0, accounts, m)
        failed = [START + timedelta(seconds=float(s)) for s in rng.random(m) * 365 * 86400]
        amount = rng.integers(500, 50_000, m)
        payments = [
            {"payment_id": ids[i], "object": "invoice", "account_id": f"acct_b{account[i]:05d}",
             "charge_model": "destination", "on_behalf_of": False, "amount": int(amount[i]),
             "currency": str(currencies[account[i] % 5]),
             "application_fee_amount": int(amount[i] // 10), "customer_id": f"cus_b{lo + i}",
             "customer_country": "US", "customer_timezone": "America/Chicago",
             "card_brand": "visa", "card_funding": "credit", "card_country": "US",
             "billing_reason": "subscription_cycle", "failed_at": failed[i],
             "decline_code": str(codes[(lo + i) % 6]), "advice_code": None,
             "network_decline_code": None, "network_advice_code": None,
             "reachable_email": True, "reachable_sms": True, "reachable_in_app": True}
            for i in range(m)
        ]  # fmt: skip
        won = rng.random(m) < 0.5
        attempts = [
            {"payment_id": ids[i], "attempt_number": k,
             "attempted_at": failed[i] + timedelta(days=k), "initiator": "merchant",
             "outcome": "succeeded" if k and won[i] else "failed",
             "decline_code": None if k and won[i] else str(codes[(lo + i) % 6]),
             "advice_code": None, "network_decline_code": None, "network_advice_code": None,
             "policy": None, "propensity": None}
            for i in range(m)
            for k in (0, 1)
        ]  # fmt: skip
        yield payments, attempts


def fill(engine: sa.Engine, n: int, accounts: int) -> float:
    """Insert the synthetic year; returns the seconds it took."""
    start = time.perf_counter()
    for payments, attempts in _rows(n, accounts):
        with engine.begin() as conn:
            conn.execute(sa.insert(t.payments), payments)
            conn.execute(sa.insert(t.attempts), attempts)
        print(f"  … {payments[-1]['payment_id']}", end="\r", flush=True)
    with engine.begin() as conn:  # fresh statistics for the planner, on either database
        conn.execute(sa.text("analyze"))
    return time.perf_counter() - start


def assign_experiment(engine: sa.Engine, start: datetime, end: datetime) -> int:
    """Assign every payment that failed in ``[start, end)`` to experiment ``bench``, half to
    each arm by customer; returns how many."""
    p = t.payments.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(p.payment_id, p.customer_id, p.account_id).where(
                p.failed_at >= start, p.failed_at < end
            )
        ).all()
    assigned = [
        {"experiment": "bench", "payment_id": pid, "unit_id": customer, "account_id": account,
         "segment": "all", "arm": ("control", "treatment")[int(pid[-1]) % 2],
         "assigned_at": start}
        for pid, customer, account in rows
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(t.experiment_assignments), assigned)
    return len(assigned)


def measure(engine: sa.Engine, repeats: int) -> list[tuple[str, float]]:
    lo, hi = START, START + timedelta(days=365)
    one = frozenset({"acct_b00042"})
    end = hi - timedelta(days=10, hours=9, minutes=30)

    def recent(days: int) -> tuple[datetime, datetime]:
        return end - timedelta(days=days), end

    queries = {
        "reference: count(*) of payments": lambda: _count(engine),
        "overview, platform": lambda: stats.overview(engine, lo, hi),
        "overview, one account": lambda: stats.overview(engine, lo, hi, one),
        "accounts page, by recovery rate": lambda: stats.account_rows(
            engine, lo, hi, sort="recovery_rate"
        ),
        "accounts search": lambda: stats.account_rows(engine, lo, hi, search="b0004"),
        "declines by category": lambda: stats.breakdown(engine, lo, hi, "decline_category"),
        "declines by retries": lambda: stats.breakdown(engine, lo, hi, "retries"),
        # periods that end mid-day: the partial days are read from the payments
        "overview, platform, 90 days to 14:30": lambda: stats.overview(engine, *recent(90)),
        "accounts page, 30 days to 14:30": lambda: stats.account_rows(
            engine, *recent(30), sort="recovery_rate"
        ),
        "declines by category, 30 days to 14:30": lambda: stats.breakdown(
            engine, *recent(30), "decline_category"
        ),
        "operations": lambda: stats.operations(engine, hi, 900),
        # read from the payments of the period (no rollup): the default period is 30 days
        "how the recovered came back, 30 days": lambda: stats.recovery_paths(engine, *recent(30)),
        "how the failed stand and time to recover, 30 days": lambda: stats.endings(
            engine, *recent(30)
        ),
        "money by decline category, 30 days": lambda: stats.decline_money(engine, *recent(30)),
        "money by decline category, the year": lambda: stats.decline_money(engine, lo, hi),
        "how the failed stand, the year": lambda: stats.endings(engine, lo, hi),
        "how the failed stand, one account, the year": lambda: stats.endings(engine, lo, hi, one),
    }
    out = [(name, timed(fn, repeats)[0]) for name, fn in queries.items()]

    # the experiment page: a report computed in pandas over the experiment's payments (the
    # last 30 days), then kept by the API process for RECLAIM_REPORT_CACHE_SECONDS
    n = assign_experiment(engine, *recent(30))
    settings = Settings(report_fx=FX, report_currency="usd")
    analyst = Principal("bench", Role.ANALYST, None)
    cache = ReportCache(300)

    def view() -> Any:
        return cache.get(
            ("bench", None), lambda: experiment_view(engine, "bench", analyst, settings)
        )

    out.append((f"experiment page ({n:,} payments), computed", timed(
        lambda: experiment_view(engine, "bench", analyst, settings), repeats)[0]))  # fmt: skip
    view()
    out.append(("experiment page, kept (a later view)", timed(view, repeats)[0]))
    scoped = Principal("bench", Role.ANALYST, one)
    out.append(("experiment page, one account's key, computed", timed(
        lambda: experiment_view(engine, "bench", scoped, settings), repeats)[0]))  # fmt: skip
    return out


def _count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t.payments)).scalar_one()


def run(
    url: str, label: str, n: int, accounts: int, repeats: int, through_triggers: bool = False
) -> None:
    upgrade(url, "head" if through_triggers else PRE_ROLLUPS)
    engine = make_engine(url)
    how = "through the triggers" if through_triggers else f"at migration {PRE_ROLLUPS}"
    print(f"{label}: filling {n:,} payments across {accounts:,} accounts {how} …")
    seconds = fill(engine, n, accounts)
    print(f"{label}: filled in {seconds:,.0f} s ({_count(engine):,} payments)")
    if not through_triggers:
        start = time.perf_counter()
        upgrade(url)
        with engine.begin() as conn:
            conn.execute(sa.text("analyze"))
        print(f"{label}: upgraded (rollups backfilled) in {time.perf_counter() - start:,.0f} s")
    for name, median in measure(engine, repeats):
        verdict = "" if name.startswith("reference") else ("  ok" if median < 0.5 else "  > 500 ms")
        print(f"  {name:<46} {median * 1000:9.1f} ms (median of {repeats}){verdict}")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--through-triggers", action="store_true", help="load at the latest migration"
    )
    args = parser.parse_args()
    sizes = (args.payments, args.accounts, args.repeats, args.through_triggers)
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{Path(tmp) / 'bench.db'}", "SQLite", *sizes)
    if args.skip_postgres:
        return
    try:
        with postgres_schema() as url:
            run(url, "PostgreSQL", *sizes)
    except NoPostgres as exc:
        print(f"PostgreSQL: skipped, {exc}")


if __name__ == "__main__":
    main()
