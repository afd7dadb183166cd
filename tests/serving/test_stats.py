"""/v1/stats: recovery statistics computed in the database, equal to the same numbers computed
from the contract tables with pandas, on SQLite and PostgreSQL, within each key's accounts."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from reclaim import vocab
from reclaim.contract import ZERO_DECIMAL
from reclaim.reference import RandomizedLogging
from reclaim.serving.auth import create_key
from reclaim.serving.store import repository as repo
from reclaim.serving.store import stats
from reclaim.serving.store import tables as t
from reclaim.simulator import generate, rollout


@pytest.fixture(scope="module")
def history():
    return rollout(generate(12, 900, seed=31), RandomizedLogging(), seed=31).tables


def _expected(tables, lo, hi, accounts=None) -> pd.DataFrame:
    """The overview's currency rows, computed from the contract tables with pandas."""
    p = tables.payments
    p = p[(p["failed_at"] >= lo) & (p["failed_at"] < hi)]
    if accounts is not None:
        p = p[p["account_id"].isin(accounts)]
    ok = set(tables.attempts.loc[tables.attempts["outcome"] == "succeeded", "payment_id"])
    won = p["payment_id"].isin(ok)
    minor = np.where(p["currency"].isin(list(ZERO_DECIMAL)), 1.0, 100.0)
    frame = pd.DataFrame(
        {
            "currency": p["currency"].astype(str),
            "failed": 1,
            "recovered": won.astype(int),
            "recovered_amount": np.where(won, p["amount"] / minor, 0.0),
            "platform_fee": np.where(won, p["application_fee_amount"].fillna(0) / minor, 0.0),
        }
    )
    return frame.groupby("currency").sum().sort_index()


def test_the_overview_equals_pandas_on_both_databases(engine, history) -> None:
    repo.save_contract(engine, history)
    failed = history.payments["failed_at"]
    lo = failed.quantile(0.2).to_pydatetime()
    hi = failed.quantile(0.9).to_pydatetime()
    got = stats.overview(engine, lo, hi)
    rows = pd.DataFrame(got["currencies"]).set_index("currency").sort_index()
    want = _expected(history, lo, hi)
    assert rows.index.tolist() == want.index.tolist() and len(rows) > 1
    for column in ("failed", "recovered"):
        assert rows[column].tolist() == want[column].tolist(), column
    for column in ("recovered_amount", "platform_fee"):
        np.testing.assert_allclose(rows[column], want[column], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        rows["platform_fee"] + rows["account_share"], rows["recovered_amount"], atol=1e-6
    )
    assert rows["recovery_rate"].between(0, 1).all()
    # the days add up to the period, per currency; the previous period is the one before
    days = pd.DataFrame(got["by_day"]).groupby("currency")[["failed", "recovered"]].sum()
    assert days.sort_index().to_dict() == rows[["failed", "recovered"]].to_dict()
    before = pd.DataFrame(got["previous"]).set_index("currency").sort_index()
    want_before = _expected(history, lo - (hi - lo), lo)
    for column in ("failed", "recovered"):
        assert before[column].tolist() == want_before[column].tolist(), column
    # the previous period's days add up to its totals and lie before the period
    earlier = pd.DataFrame(got["previous_by_day"])
    sums = earlier.groupby("currency")[["failed", "recovered"]].sum().sort_index()
    assert sums.to_dict() == before[["failed", "recovered"]].to_dict()
    assert earlier["day"].max() <= lo.date().isoformat() <= pd.DataFrame(got["by_day"])["day"].min()


def test_accounts_are_sorted_searched_paged_and_scoped(engine, history) -> None:
    repo.save_contract(engine, history)
    lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    rows, total = stats.account_rows(engine, lo, hi, sort="recovery_rate", limit=500)
    assert total == len(rows) == history.payments.groupby(["account_id", "currency"]).ngroups
    rates = [r["recovery_rate"] for r in rows]
    assert rates == sorted(rates, reverse=True)
    page, again = (stats.account_rows(engine, lo, hi, limit=5, offset=5)[0] for _ in range(2))
    assert page == again and len(page) == 5
    one = rows[0]["account_id"]
    found, n = stats.account_rows(engine, lo, hi, search=one[-4:])
    assert n >= 1 and all(one[-4:] in r["account_id"] for r in found)
    mine = sorted(history.payments["account_id"].unique())[:2]
    scoped, _ = stats.account_rows(engine, lo, hi, accounts=frozenset(mine), limit=500)
    assert {r["account_id"] for r in scoped} == set(mine)
    assert stats.account_rows(engine, lo, hi, search="100%_\\")[1] == 0  # wildcards are text


def test_how_recovered_payments_came_back_equals_pandas(engine, history) -> None:
    """Issue 28: recovered payments split by how they came back — a merchant retry after a
    card update, a merchant retry on the same card, the customer after a message, the customer
    alone — per currency, on both databases."""
    repo.save_contract(engine, history)
    a, m, p = history.attempts, history.messages, history.payments
    ok = a[a["outcome"] == "succeeded"].sort_values("attempted_at").drop_duplicates("payment_id")
    ok = ok.merge(p[["payment_id", "customer_id", "failed_at", "currency", "amount"]],
                  on="payment_id")  # fmt: skip
    # card updates as the webhooks store them: some between a payment's failure and its
    # merchant recovery, some before its failure (they do not count)
    merchant = ok[ok["initiator"] == "merchant"]
    inside, before = merchant.iloc[::4], merchant.iloc[1::4]
    updates = [
        {"event_id": f"evt_in_{k}", "customer_id": r.customer_id, "account_id": None,
         "updated_at": (r.failed_at + (r.attempted_at - r.failed_at) / 2).to_pydatetime()}
        for k, r in enumerate(inside.itertuples())
    ] + [
        {"event_id": f"evt_before_{k}", "customer_id": r.customer_id, "account_id": None,
         "updated_at": (r.failed_at - pd.Timedelta(hours=1)).to_pydatetime()}
        for k, r in enumerate(before.itertuples())
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(t.card_updates.insert(), updates)
    lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    got = stats.recovery_paths(engine, lo, hi)

    stamps = pd.DataFrame(updates)
    stamps["updated_at"] = pd.to_datetime(stamps["updated_at"], utc=True)
    pairs = ok.merge(stamps, on="customer_id")
    hit = pairs[(pairs["updated_at"] > pairs["failed_at"])
                & (pairs["updated_at"] <= pairs["attempted_at"])]  # fmt: skip
    first_sent = m.groupby("payment_id")["sent_at"].min()
    sent = first_sent.reindex(ok["payment_id"]).to_numpy()
    messaged = pd.notna(sent) & (sent <= ok["attempted_at"].to_numpy())
    by_merchant = ok["initiator"] == "merchant"
    way = np.where(
        by_merchant & ok["payment_id"].isin(hit["payment_id"]),
        "card_updated",
        np.where(by_merchant, "retry",
                 np.where(messaged, "customer_after_message", "customer_alone")),
    )  # fmt: skip
    want = (
        ok.assign(path=way)
        .groupby(["currency", "path"])
        .agg(n=("amount", "size"), amount=("amount", "sum"))
    )
    assert {(r["currency"], r["path"]): r["payments"] for r in got} == want["n"].to_dict()
    for r in got:
        minor = want.loc[(r["currency"], r["path"]), "amount"]
        scale = 1 if r["currency"] in ZERO_DECIMAL else 100
        assert r["amount"] == pytest.approx(minor / scale)
    assert {r["path"] for r in got} == set(stats.RECOVERY_PATHS)
    assert sum(r["payments"] for r in got) == int(p["payment_id"].isin(ok["payment_id"]).sum())


def test_how_failed_payments_ended_and_how_long_recoveries_took_equal_pandas(
    engine, history
) -> None:
    """Issue 28: every failed payment is recovered, lost (the platform closed it unpaid) or
    still open, with its money per currency; recoveries by how long they took, and the
    median; on both databases."""
    repo.save_contract(engine, history)
    a, p = history.attempts, history.payments
    ok = a[a["outcome"] == "succeeded"].groupby("payment_id")["attempted_at"].min()
    unpaid = p[~p["payment_id"].isin(ok.index)]
    closed = list(unpaid["payment_id"].iloc[::3]) + list(ok.index[:5])  # 5 closed after paying
    with engine.begin() as conn:
        for pid in closed:
            conn.execute(
                t.payments.update().where(t.payments.c.payment_id == pid)
                .values(closed_at=datetime(2099, 1, 1, tzinfo=UTC))
            )  # fmt: skip
    lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    got = stats.endings(engine, lo, hi)

    ending = np.where(p["payment_id"].isin(ok.index), "recovered",
                      np.where(p["payment_id"].isin(closed), "lost", "open"))  # fmt: skip
    want = p.assign(ending=ending).groupby(["currency", "ending"])["amount"].agg(["size", "sum"])
    assert {(r["currency"], r["ending"]): r["payments"] for r in got["endings"]} == (
        want["size"].to_dict()
    )
    for r in got["endings"]:
        scale = 1 if r["currency"] in ZERO_DECIMAL else 100
        assert r["amount"] == pytest.approx(want.loc[(r["currency"], r["ending"]), "sum"] / scale)
    days = (ok - p.set_index("payment_id").loc[ok.index, "failed_at"]).dt.total_seconds() / 86400
    edges = [-np.inf] + [b for b, _ in stats.RECOVERY_TIMES if b is not None] + [np.inf]
    counts = pd.cut(days, edges, right=False).value_counts(sort=False).tolist()
    assert [r["payments"] for r in got["times"]] == counts
    assert sum(counts) == len(ok) > 0 and counts[0] < len(ok)
    # the median is a middle recovery's own time (the lower one for an even count)
    assert got["median_days"] == pytest.approx(np.sort(days)[(len(days) - 1) // 2], abs=1e-5)
    scoped = stats.endings(engine, lo, hi, accounts=[p["account_id"].iloc[0]])
    assert sum(r["payments"] for r in scoped["endings"]) == int(
        (p["account_id"] == p["account_id"].iloc[0]).sum()
    )


def test_money_by_decline_category_equals_pandas(engine, history) -> None:
    repo.save_contract(engine, history)
    lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    got = stats.decline_money(engine, lo, hi)
    p = history.payments
    won = p["payment_id"].isin(history.attempts.loc[history.attempts["outcome"] == "succeeded",
                                                    "payment_id"])  # fmt: skip
    category = [vocab.decline_category(c, None, None, None) or "unknown" for c in p["decline_code"]]
    frame = p.assign(category=category, won=won, won_amount=np.where(won, p["amount"], 0))
    want = frame.groupby(["category", "currency"]).agg(
        failed=("amount", "size"), recovered=("won", "sum"), amount=("amount", "sum"),
        won_amount=("won_amount", "sum"),
    )  # fmt: skip
    assert len(got) == len(want) > 3
    for r in got:
        w = want.loc[(r["category"], r["currency"])]
        scale = 1 if r["currency"] in ZERO_DECIMAL else 100
        assert (r["failed"], r["recovered"]) == (w["failed"], w["recovered"])
        assert r["failed_amount"] == pytest.approx(w["amount"] / scale)
        assert r["recovered_amount"] == pytest.approx(w["won_amount"] / scale)


def test_the_stats_api_shows_each_key_its_own_accounts(client, history) -> None:
    engine = client.app.state.engine
    repo.save_contract(engine, history)
    accounts = sorted(history.payments["account_id"].unique())
    _, analyst = create_key(engine, "analyst")
    _, scoped = create_key(engine, "analyst", accounts=[accounts[0]])
    failed = history.payments["failed_at"]  # the whole history (periods are at most 3 years)
    period = {"start": f"{failed.min():%Y-%m-%d}", "end": f"{failed.max():%Y-%m-%d}"}

    def get(path, key, **params):
        return client.get(path, params={**period, **params},
                          headers={"Authorization": f"Bearer {key}"})  # fmt: skip

    whole = get("/v1/stats/overview", analyst)
    assert whole.status_code == 200, whole.text
    assert sum(c["failed"] for c in whole.json()["currencies"]) == len(history.payments)
    own = get("/v1/stats/overview", scoped).json()
    mine = (history.payments["account_id"] == accounts[0]).sum()
    assert sum(c["failed"] for c in own["currencies"]) == mine
    listed = get("/v1/stats/accounts", scoped, limit=500).json()
    assert {r["account_id"] for r in listed["rows"]} == {accounts[0]}
    assert get("/v1/stats/overview", scoped, account_id=accounts[1]).status_code == 404
    assert get("/v1/stats/overview", analyst, account_id=accounts[1]).status_code == 200
    # the client's own key is a scheduler's: not for statistics
    assert client.get("/v1/stats/overview").status_code == 403
    assert (
        get("/v1/stats/overview", analyst, start="2026-05-02", end="2026-05-01").status_code == 422
    )
    assert get("/v1/stats/accounts", analyst, sort="amount; drop").status_code == 422
    assert get("/v1/stats/overview", analyst, start="1900-01-01").status_code == 422


@pytest.mark.parametrize(
    "by", ["decline_category", "charge_model", "card_brand", "retries", "local_hour"]
)
def test_breakdowns_equal_pandas_on_both_databases(engine, history, by) -> None:
    from reclaim import vocab

    repo.save_contract(engine, history)
    lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    got = {r["key"]: (r["failed"], r["recovered"]) for r in stats.breakdown(engine, lo, hi, by)}
    p, a = history.payments, history.attempts
    ok = p["payment_id"].isin(set(a.loc[a["outcome"] == "succeeded", "payment_id"]))
    if by == "decline_category":
        key = p["decline_code"].map(lambda c: vocab.decline_category(c, None, None, None))
    elif by == "retries":
        merchant = a[(a["initiator"] == "merchant") & (a["attempt_number"] > 0)]
        key = p["payment_id"].map(merchant.groupby("payment_id").size()).fillna(0).astype(int)
    elif by == "local_hour":  # pandas' own timezone conversion, independent of the store's
        hour = [
            "unknown" if tz is None or pd.isna(tz) else str(at.tz_convert(tz).hour)
            for at, tz in zip(p["failed_at"], p["customer_timezone"], strict=True)
        ]
        key = pd.Series(hour, index=p.index)
        assert key.nunique() > 12  # the history spreads over the clock
    else:
        key = p[by].astype(str)
    want = (
        pd.DataFrame({"key": key.astype(str), "ok": ok}).groupby("key")["ok"].agg(["size", "sum"])
    )
    assert got == {k: (int(r["size"]), int(r["sum"])) for k, r in want.iterrows()}


def test_operations_count_due_retries_and_stuck_webhooks(engine) -> None:
    import sqlalchemy as sa

    from reclaim.serving.store import tables as t

    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    rows = [
        {"action_id": f"p{i}:0:0", "payment_id": f"p{i}", "account_id": "acct_a" if i else "acct_b",
         "after_attempt": 0, "decided_at": now, "retry_at": now.replace(hour=h),
         "status": status, "updated_at": now, "tries": 0}
        for i, (h, status) in enumerate([(9, "scheduled"), (11, "scheduled"), (13, "scheduled"),
                                         (10, "in_flight"), (8, "done")])
    ]  # fmt: skip
    event = {"event_id": "evt_1", "endpoint": "platform", "type": "invoice.payment_failed",
             "livemode": False, "payload": "{}", "received_at": now.replace(hour=1),
             "deliveries": 1, "status": "failed", "tries": 3}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(t.scheduled_actions), rows)
        conn.execute(sa.insert(t.stripe_events), [event])
    ops = stats.operations(engine, now, stuck_after=600)
    assert ops["due"] == 2 and ops["in_flight"] == 1 and ops["webhooks_stuck"] == 1
    assert ops["oldest_due_seconds"] == pytest.approx(3 * 3600)
    mine = stats.operations(engine, now, stuck_after=600, accounts=frozenset({"acct_a"}))
    assert mine["due"] == 1 and mine["webhooks_stuck"] is None
