"""The recovery rollups kept by the database's triggers (migrations 0007 and 0008) and each
payment's recovered flag, merchant retries and first recovery time equal the payments they
summarise — whatever writes them, in whatever order, and for a store the migration upgrades —
on SQLite and PostgreSQL; a period's whole days and months read from them plus its partial
days read from the payments equal pandas."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from reclaim import contract
from reclaim.contract import ZERO_DECIMAL
from reclaim.reference import RandomizedLogging
from reclaim.serving.store import repository as repo
from reclaim.serving.store import stats
from reclaim.serving.store import tables as t
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.simulator import generate, rollout


@pytest.fixture(scope="module")
def history() -> contract.ContractTables:
    return contract.validate(
        rollout(generate(10, 800, seed=41), RandomizedLogging(), seed=41).tables
    )


def _stored(engine) -> dict[str, set[tuple]]:
    """Every rollup's rows that count a payment, as tuples of plain values."""
    out = {}
    with engine.connect() as conn:
        for table in (t.stats_days, t.stats_account_months, t.stats_groups):
            rows = conn.execute(sa.select(table).where(table.c.failed != 0)).all()
            out[table.name] = {tuple(int(v) if isinstance(v, int) else v for v in r) for r in rows}
    return out


def _facts(history: contract.ContractTables, local_hour: pd.Series) -> pd.DataFrame:
    """One row per payment with what the rollups count, from the contract tables."""
    p, a = history.payments, history.attempts
    won = p["payment_id"].isin(set(a.loc[a["outcome"] == "succeeded", "payment_id"]))
    merchant = a[(a["initiator"] == "merchant") & (a["attempt_number"] > 0)]
    utc = p["failed_at"].dt.tz_convert("UTC")
    return pd.DataFrame(
        {
            "day": utc.dt.strftime("%Y-%m-%d"),
            "month": utc.dt.strftime("%Y-%m"),
            "account_id": p["account_id"].astype(str),
            "currency": p["currency"].astype(str),
            "failed": 1,
            "recovered": won.astype(int),
            "amount": np.where(won, p["amount"], 0),
            "fee": np.where(won, p["application_fee_amount"].fillna(0), 0).astype("int64"),
            "retries": p["payment_id"].map(merchant.groupby("payment_id").size()).fillna(0),
            "decline_code": p["decline_code"].astype("object").fillna(""),
            "charge_model": p["charge_model"].astype(str),
            "card_brand": p["card_brand"].astype("object").fillna(""),
            "local_hour": p["payment_id"].map(local_hour),
        }
    )


def _expected(facts: pd.DataFrame) -> dict[str, set[tuple]]:
    money = ["failed", "recovered", "amount", "fee"]

    def rows(keys: list[str], sums: list[str], frame: pd.DataFrame = facts) -> set[tuple]:
        grouped = frame.groupby(keys, sort=False)[sums].sum().reset_index()
        return {tuple(int(v) if k in sums else v for k, v in r.items())
                for r in grouped.to_dict("records")}  # fmt: skip

    groups: set[tuple] = set()
    for dim in ("decline_code", "charge_model", "card_brand", "local_hour", "retries"):
        key = facts[dim]
        if dim in ("local_hour", "retries"):
            key = key.map(lambda v: "" if pd.isna(v) else str(int(v)))
        frame = facts.assign(dimension=dim, key=key.astype(str))
        groups |= rows(["day", "dimension", "key"], ["failed", "recovered"], frame)
    return {
        "stats_days": rows(["day", "currency"], money),
        "stats_account_months": rows(["month", "account_id", "currency"], money),
        "stats_groups": groups,
    }


def _local_hours(engine) -> pd.Series:
    """The store's own local hour per payment (computed on insert; tested in test_stats)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.payments.c.payment_id, t.payments.c.failed_local_hour))
        return pd.Series(dict(rows.all()))


def test_rollups_equal_the_payments_in_any_write_order(engine, history) -> None:
    """A third of the payments arrive after their attempts (as a bulk load may send them), the
    rest before; then everything is sent again (ignored). Each payment's own flag and count
    and every rollup row equal pandas."""
    p = history.payments
    a = history.attempts.merge(p[["payment_id", "account_id"]], on="payment_id")
    late = p["payment_id"].isin(set(p["payment_id"].iloc[::3]))
    late_attempts = a["payment_id"].isin(set(p.loc[late, "payment_id"]))
    for table, rows in (
        (t.attempts, a[late_attempts]),
        (t.payments, p[~late]),
        (t.attempts, a[~late_attempts]),
        (t.payments, p[late]),
    ):
        with engine.begin() as conn:
            assert repo.insert_rows(conn, table, rows) == len(rows) > 0
    again = repo.save_contract(engine, history)  # every payment and attempt a second time
    assert again["payments"] == again["attempts"] == 0

    facts = _facts(history, _local_hours(engine))
    with engine.connect() as conn:
        own = pd.DataFrame(
            conn.execute(
                sa.select(
                    t.payments.c.payment_id, t.payments.c.recovered, t.payments.c.merchant_retries
                )  # fmt: skip
            ).all(),
            columns=["payment_id", "recovered", "merchant_retries"],
        ).set_index("payment_id")
    want = facts.set_index(history.payments["payment_id"])
    assert own["recovered"].to_dict() == want["recovered"].to_dict()
    assert own["merchant_retries"].to_dict() == want["retries"].astype(int).to_dict()
    assert 0 < want["recovered"].mean() < 1 and want["retries"].max() >= 3
    assert _stored(engine) == _expected(facts)
    assert _recovered_at(engine) == _first_successes(history)


def _recovered_at(engine) -> dict[str, pd.Timestamp]:
    """Each stored payment's ``recovered_at`` (the recovered ones), as UTC timestamps."""
    p = t.payments.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(p.payment_id, p.recovered_at).where(p.recovered_at.is_not(None))
        ).all()
    return {pid: pd.Timestamp(repo.aware(at)).tz_convert("UTC") for pid, at in rows}


def _first_successes(history: contract.ContractTables) -> dict[str, pd.Timestamp]:
    a = history.attempts
    first = a[a["outcome"] == "succeeded"].groupby("payment_id", observed=True)["attempted_at"]
    return {str(pid): at.tz_convert("UTC") for pid, at in first.min().items()}


def test_a_recovery_moves_a_payment_between_groups(engine, history) -> None:
    """A merchant retry that succeeds, stored later: the payment leaves its retries group,
    joins the next, and counts as recovered everywhere, once."""
    repo.save_contract(engine, history)
    p, a = history.payments, history.attempts
    lost = p[~p["payment_id"].isin(set(a.loc[a["outcome"] == "succeeded", "payment_id"]))]
    one = lost.iloc[0]
    tried = a[a["payment_id"] == one["payment_id"]]
    retry = tried.iloc[[-1]].assign(
        account_id=one["account_id"],
        attempt_number=int(tried["attempt_number"].max()) + 1,
        attempted_at=tried["attempted_at"].max() + pd.Timedelta(hours=30),
        initiator="merchant",
        outcome="succeeded",
        decline_code=None,
        advice_code=None,
        network_decline_code=None,
        network_advice_code=None,
    )
    for _ in range(2):  # the second is the same attempt again: ignored
        with engine.begin() as conn:
            repo.insert_rows(conn, t.attempts, retry)
    updated = contract.validate(
        {
            **history.as_dict(),
            "attempts": pd.concat([a, retry.drop(columns="account_id")], ignore_index=True),
        }
    )
    assert _stored(engine) == _expected(_facts(updated, _local_hours(engine)))
    assert _recovered_at(engine) == _first_successes(updated)


def test_the_migration_fills_the_rollups_of_a_store_it_upgrades(store_url, history) -> None:
    upgrade(store_url, "0006")
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:  # the columns 0006 knows
            known = [
                c.name
                for c in t.payments.columns
                if c.name not in ("recovered", "merchant_retries", "recovered_at")
            ]
            payments = sa.table("payments", *[sa.column(name) for name in known])
            conn.execute(sa.insert(payments), _rows_with_hour(history.payments))
            attempts = sa.table("attempts", *[sa.column(c) for c in contract.ATTEMPTS.column_names])
            conn.execute(sa.insert(attempts), repo._records(history.attempts))
        upgrade(store_url)
        assert _stored(engine) == _expected(_facts(history, _local_hours(engine)))
        assert _recovered_at(engine) == _first_successes(history)
    finally:
        engine.dispose()


def _rows_with_hour(payments: pd.DataFrame) -> list[dict]:
    from reclaim.timeutil import local_hour

    rows = repo._records(payments)
    for row in rows:
        row["failed_local_hour"] = local_hour(row["failed_at"], row["customer_timezone"])
    return rows


def test_partial_periods_equal_pandas(engine, history) -> None:
    """A period that starts and ends mid-day, with whole months inside: accounts and
    breakdowns read the rollups for the whole days and months, the payments for the rest."""
    repo.save_contract(engine, history)
    failed = history.payments["failed_at"]
    lo = failed.quantile(0.07).to_pydatetime()
    hi = failed.quantile(0.93).to_pydatetime()
    assert stats.split_period(lo, hi, "month")[0] is not None and lo.hour + hi.hour > 0
    facts = _facts(history, _local_hours(engine))
    inside = facts[((failed >= lo) & (failed < hi)).to_numpy()]

    rows, total = stats.account_rows(engine, lo, hi, limit=1_000)
    got = {(r["account_id"], r["currency"]): (r["failed"], r["recovered"], r["recovered_amount"])
           for r in rows}  # fmt: skip
    want = inside.groupby(["account_id", "currency"])[["failed", "recovered", "amount"]].sum()
    minor = {cur: 1 if cur in ZERO_DECIMAL else 100 for cur in inside["currency"].unique()}
    assert total == len(want) and set(got) == set(want.index)
    for (account, currency), (f, r, amount) in want.iterrows():
        assert got[account, currency][:2] == (f, r)
        assert got[account, currency][2] == pytest.approx(amount / minor[currency], abs=1e-9)

    for by in ("charge_model", "retries", "decline_code"):
        found = {
            g["key"]: (g["failed"], g["recovered"]) for g in stats.breakdown(engine, lo, hi, by)
        }
        key = inside[by].map(lambda v: str(int(v)) if isinstance(v, float) else (v or "unknown"))
        expect = inside.assign(key=key).groupby("key")[["failed", "recovered"]].sum()
        assert found == {k: (int(f), int(r)) for k, (f, r) in expect.iterrows()}, by


@pytest.mark.parametrize(
    ("start", "end", "unit", "whole", "edges"),
    [
        ("2026-03-01T00:00", "2026-03-04T00:00", "day", ("2026-03-01", "2026-03-04"), 0),
        ("2026-03-01T06:00", "2026-03-04T00:00", "day", ("2026-03-02", "2026-03-04"), 1),
        ("2026-03-01T06:00", "2026-03-01T09:00", "day", None, 1),
        ("2026-03-01T06:00", "2026-03-02T09:00", "day", None, 1),
        ("2025-11-15T00:00", "2026-02-03T12:00", "month", ("2025-12", "2026-02"), 2),
        ("2025-12-01T00:00", "2026-01-01T00:00", "month", ("2025-12", "2026-01"), 0),
    ],
)
def test_a_period_splits_into_whole_units_and_partial_edges(start, end, unit, whole, edges) -> None:
    lo, hi = (datetime.fromisoformat(s).replace(tzinfo=UTC) for s in (start, end))
    found, spans = stats.split_period(lo, hi, unit)
    assert found == whole and len(spans) == edges
    covered = sum(((b - a) for a, b in spans), start=hi - hi)
    if whole is None:
        assert spans == [(lo, hi)]
    else:
        assert all(a < b for a, b in spans) and covered < hi - lo
