"""The oracle is the simulator's ceiling: planned by backward induction on each payment's
hidden state, no policy of the project beats it, overall or on any decline kind, over
several marketplaces; its plans keep every rule; and what a plan expects is what the world
gives it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reclaim import contract, rules
from reclaim.policy import ActionBatch, DecisionBatch, Policy, Uniforms
from reclaim.reference import RandomizedLogging
from reclaim.simulator import compare, generate, reference_policies
from reclaim.simulator.evaluation import decline_kinds, paired_difference
from reclaim.simulator.oracle import Oracle


class Enforced(Policy):
    """The oracle, with every action it proposes checked against ``rules.enforce``."""

    name = "oracle"

    def __init__(self, oracle: Oracle):
        self.oracle = oracle
        self.changed = 0
        self.retries = 0

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        raw = self.oracle.act(batch, rng)
        kept = rules.enforce(batch, raw, self.oracle.market.config.rules)
        moved = (raw.retry_at.fillna(NEVER) != kept.retry_at.fillna(NEVER)).to_numpy()
        dropped = raw.channel.astype(object).fillna("") != kept.channel.astype(object).fillna("")
        # the 3D Secure reminder the rules add where the oracle sends nothing is the rules'
        added = raw.channel.isna() & kept.channel.notna()
        self.changed += int(moved.sum() + (dropped & ~added).sum())
        self.retries += int(raw.retry_at.notna().sum())
        return raw


NEVER = pd.Timestamp("2200-01-01", tz="UTC")


@pytest.fixture(scope="module", params=[21, 22, 23])
def compared(request):
    market = generate(40, 2_500, seed=request.param)
    policies = {**reference_policies(market), "randomized_logging": RandomizedLogging()}
    policies["oracle"] = Enforced(Oracle(market))
    table, rollouts = compare(market, policies, seed=request.param)
    return market, policies, table, rollouts


def test_no_policy_beats_the_ceiling_overall_or_on_any_decline_kind(compared) -> None:
    market, _, table, rollouts = compared
    kinds = decline_kinds(market)
    ceiling = rollouts["oracle"].outcomes
    assert table["net_usd"].idxmax() == "oracle", table["net_usd"]
    for name, rolled in rollouts.items():
        if name == "oracle":
            continue
        # overall the ceiling is ahead beyond doubt
        assert paired_difference(rolled.outcomes, ceiling)[2] < 0, name
        # on each kind, no policy is ahead of it beyond chance (paired on the same payments)
        for kind in np.unique(kinds):
            diff, lo, hi = paired_difference(rolled.outcomes, ceiling, kinds == kind)
            assert lo <= 0, (name, kind, diff, lo, hi)


def test_the_plans_expectation_is_what_the_world_gives(compared) -> None:
    """The induction's expected net revenue, summed over payments, falls inside the realized
    total's 95% interval: the plan models the environment it acts in."""
    _, policies, _, rollouts = compared
    outcomes = rollouts["oracle"].outcomes
    expected = policies["oracle"].oracle.expected_net_usd
    assert np.isfinite(expected).all()  # every payment was planned
    net = (outcomes["recovered_usd"] - outcomes["cost_usd"]).to_numpy()
    # the realized total varies around the expectation by the per-payment outcome noise,
    # bounded by each payment's amount: a Bernoulli-like spread around its expectation
    residual = net - expected
    half = 1.96 * residual.std(ddof=1) * np.sqrt(len(net))
    assert abs(net.sum() - expected.sum()) <= half, (net.sum(), expected.sum(), half)


def test_the_plans_keep_every_rule_and_the_message_limit(compared) -> None:
    """Enforcement changes nothing the oracle proposes (its retries are already within the
    caps, waits and window, its messages within the account's limit and channels), and no
    payment gets more than the platform's three messages."""
    market, policies, _, rollouts = compared
    checked = policies["oracle"]
    assert checked.retries > len(market) and checked.changed == 0
    t = rollouts["oracle"].tables
    assert t.messages.groupby("payment_id").size().max() <= 3
    retried = t.attempts[
        (t.attempts["initiator"] == "merchant") & (t.attempts["attempt_number"] > 0)
    ]
    hard = set(market.payments["payment_id"].to_numpy()[decline_kinds(market) == "hard"])
    assert len(retried) and not retried["payment_id"].isin(hard).any()


def test_an_oracle_asked_mid_payment_refuses() -> None:
    market = generate(5, 20, seed=3)
    oracle = Oracle(market)
    batch = DecisionBatch.from_history(
        market.payments,
        contract.first_failures(market.payments),
        contract.empty(contract.MESSAGES),
        market.payments["failed_at"] + pd.Timedelta(hours=5),
    )
    batch.state["decision_number"] = 1
    with pytest.raises(ValueError, match="first decision"):
        oracle.act(batch, np.random.default_rng(0))


def test_plans_on_the_priors_stay_below_the_ceiling() -> None:
    """The same planner with the retries planned on the prior's odds (each payment's hidden
    retry state drawn again, ``benchmarks/ceiling_parts.py``) knows less, so the ceiling is
    ahead of it beyond doubt; so is it ahead of the planner that knows no customer either
    (their segments drawn again from their account's mix, self-cure unknown). The redrawn
    marketplaces change that state and nothing else."""
    from reclaim.simulator import truth
    from reclaim.simulator.marketplace import (
        CUSTOMER_STATE,
        RETRY_STATE,
        redraw_customer_state,
        redraw_retry_state,
    )

    market = generate(40, 1_500, seed=24)
    draws = [redraw_retry_state(market, k) for k in range(2)]
    customers = [redraw_customer_state(market, k) for k in range(2)]
    pd.testing.assert_frame_equal(draws[0].hidden, redraw_retry_state(market, 0).hidden)
    pd.testing.assert_frame_equal(customers[0].hidden, redraw_customer_state(market, 0).hidden)
    for draw, state in [
        *((d, RETRY_STATE) for d in draws),
        *((c, CUSTOMER_STATE) for c in customers),
    ]:
        assert draw.payments is market.payments and draw.noise is market.noise
        others = [c for c in market.hidden.columns if c not in state]
        pd.testing.assert_frame_equal(draw.hidden[others], market.hidden[others])
    for draw in draws:
        for column in ("hold_hours", "latent_r", "funds_window_days"):
            assert not np.allclose(draw.hidden[column], market.hidden[column]), column
            # drawn from the same distribution: medians agree within sampling error
            assert abs(draw.hidden[column].median() / market.hidden[column].median() - 1) < 0.15
    for draw in customers:
        # each customer's segment again from their account's mix: other customers, same shares
        assert (draw.hidden["segment"] != market.hidden["segment"]).mean() > 0.3
        shares = draw.hidden["segment"].value_counts(normalize=True)
        truth_shares = market.hidden["segment"].value_counts(normalize=True)
        assert (shares - truth_shares).abs().max() < 0.05, (shares, truth_shares)
        cured = np.isfinite(draw.hidden["self_cure_hours"]).mean()
        assert abs(cured - np.isfinite(market.hidden["self_cure_hours"]).mean()) < 0.03
    prior = truth.prior_retry_odds(draws)
    policies = {
        "ceiling": Oracle(market),
        "prior_retries": Oracle(market, retry_odds=prior, name="prior_retries"),
        "prior_plan": Oracle(
            market,
            retry_odds=prior,
            message_effect=truth.prior_message_effect(customers),
            knows_self_cure=False,
            name="prior_plan",
        ),
    }
    _, rollouts = compare(market, policies, seed=24)
    for name in ("prior_retries", "prior_plan"):
        diff, lo, hi = paired_difference(rollouts[name].outcomes, rollouts["ceiling"].outcomes)
        assert hi < 0, (name, diff, lo, hi)


def test_the_posterior_plan_learns_from_failed_retries_and_stays_below_the_ceiling() -> None:
    """``PosteriorPlan`` weighs the redrawn retry states by the failures seen: a hold whose
    retry failed a day after the decline has likely not lifted by then, so the draws where
    it had lifted lose weight. Acting on that it keeps every rule and knows less than the
    ceiling, which stays ahead of it beyond doubt."""
    from reclaim.simulator.marketplace import redraw_customer_state, redraw_retry_state
    from reclaim.simulator.posterior import PosteriorPlan

    market = generate(40, 800, seed=25)
    draws = [redraw_retry_state(market, k) for k in range(4)]
    customers = [redraw_customer_state(market, k) for k in range(2)]
    planner = PosteriorPlan(market, draws, customers)

    holds = np.flatnonzero(
        market.payments["decline_code"].isin(["try_again_later", "card_velocity_exceeded"])
    )
    failed = market.payments["failed_at"].to_numpy(dtype="datetime64[us]")[holds]
    planner._update(holds, np.ones(len(holds), dtype=int), failed + np.timedelta64(24, "h"))
    lifted = np.stack([d.hidden["hold_hours"].to_numpy()[holds] <= 24 for d in draws], axis=1)
    weight = planner._weight[holds]
    np.testing.assert_allclose(weight.sum(axis=1), 1.0)
    mixed = lifted.any(axis=1) & ~lifted.all(axis=1)
    assert mixed.sum() > 20
    # a draw where the hold had lifted by the failed retry weighs less than one where it had not
    assert (weight[mixed][lifted[mixed]].mean()) < 0.5 * weight[mixed][~lifted[mixed]].mean()

    checked = Enforced(PosteriorPlan(market, draws, customers))
    _, rollouts = compare(market, {"posterior": checked, "ceiling": Oracle(market)}, seed=25)
    assert checked.retries > 0 and checked.changed == 0
    diff, lo, hi = paired_difference(rollouts["posterior"].outcomes, rollouts["ceiling"].outcomes)
    assert hi < 0, (diff, lo, hi)
