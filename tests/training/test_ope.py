"""Off-policy estimators against known truth: a synthetic bandit, then the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from reclaim.features.accounts import AccountHistory
from reclaim.features.decisions import decision_features
from reclaim.models.policy import CHANNELS, LearnedPolicy
from reclaim.policy import ActionBatch, DecisionBatch, Policy, merchant_of_record
from reclaim.reference import RandomizedLogging
from reclaim.simulator import fresh_payments, rollout
from reclaim.training import ope
from reclaim.training.data import DecisionData, recovered_in_window
from reclaim.training.pipeline import first_message_ope

MEANS = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.4]])  # reward mean by context, arm


def _bandit(n: int, rng: np.random.Generator, eps: float = 0.1):
    x = rng.integers(0, 2, n)
    arm = rng.integers(0, 3, n)  # uniform logging
    reward = (rng.random(n) < MEANS[x, arm]).astype(float)
    greedy = np.where(x == 0, 1, 0)
    target_probs = np.full((n, 3), eps / 3)
    target_probs[np.arange(n), greedy] += 1 - eps
    q = MEANS[x] + 0.05  # a biased reward model: DR must still be unbiased
    truth = np.mean([(MEANS[c] * _probs(c, eps)).sum() for c in (0, 1)])
    return (
        reward,
        np.full(n, 1 / 3),
        target_probs[np.arange(n), arm],
        q[np.arange(n), arm],
        (target_probs * q).sum(axis=1),
        truth,
    )


def _probs(c: int, eps: float) -> np.ndarray:
    p = np.full(3, eps / 3)
    p[1 if c == 0 else 0] += 1 - eps
    return p


def test_estimators_cover_a_known_value_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    covered = {"ips": 0, "snips": 0, "dr": 0}
    reps = 300
    for _ in range(reps):
        reward, logged, target, q_logged, q_target, truth = _bandit(2_000, rng)
        est = ope.all_estimates(reward, logged, target, q_logged, q_target)
        for name in covered:
            covered[name] += est[name].covers(truth)
    for name, hits in covered.items():
        assert 0.91 <= hits / reps <= 0.99, (name, hits / reps)


def test_ess_and_bad_propensities() -> None:
    assert ope.effective_sample_size(np.ones(50)) == pytest.approx(50)
    assert ope.effective_sample_size(np.r_[np.zeros(49), 1.0]) == pytest.approx(1)
    with pytest.raises(ValueError, match="logged propensities"):
        ope.importance_weights(np.ones(3), np.array([0.5, 0.0, 0.5]))


class FirstMessageBy(Policy):
    """The learned policy's first message, the logging policy for everything else: the
    estimand of ``first_message_ope``."""

    name = "hybrid"

    def __init__(self, learned: LearnedPolicy):
        self.learned = learned
        self.logging = RandomizedLogging()

    def act(self, batch: DecisionBatch, rng: np.random.Generator) -> ActionBatch:
        base = self.logging.act(batch, rng)
        first = (batch.state["decision_number"] == 0).to_numpy()
        if not first.any():
            return base
        sub = batch.subset(first)
        probs = self.learned.channel_probabilities(
            sub, decision_features(sub, self.learned.accounts, self.learned.network_rules)
        )
        pick = (rng.random(len(sub))[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
        options = np.array([None, *CHANNELS], dtype=object)
        channel = base.channel.astype("object").to_numpy().copy()
        sender = base.sender.astype("object").to_numpy().copy()
        channel[first] = options[pick]
        sender[first] = np.where(
            pick > 0,
            merchant_of_record(sub.payments).astype("object").to_numpy(),
            None,
        )
        return ActionBatch.build(
            len(batch),
            retry_at=base.retry_at,
            channel=channel,
            sender=sender,
            retry_propensity=base.retry_propensity,
        )


@pytest.mark.slow
def test_off_policy_estimates_cover_the_simulators_true_value(trained) -> None:
    policy = trained.result.policy
    channel_model = policy.channel_model
    start = trained.market.payments["failed_at"].max() + np.timedelta64(1, "D")
    misses = {"ips": 0, "snips": 0, "dr": 0}
    for seed in (31, 32, 33):
        logged = rollout(
            fresh_payments(trained.market, 12_000, seed, start=start),
            RandomizedLogging(),
            seed=seed,
        ).tables
        data = DecisionData.build(
            logged, AccountHistory.from_tables(logged.payments, logged.attempts)
        )
        estimates, _ = first_message_ope(policy, data, logged, channel_model)

        truth_run = rollout(
            fresh_payments(trained.market, 40_000, seed + 100, start=start),
            FirstMessageBy(policy),
            seed=seed,
        ).tables
        outcome = recovered_in_window(truth_run).to_numpy(dtype=float)
        truth, truth_se = outcome.mean(), outcome.std(ddof=1) / np.sqrt(len(outcome))
        for name in misses:
            e = estimates[name]
            z = abs(e.value - truth) / np.hypot(e.se, truth_se)
            assert z < 3.5, (seed, name, e, truth)
            misses[name] += z > 1.96
    assert all(m <= 1 for m in misses.values()), misses


@pytest.mark.slow
def test_estimates_cover_the_truth_when_the_logging_policy_randomizes_the_sender(trained) -> None:
    """A logging policy that lets the other party send 30% of messages: with the sender's
    probability logged, the estimates weigh only decisions whose sender the policy would use,
    and still cover the truth (without it, IPS read a rate of 1.19)."""
    policy = trained.result.policy
    start = trained.market.payments["failed_at"].max() + np.timedelta64(1, "D")
    logged = rollout(
        fresh_payments(trained.market, 12_000, 41, start=start),
        RandomizedLogging(foreign_sender=0.3),
        seed=41,
    ).tables
    assert (logged.decisions["sender_propensity"] < 1).any()
    data = DecisionData.build(logged, AccountHistory.from_tables(logged.payments, logged.attempts))
    estimates, _ = first_message_ope(policy, data, logged, policy.channel_model)

    truth_run = rollout(
        fresh_payments(trained.market, 40_000, 141, start=start), FirstMessageBy(policy), seed=41
    ).tables
    outcome = recovered_in_window(truth_run).to_numpy(dtype=float)
    truth, truth_se = outcome.mean(), outcome.std(ddof=1) / np.sqrt(len(outcome))
    for name in ("ips", "snips", "dr"):
        e = estimates[name]
        assert 0 <= e.value <= 1, (name, e)
        assert abs(e.value - truth) / np.hypot(e.se, truth_se) < 3.5, (name, e, truth)


def test_aipw_effects_recover_a_known_uplift_with_a_wrong_reward_model() -> None:
    """Randomized arms with known propensities: the doubly robust effects average to the true
    uplift even when the reward model is wrong (here: it predicts 0.5 everywhere)."""
    rng = np.random.default_rng(4)
    n = 40_000
    x = rng.random(n)
    p_email = np.where(x < 0.5, 0.2, 0.6)  # the randomization depends on x
    email = rng.random(n) < p_email
    arm = np.where(email, "email", "none")
    base = 0.3 + 0.2 * x
    reward = (rng.random(n) < base + 0.05 * email).astype(float)
    q = {"none": np.full(n, 0.5), "email": np.full(n, 0.5)}
    effects = ope.aipw_effects(reward, arm, np.where(email, p_email, 1 - p_email), q)
    assert set(effects) == {"email"}
    assert ope.mean_estimate(effects["email"]).covers(0.05)
    with pytest.raises(ValueError, match="propensities"):
        ope.aipw_effects(reward, arm, np.zeros(n), q)
