"""Network rules are hard limits: property-based over random policies, and case by case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reclaim import contract, rules, vocab
from reclaim.policy import ActionBatch, DecisionBatch, Policy
from reclaim.reference import REFERENCE_POLICIES, RandomizedLogging
from reclaim.simulator import Marketplace, Oracle, generate, rollout

RULES = rules.NetworkRules()


class Reckless(Policy):
    """Proposes retries with arbitrary delays (negative, zero, huge) and always messages."""

    name = "reckless"

    def __init__(self, delays_hours: list[float]):
        self.delays_hours = delays_hours

    def act(self, batch: DecisionBatch, rng: np.random.Generator) -> ActionBatch:
        k = batch.state["decision_number"].to_numpy()
        delay = np.asarray(self.delays_hours)[k % len(self.delays_hours)]
        at = batch.now + pd.to_timedelta(delay, unit="h")
        return ActionBatch.build(
            len(batch),
            retry_at=at,
            channel=np.full(len(batch), "sms"),
            sender=np.full(len(batch), "platform"),
        )


@pytest.fixture(scope="module")
def small_market() -> Marketplace:
    return generate(8, 400, seed=3)


def assert_within_network_rules(market: Marketplace, attempts: pd.DataFrame) -> None:
    """Every hard limit of the networks and Stripe (docs/sources.md), checked on logged
    attempts."""
    pay = market.payments.set_index("payment_id")
    a = attempts.sort_values(["payment_id", "attempt_number"])
    retries = a[(a["initiator"] == "merchant") & (a["attempt_number"] > 0)]
    # caps per card (one card per payment here) within the 30-day window
    counts = retries.groupby("payment_id").size()
    cap = pd.Series(RULES.max_retries(pay["card_brand"]), index=pay.index)
    assert (counts <= cap.reindex(counts.index)).all()
    # window
    end = pay["failed_at"] + pd.Timedelta(days=RULES.window_days)
    assert (
        retries["attempted_at"].to_numpy() <= end.reindex(retries["payment_id"]).to_numpy()
    ).all()
    # never after a hard decline; waits after advice codes; minimum gap
    failed = a[a["outcome"] == "failed"]
    cat = vocab.decline_categories(
        failed["decline_code"],
        failed["advice_code"],
        failed["network_decline_code"],
        failed["network_advice_code"],
    )
    hard_ids = set(failed.loc[(cat == "hard").to_numpy(), "payment_id"])
    assert not hard_ids & set(retries["payment_id"])
    prev = a.groupby("payment_id").shift(1)
    gap_h = (a["attempted_at"] - prev["attempted_at"]) / pd.Timedelta(hours=1)
    is_retry = (a["initiator"] == "merchant") & (a["attempt_number"] > 0)
    need = vocab.lookup(
        prev["network_advice_code"],
        {**vocab.MASTERCARD_WAIT_HOURS, "02": RULES.try_later_hours},
        0.0,
    )
    need = np.maximum(need.astype(float), RULES.min_gap_hours)
    assert (gap_h[is_retry].to_numpy() >= need[is_retry.to_numpy()] - 1e-9).all()
    # only the customer clears 3D Secure: no merchant retry right after one
    assert not (is_retry & prev["decline_code"].isin(list(vocab.CUSTOMER_ACTION_CODES))).any()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.floats(min_value=-48, max_value=24 * 40, allow_nan=False), min_size=1, max_size=6)
)
def test_no_policy_can_break_the_network_rules(small_market: Marketplace, delays: list[float]):
    out = rollout(small_market, Reckless(delays))
    assert_within_network_rules(small_market, out.tables.attempts)


@pytest.mark.parametrize("name", [*REFERENCE_POLICIES, "oracle", "randomized_logging"])
def test_reference_policies_respect_the_rules(small_market: Marketplace, name: str) -> None:
    policy = {"oracle": Oracle(small_market), "randomized_logging": RandomizedLogging()}.get(
        name
    ) or REFERENCE_POLICIES[name]()
    out = rollout(small_market, policy)
    assert_within_network_rules(small_market, out.tables.attempts)


def _one(
    market: Marketplace, code: str, brand: str = "visa", mac: str | None = None, n_retries: int = 0
) -> DecisionBatch:
    p = market.payments.iloc[[0]].copy()
    p["decline_code"] = code
    p["card_brand"] = pd.Categorical([brand], dtype=vocab.CARD_BRAND_DTYPE)
    p["advice_code"] = pd.Categorical([None], dtype=vocab.ADVICE_CODE_DTYPE)
    known = vocab.DECLINE_CODES.get(code)
    p["network_decline_code"] = known.network_code if known else None
    p["network_advice_code"] = pd.Series([mac], dtype=p["network_advice_code"].dtype).to_numpy()
    t0 = p["failed_at"].iloc[0]
    rows = [
        {
            "payment_id": p["payment_id"].iloc[0],
            "attempt_number": i,
            "attempted_at": t0 + pd.Timedelta(hours=i),
            "initiator": "merchant",
            "outcome": "failed",
            "decline_code": code,
            "advice_code": None,
            "network_decline_code": known.network_code if known else None,
            "network_advice_code": mac,
            "policy": None,
            "propensity": None,
        }
        for i in range(n_retries + 1)
    ]
    attempts = contract.conform(contract.ATTEMPTS, pd.DataFrame(rows))
    now = pd.Series([t0 + pd.Timedelta(hours=n_retries)])
    return DecisionBatch.from_history(p, attempts, contract.empty(contract.MESSAGES), now)


def _retry_in(batch: DecisionBatch, hours: float) -> ActionBatch:
    return ActionBatch.build(1, retry_at=batch.now + pd.Timedelta(hours=hours))


def test_enforce_blocks_hard_declines(small_market: Marketplace) -> None:
    batch = _one(small_market, "stolen_card")
    out = rules.enforce(batch, _retry_in(batch, 48), RULES)
    assert out.retry_at.isna().all() and out.reason.iloc[0] == "hard_decline"


@pytest.mark.parametrize("code", ["unknown", "a_code_stripe_added_later"])
def test_a_decline_reclaim_does_not_know_is_never_retried(small_market: Marketplace, code):
    """Never on a guess that it is soft: a retry after a Visa category-1 decline is a breach."""
    assert vocab.decline_category(code, None, None, None) == "hard"
    batch = _one(small_market, code)
    out = rules.enforce(batch, _retry_in(batch, 48), RULES)
    assert out.retry_at.isna().all() and out.reason.iloc[0] == "hard_decline"


def test_enforce_stops_at_the_visa_cap(small_market: Marketplace) -> None:
    batch = _one(small_market, "generic_decline", n_retries=15)
    out = rules.enforce(batch, _retry_in(batch, 24), RULES)
    assert out.reason.iloc[0] == "network_cap"
    batch = _one(small_market, "generic_decline", brand="mastercard", n_retries=15)
    assert rules.enforce(batch, _retry_in(batch, 24), RULES).retry_at.notna().all()


def test_enforce_waits_for_mastercard_advice(small_market: Marketplace) -> None:
    batch = _one(small_market, "generic_decline", brand="mastercard", mac="27")  # 4 days
    out = rules.enforce(batch, _retry_in(batch, 2), RULES)
    assert out.retry_at.iloc[0] == batch.state["last_attempt_at"].iloc[0] + pd.Timedelta(days=4)


def test_enforce_closes_the_window(small_market: Marketplace) -> None:
    batch = _one(small_market, "generic_decline")
    out = rules.enforce(batch, _retry_in(batch, 24 * 31), RULES)
    assert out.retry_at.isna().all() and out.reason.iloc[0] == "window_closed"


def test_visa_cap_is_configurable(small_market: Marketplace) -> None:
    batch = _one(small_market, "generic_decline", n_retries=15)
    looser = rules.NetworkRules(visa_max_retries=20)
    assert rules.enforce(batch, _retry_in(batch, 24), looser).retry_at.notna().all()


def test_authentication_required_is_never_retried_by_the_merchant(small_market) -> None:
    """Only the customer can complete 3D Secure: the retry is dropped, a reminder goes out."""
    batch = _one(small_market, "authentication_required")
    out = rules.enforce(batch, _retry_in(batch, 24), RULES)
    assert out.retry_at.isna().all() and out.reason.iloc[0] == "customer_action"
    assert out.channel.iloc[0] == "email" and out.channel_propensity[0] == 1.0
    # a policy's own message is kept (with its propensity); the retry is still dropped
    own = ActionBatch.build(
        1, retry_at=batch.now + pd.Timedelta(hours=2), channel=["sms"], sender=["platform"],
        channel_propensity=0.4,
    )  # fmt: skip
    out = rules.enforce(batch, own, RULES)
    assert out.retry_at.isna().all() and out.channel.iloc[0] == "sms"
    assert out.channel_propensity[0] == 0.4


def test_the_3ds_reminder_is_sent_once_per_decline(small_market) -> None:
    batch = _one(small_market, "authentication_required")
    pid, t0 = batch.payments["payment_id"].iloc[0], batch.payments["failed_at"].iloc[0]
    messages = contract.conform(
        contract.MESSAGES,
        pd.DataFrame(
            [{"message_id": "m1", "payment_id": pid, "sent_at": t0, "channel": "email",
              "sender": "platform", "policy": None, "propensity": None}]
        ),
    )  # fmt: skip
    later = DecisionBatch.from_history(
        batch.payments,
        contract.first_failures(batch.payments),
        messages,
        batch.now + pd.Timedelta(hours=30),
    )
    out = rules.enforce(later, ActionBatch.build(1), RULES)
    assert out.reason.iloc[0] == "customer_action" and out.channel.isna().all()


def test_a_customer_attempt_after_3ds_reopens_merchant_retries(small_market) -> None:
    batch = _one(small_market, "authentication_required")
    p = batch.payments
    first = contract.first_failures(p)
    theirs = first.assign(
        attempt_number=1,
        attempted_at=first["attempted_at"] + pd.Timedelta(hours=5),
        initiator=pd.Categorical(["customer"], dtype=first["initiator"].dtype),
        decline_code="insufficient_funds",
        network_decline_code="51",
    )
    later = DecisionBatch.from_history(
        p,
        pd.concat([first, theirs], ignore_index=True),
        contract.empty(contract.MESSAGES),
        p["failed_at"] + pd.Timedelta(hours=6),
    )
    out = rules.enforce(later, _retry_in(later, 24), RULES)
    assert out.retry_at.notna().all() and out.reason.iloc[0] == ""
