"""The API's path for a few decisions (``features.single``, ``LearnedPolicy.act_rows``,
``rules.enforce_row``) against the batch path (``DecisionBatch``, ``decision_features``,
``LearnedPolicy.act``, ``rules.enforce``) on thousands of random contexts: the same history
summaries, limits, features, actions, propensities, probabilities and reasons."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta

import mlflow
import numpy as np
import pandas as pd
import pytest

from reclaim import contract, vocab
from reclaim.account_config import AccountConfig, constraint_row, constraints
from reclaim.features import single
from reclaim.features.candidates import expand_retry_times
from reclaim.features.decisions import decision_features
from reclaim.models import lgbm
from reclaim.policy import STATE_COLUMNS, DecisionBatch, summarize_row
from reclaim.reference import REFERENCE_POLICIES
from reclaim.rules import NetworkRules, enforce, enforce_row, limits, limits_row

CONTEXTS = 3000
ZONES = ["America/Chicago", "Europe/Paris", "Asia/Kolkata", "Australia/Sydney", None]
CODES = [*vocab.DECLINE_CODES, "weird_code"]
NETWORK_ADVICE = [None, None, None, "01", "02", "03", "21", "24", "26", "30", "99"]
NETWORK_DECLINE = [None, "05", "51", "43", "R0", "14", "zz"]


def _config(rng: np.random.Generator) -> AccountConfig:
    channels = [c for c in vocab.Channel if rng.random() < 0.7]
    return AccountConfig(
        opted_out=bool(rng.random() < 0.1),
        max_retries=None if rng.random() < 0.5 else int(rng.integers(0, 8)),
        allowed_channels=channels,
        max_messages=int(rng.integers(0, 4)),
        sender=None if rng.random() < 0.6 else rng.choice(list(vocab.Sender)),
    )


def _contexts(seed: int, n: int, accounts: list[str]):
    """``n`` random decisions: payments, attempts, messages, times and account configs."""
    rng = np.random.default_rng(seed)
    configs = {a: _config(rng) for a in accounts}
    pick = lambda values: values[int(rng.integers(len(values)))]  # noqa: E731
    payments, attempts, messages, now = [], [], [], []
    for i in range(n):
        failed = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(
            minutes=int(rng.integers(0, 60 * 24 * 200))
        )
        code = pick(CODES)
        p = {
            "payment_id": f"pay_{seed}_{i}",
            "object": pick([o.value for o in vocab.PaymentObject]),
            "account_id": pick(accounts),
            "charge_model": pick([c.value for c in vocab.ChargeModel]),
            "on_behalf_of": bool(rng.random() < 0.2),
            "amount": int(rng.integers(50, 5_000_000)),
            "reachable_email": bool(rng.random() < 0.9),
            "reachable_sms": bool(rng.random() < 0.6),
            "reachable_in_app": bool(rng.random() < 0.5),
            "currency": pick(["usd", "eur", "jpy", "inr", "xyz"]),
            "application_fee_amount": None,
            "customer_id": f"cus_{i}",
            "customer_country": pick(["US", "FR", None]),
            "customer_timezone": pick(ZONES),
            "card_brand": pick([b.value for b in vocab.CardBrand]),
            "card_funding": pick([f.value for f in vocab.Funding]),
            "card_country": pick(["US", "FR", "ZZ", None]),
            "billing_reason": pick([b.value for b in vocab.BillingReason]),
            "failed_at": failed,
            "decline_code": code,
            "advice_code": pick([None, None, *[a.value for a in vocab.AdviceCode]]),
            "network_decline_code": pick(NETWORK_DECLINE),
            "network_advice_code": pick(NETWORK_ADVICE),
        }
        rows = [
            {
                "payment_id": p["payment_id"],
                "attempt_number": 0,
                "attempted_at": failed,
                "initiator": "merchant",
                "outcome": "failed",
                **{
                    k: p[k]
                    for k in (
                        "decline_code",
                        "advice_code",
                        "network_decline_code",
                        "network_advice_code",
                    )
                },  # fmt: skip
            }
        ]
        at = failed
        for k in range(int(rng.integers(0, 6))):
            # some attempts at the same moment as another, to pin down which counts as last
            at = at + timedelta(hours=float(rng.choice([0, 0.5, 3, 26, 100])))
            ok = rng.random() < 0.15
            rows.append(
                {
                    "payment_id": p["payment_id"],
                    "attempt_number": k + 1,
                    "attempted_at": at,
                    "initiator": pick(["merchant", "merchant", "customer"]),
                    "outcome": "succeeded" if ok else "failed",
                    "decline_code": None if ok else pick(CODES),
                    "advice_code": None
                    if ok
                    else pick([None, "try_again_later", "do_not_try_again"]),  # fmt: skip
                    "network_decline_code": None if ok else pick(NETWORK_DECLINE),
                    "network_advice_code": None if ok else pick(NETWORK_ADVICE),
                }
            )
        sent = [
            {
                "message_id": f"m_{i}_{k}",
                "payment_id": p["payment_id"],
                "sent_at": failed + timedelta(hours=float(rng.integers(0, 300))),
                "channel": pick([c.value for c in vocab.Channel]),
                "sender": pick([s.value for s in vocab.Sender]),
            }
            for k in range(int(rng.integers(0, 4)))
        ]
        # decision time: at the failure, at an attempt, between, or past the window
        t = pick([failed, at, at + timedelta(hours=float(rng.integers(0, 400)))])
        payments.append(p)
        attempts.append(rows)
        messages.append(sent)
        now.append(t)
    return payments, attempts, messages, now, configs


def _batch(payments, attempts, messages, now, configs) -> DecisionBatch:
    frame = contract.conform(contract.PAYMENTS, pd.DataFrame(payments))
    a_rows = [{**r, "policy": None, "propensity": np.nan} for rows in attempts for r in rows]
    a = contract.conform(contract.ATTEMPTS, pd.DataFrame(a_rows))
    m_rows = [{**r, "policy": None, "propensity": np.nan} for rows in messages for r in rows]
    m = (
        contract.conform(contract.MESSAGES, pd.DataFrame(m_rows))
        if m_rows
        else contract.empty(contract.MESSAGES)
    )
    return DecisionBatch.from_history(
        frame, a, m, pd.Series(now), constraints(frame["account_id"], configs)
    )


def _assert_same_actions(mine: list[dict], acts) -> None:
    """The row path's actions are the batch path's: retry times, channels and senders."""
    assert [a["retry_at"] for a in mine] == [
        None if pd.isna(t) else t.to_pydatetime() for t in acts.retry_at
    ]
    assert [a["channel"] for a in mine] == acts.channel.astype(object).where(
        acts.channel.notna(), None
    ).tolist()
    assert [a["sender"] for a in mine] == acts.sender.astype(object).where(
        acts.sender.notna(), None
    ).tolist()


@pytest.fixture(scope="module")
def policy(trained):
    mlflow.set_tracking_uri(trained.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/reclaim-policy@champion")
    return model.unwrap_python_model().policy


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_row_path_equals_the_batch_path(policy, trained, seed):
    accounts = [*trained.market.payments["account_id"].unique()[:5], "acct_never_seen"]
    payments, attempts, messages, now, configs = _contexts(seed, CONTEXTS // 3, accounts)
    rules = NetworkRules()
    batch = _batch(payments, attempts, messages, now, configs)
    rows_c = [constraint_row(configs[p["account_id"]]) for p in payments]

    # history summaries and limits
    states = [summarize_row(*x) for x in zip(payments, attempts, messages, now, strict=True)]
    got = pd.DataFrame(states, columns=list(STATE_COLUMNS))
    want = batch.state.astype(object).where(batch.state.notna(), None)
    for column in STATE_COLUMNS:
        mine = got[column].map(lambda v: pd.Timestamp(v) if isinstance(v, datetime) else v)
        theirs = want[column].map(lambda v: None if v is None else v)
        assert mine.tolist() == theirs.tolist(), column
    lim = limits(batch, rules)
    lims = [limits_row(*x, rules, c) for x, c in zip(zip(payments, states, now), rows_c)]  # noqa: B905
    assert [x["blocked"] for x in lims] == lim["blocked"].tolist()
    assert [x["retries_left"] for x in lims] == lim["retries_left"].tolist()
    assert [pd.Timestamp(x["earliest_retry_at"]) for x in lims] == lim["earliest_retry_at"].tolist()

    # features, exactly as LightGBM sees them
    decisions = single.build(payments, attempts, messages, now, rows_c, policy.accounts, rules)
    frame = decision_features(batch, policy.accounts, policy.network_rules)
    names = list(frame.columns)
    categories = [
        list(frame[c].cat.categories)
        for c in names
        if isinstance(frame[c].dtype, pd.CategoricalDtype)
    ]
    expected = lgbm.as_matrix(frame, categories)
    assert expected is not None
    np.testing.assert_allclose(decisions.matrix(names), expected, rtol=0, atol=1e-9)
    # in the API's sizes, the account aggregates come through their (account, day) cache
    for start in range(0, len(payments), 50):
        part = slice(start, start + 50)
        small = single.build(payments[part], attempts[part], messages[part], now[part],
                             rows_c[part], policy.accounts, rules)  # fmt: skip
        np.testing.assert_array_equal(small.matrix(names), decisions.matrix(names)[part])

    # every retry candidate's features, across daylight-saving changes too
    rows = np.arange(0, len(payments), 7)
    retry_names = list(policy.retry_model.feature_names_in_)
    grid = expand_retry_times(
        batch.take(rows), frame.iloc[rows].reset_index(drop=True), policy.delays_hours
    )[retry_names]
    grid_categories = [
        list(grid[c].cat.categories)
        for c in retry_names
        if isinstance(grid[c].dtype, pd.CategoricalDtype)
    ]
    np.testing.assert_allclose(
        decisions.retry_grid(rows, policy.delays_hours, retry_names),
        lgbm.as_matrix(grid, grid_categories),
        rtol=0,
        atol=1e-9,
    )

    # actions, with exploration drawn from the same seed, and the rules applied after
    acts = policy.act(batch, np.random.default_rng(seed))
    mine = policy.act_rows(decisions, np.random.default_rng(seed))
    _assert_same_actions(mine, acts)
    np.testing.assert_allclose([a["retry_propensity"] for a in mine], acts.retry_propensity)
    np.testing.assert_allclose([a["channel_propensity"] for a in mine], acts.channel_propensity)
    assert any(a["retry_at"] for a in mine) and any(a["channel"] for a in mine)

    enforced = enforce(batch, acts, rules)
    mine = [
        enforce_row(s, x, t, a, c, p)
        for s, x, t, a, c, p in zip(states, lims, now, mine, rows_c, payments, strict=True)
    ]
    retry_at = [a["retry_at"] for a in mine]
    assert retry_at == [None if pd.isna(t) else t.to_pydatetime() for t in enforced.retry_at]
    assert [a["reason"] for a in mine] == enforced.reason.tolist()
    assert [a["channel"] for a in mine] == enforced.channel.astype(object).where(
        enforced.channel.notna(), None
    ).tolist()
    assert [a["sender"] for a in mine] == enforced.sender.astype(object).where(
        enforced.sender.notna(), None
    ).tolist()
    np.testing.assert_allclose([a["channel_propensity"] for a in mine], enforced.channel_propensity)
    assert "customer_action" in enforced.reason.tolist()  # the 3D Secure rule is exercised

    # bounded retry counts (a plain export's support, issue 30): both paths stop retrying
    # after the bound of each decision's category, and agree on everything else
    bounded = copy.copy(policy)
    bounded.last_retry = {"*": 1, "soft": 0}
    acts_b = bounded.act(batch, np.random.default_rng(seed))
    mine_b = bounded.act_rows(decisions, np.random.default_rng(seed))
    _assert_same_actions(mine_b, acts_b)
    features_b = frame[["decision_number", "decline_category"]]
    over = (features_b["decision_number"] > 1) | (
        (features_b["decline_category"] == "soft") & (features_b["decision_number"] > 0)
    )
    assert over.any() and acts_b.retry_at[over.to_numpy()].isna().all()
    greedy = np.asarray(acts_b.retry_propensity) > 0.5  # not an exploration draw
    assert acts_b.retry_at[~over.to_numpy() & greedy].notna().any()

    # the chosen retries' probabilities and reasons
    p_batch, why_batch = policy.describe(batch, enforced)
    p_rows, why_rows = policy.describe_rows(decisions, retry_at)
    np.testing.assert_allclose(p_rows, p_batch, rtol=0, atol=1e-12)
    assert why_rows == why_batch
    assert sum(1 for w in why_rows if w) > 25

    # the timing effect the policy was trained with shifts its chances the same way in both
    # paths, and says so among the reasons where it moves them most
    assert policy.timing is not None
    loud = copy.copy(policy)
    loud.timing = dataclasses.replace(policy.timing, coef=(-3.0, -2.0, -1.0))
    p_batch, why_batch = loud.describe(batch, enforced)
    p_rows, why_rows = loud.describe_rows(decisions, retry_at)
    np.testing.assert_allclose(p_rows, p_batch, rtol=0, atol=1e-12)
    assert why_rows == why_batch
    assert any(r.startswith("local_time=night") for w in why_rows for r in w), why_rows[:5]


@pytest.mark.parametrize("name", ["stripe_like", "fixed_schedule"])
def test_a_schedule_decides_the_same_on_rows_as_on_the_batch(trained, name):
    """The API's control arm decides on plain rows: the same retries, messages and senders as
    the policy's batch path, within each account's limits."""
    accounts = [*trained.market.payments["account_id"].unique()[:5], "acct_never_seen"]
    payments, attempts, messages, now, configs = _contexts(7, 600, accounts)
    batch = _batch(payments, attempts, messages, now, configs)
    policy = REFERENCE_POLICIES[name]()
    acts = policy.act(batch, np.random.default_rng(0))
    states = [summarize_row(*x) for x in zip(payments, attempts, messages, now, strict=True)]
    rows_c = [constraint_row(configs[p["account_id"]]) for p in payments]
    mine = policy.act_rows(payments, states, now, rows_c)
    _assert_same_actions(mine, acts)
    assert any(a["retry_at"] for a in mine) and any(a["retry_at"] is None for a in mine)
