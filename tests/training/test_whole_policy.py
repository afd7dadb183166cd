"""The whole-policy estimator (``training.whole_policy``) against what it replays and against
the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim import contract, vocab
from reclaim.reference import FixedSchedule, StripeLike
from reclaim.simulator import fresh_payments, generate, platform_export, rollout
from reclaim.training import whole_policy
from reclaim.training.prepared import TrainConfig, prepare_tables


def test_the_history_replays_at_its_logged_times_and_stops_where_it_stopped():
    """A stripe_like history replayed through the model: an unrecovered payment's retries are
    its logged ones, gap for gap; the payments and the messages given are left as they were;
    the replay recovers about what the history did (the model check)."""
    market = generate(10, 1_500, seed=3)
    tables = platform_export(rollout(market, StripeLike(), seed=3).tables)
    prepared = prepare_tables(tables, TrainConfig(test_share=0.3))
    model = prepared.retry.fit(TrainConfig(retry_rounds=60))
    test = prepared.test_tables
    before = test.payments.copy()
    history = whole_policy.LoggedSchedule(
        test, whole_policy.fallback_delays(prepared.retry.support())
    )
    paid = whole_policy.customer_paid_at(test.payments, test.attempts)
    rolled = whole_policy.rollout(
        history, test.payments, test.messages, model, prepared.accounts, customer_paid=paid
    )
    pd.testing.assert_frame_equal(test.payments, before)

    a = test.attempts
    merchant = a[a["initiator"] == vocab.Initiator.MERCHANT].sort_values(
        ["payment_id", "attempt_number"]
    )  # the first failure (attempt 0) and every retry
    logged = merchant.groupby("payment_id", observed=True)["attempted_at"].diff().dropna()
    fallback = whole_policy.fallback_delays(prepared.retry.support())
    known = {*np.round(logged.dt.total_seconds() / 3600, 6), *fallback.round(6)}
    gaps = np.round(rolled.gaps, 6)
    assert set(gaps) <= known, set(gaps) - known
    assert gaps.min() >= 24, "no retry sooner than stripe_like's day"
    observed = a.loc[a["outcome"] == "succeeded", "payment_id"].nunique() / len(test.payments)
    assert abs(rolled.value.mean() - observed) < 0.04, (rolled.value.mean(), observed)
    assert ((rolled.value >= 0) & (rolled.value <= 1 + 1e-12)).all()


def test_schedules_valued_by_rollout_differ_as_they_do_in_the_simulator(trained):
    """Two retry schedules without messages, valued through a retry model trained on a
    randomized history, on fresh payments nobody trained on: the rollout's difference is the
    simulator's (recovered by a retry) within 4 points."""
    policy = trained.result.policy
    fresh = fresh_payments(trained.market, 3_000, 21)
    none = contract.empty(contract.MESSAGES)
    rolled, truth = {}, {}
    for name, schedule in (("four", FixedSchedule((1, 3, 5, 7))), ("one", FixedSchedule((2,)))):
        rolled[name] = whole_policy.rollout(
            schedule, fresh.payments, none, policy.retry_model, policy.accounts
        )
        outcomes = rollout(fresh, schedule, seed=21).outcomes
        truth[name] = float((outcomes["recovered_by"] == "merchant").mean())
    estimate = whole_policy.compare(rolled["four"], rolled["one"])
    true_uplift = truth["four"] - truth["one"]
    assert estimate.uplift.value > 0 and true_uplift > 0
    assert abs(estimate.uplift.value - true_uplift) < 0.04, (estimate, truth)
    assert estimate.policy_retries > estimate.history_retries
