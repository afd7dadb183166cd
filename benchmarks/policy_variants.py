"""A registered policy against variants of itself, paired on the same fresh simulated payments,
overall and per decline kind, with the simulator's ceiling for scale: what each choice of the
policy is worth, and whether a different one would close the gap to the ceiling.

Variants (``--variants``, default all):

- ``any_channel``: channels chosen as before email first — the largest calibrated uplift,
  whichever channel;
- ``funds_on_paydays``: insufficient-funds retries on the next likely payday (the 1st, the
  15th, month end or Friday) at 10:00 local, up to 8, as a billing team would schedule
  them (``reference.DeclineRules``); the rest as the policy;
- ``backoff``: after the n-th retry, the next one at least 24 h × 1.5^(n−1) later;
- ``continuation_0.8``: the look-ahead's effect of a failed attempt at 0.8 instead of the
  value training estimated;
- ``no_count_bound``: retries up to the network rules' limits, not the history's support;
- ``no_timing``: the policy without the timing effect training measured beyond its retry
  model (``models.timing``) — what that effect is worth, with the sign turned;
- ``published_timing``: the retry model's chances times the published effect of the retry's
  local time (Recurly: about 0.90 at night, 1 to 4 am, and 0.96 outside business hours,
  against business hours; weekends 0.95, an assumption) — what the policy would gain if its
  model had learned timing as sharply as the simulator draws it. Not a policy to ship: the
  multipliers are the simulator's own;
- ``message_after_first_retry``: no message at the first decision where the policy retries
  (the customer hears from the platform only once a retry has failed, as silent-retry-first
  dunning does), messages as the policy's at every later decision;
- ``planned_issuer_retries``: issuer declines' retries planned over the whole window on the
  policy's own retry chances (``PlannedIssuerRetries``; its planner weighs messages by the
  simulator's prior email effect, so not a policy to ship);
- ``lookahead_tail`` / ``lookahead_best``: the look-ahead not ending with the candidate
  grid — what a failure leaves valued at no less than the grid's last slot's chance, or at
  the week's best slot wherever the retry falls (``PastTheGrid``).

Net revenue (recovered less fees) as a share of the failed amount; differences in points
with 95% intervals over payments (``simulator.evaluation.paired_difference``).

    .venv/bin/python benchmarks/policy_variants.py --tracking-uri sqlite:///data/demo/mlflow.db \
        [--model models:/reclaim-policy@champion] [--payments 8000] [--seed 8] \
        [--variants any_channel,backoff]
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
from _util import registered_policy_args, registered_policy_market

from reclaim.features.candidates import expand_retry_times
from reclaim.models.policy import LearnedPolicy
from reclaim.models.timing import bands
from reclaim.policy import ActionBatch, DecisionBatch, Policy
from reclaim.reference import DeclineRules


class FundsOnPaydays(Policy):
    """``inner``'s actions, with insufficient-funds retries timed by ``rules``."""

    def __init__(self, inner: Policy, rules: Policy) -> None:
        self.inner, self.rules, self.name = inner, rules, "funds_on_paydays"

    def act(self, batch: DecisionBatch, rng) -> ActionBatch:
        mine, theirs = self.inner.act(batch, rng), self.rules.act(batch, rng)
        funds = (batch.payments["decline_code"].astype("object") == "insufficient_funds").to_numpy()
        return dataclasses.replace(
            mine,
            retry_at=theirs.retry_at.where(funds, mine.retry_at),
            retry_propensity=np.where(funds, 1.0, mine.retry_propensity),
            reason=theirs.reason.where(funds, mine.reason),
        )


class MessageAfterFirstRetry(Policy):
    """``inner``'s actions, without the message at a first decision that retries."""

    def __init__(self, inner: Policy) -> None:
        self.inner, self.name = inner, "message_after_first_retry"

    def act(self, batch: DecisionBatch, rng) -> ActionBatch:
        mine = self.inner.act(batch, rng)
        first = (batch.state["decision_number"] == 0).to_numpy()
        quiet = first & mine.retry_at.notna().to_numpy()
        sender = mine.sender_propensity
        return dataclasses.replace(
            mine,
            channel=mine.channel.mask(quiet),
            sender=mine.sender.mask(quiet),
            channel_propensity=np.where(quiet, 1.0, mine.channel_propensity),
            sender_propensity=None if sender is None else np.where(quiet, 1.0, sender),
        )


class Backoff(LearnedPolicy):
    """A learned policy whose n-th retry waits at least ``first_gap`` × ``growth``^(n−1) h."""

    def __init__(self, base: LearnedPolicy, first_gap: float = 24.0, growth: float = 1.5):
        self.__dict__.update(base.__dict__)
        self.first_gap, self.growth, self.name = first_gap, growth, "backoff"

    def _allowed(self, blocked, first, last, category, number):
        n = np.asarray(number, dtype=float)
        gap = np.where(n >= 1, self.first_gap * self.growth ** (n - 1), 0.0)
        return super()._allowed(blocked, np.maximum(first, gap), last, category, number)


#: The mean of the timing effect over a week's hours: 4 night, 9 business and 11 other hours a
#: day, 2 weekend days a week.
WEEK_MEAN_EFFECT = (4 * 0.90 + 9 * 1.0 + 11 * 0.96) / 24 * (5 + 2 * 0.95) / 7


#: The published effects by ``models.timing.BANDS`` (night, outside business hours, weekend).
PUBLISHED_EFFECT = np.array([0.90, 0.96, 0.95])


class PublishedTiming(LearnedPolicy):
    """A learned policy whose retry model's chances are multiplied by the published
    local-time effects (relative to their mean over a week's hours, so only the timing
    moves), in place of any timing effect it was trained with."""

    def __init__(self, base: LearnedPolicy):
        self.__dict__.update(base.__dict__)
        self.name, self.timing = "published_timing", None

    def retry_scores(self, batch, features):
        p, value = super().retry_scores(batch, features)
        allowed = np.isfinite(value)
        grid = expand_retry_times(batch, features, self.delays_hours)
        on = bands(grid["retry_local_hour"].to_numpy(), grid["retry_is_weekend"].to_numpy())
        effect = np.prod(np.where(on, PUBLISHED_EFFECT, 1.0), axis=1).reshape(p.shape)
        p = np.where(allowed, np.clip(p * effect / WEEK_MEAN_EFFECT, 0.0, 1.0), 0.0)
        category = features["decline_category"].astype("object").to_numpy()
        final = features["decision_number"].to_numpy() >= self._last_retry_at(category)
        amount = np.expm1(features["log_amount"].to_numpy())
        return p, self._values(p, allowed, amount, final)


class PastTheGrid(LearnedPolicy):
    """A learned policy whose look-ahead does not end with its candidate grid: after a failure
    at any slot the next retry may come a week later again, so what a failure leaves is
    valued at no less than the grid's last slot's chance (``tail``), or at the week's best
    slot wherever the retry falls (``best``: the look-ahead then ranks slots by their chance
    alone)."""

    def __init__(self, base: LearnedPolicy, mode: str):
        self.__dict__.update(base.__dict__)
        self.mode, self.name = mode, f"lookahead_{mode}"

    def _later_chances(self, p):
        if self.mode == "tail":
            return np.maximum(super()._later_chances(p), p[:, -1:])
        return np.broadcast_to(p.max(axis=1, keepdims=True), p.shape)


class PlannedIssuerRetries(Policy):
    """The policy, but the retries of issuer declines (``do_not_honor``, ``generic_decline``)
    planned over the whole window at the first decision by the oracle's backward induction
    on the policy's own retry chances (``ceiling_parts.FirstOdds``: each first retry 3 to 168
    hours out, held at the last beyond) with the training's ``continuation`` as the decay per
    failed attempt and no more retries than the history's support; messages stay the
    policy's. Its gaps between retries may exceed the history's 168 hours, and the planner
    weighs messages by the prior's email effect (the simulator's response curves, averaged
    over customers), so this is not a policy to ship as is: it measures what planning issuer
    retries on the model's odds is worth."""

    def __init__(self, policy: LearnedPolicy, market) -> None:
        from ceiling_parts import FirstOdds, email_only

        from reclaim.simulator import Oracle, truth
        from reclaim.simulator.evaluation import DECLINE_KINDS
        from reclaim.simulator.marketplace import redraw_customer_state

        self.codes = list(DECLINE_KINDS["issuer_decline"])
        self.probe, self.name = FirstOdds(policy, market), "planned_issuer_retries"
        # the planner's decay per failed attempt: the policy's learned one, not the truth's;
        # and no more retries than the history's support (the policy's ``last_retry``)
        config = dataclasses.replace(market.config, attempt_decay=float(policy.continuation))
        if policy.last_retry:
            most = max(policy.last_retry.values()) + 1
            rules = dataclasses.replace(
                config.rules,
                visa_max_retries=min(config.rules.visa_max_retries, most),
                mastercard_max_retries=min(config.rules.mastercard_max_retries, most),
                other_max_retries=min(config.rules.other_max_retries, most),
            )
            config = dataclasses.replace(config, rules=rules)
        customers = [redraw_customer_state(market, 2_000 + k) for k in range(48)]
        self.planner = Oracle(
            dataclasses.replace(market, config=config),
            retry_odds=self.probe.odds,
            message_effect=email_only(truth.prior_message_effect(customers)),
            knows_self_cure=False,
            name=self.name,
        )

    def act(self, batch: DecisionBatch, rng) -> ActionBatch:
        mine = self.probe.act(batch, rng)  # keeps the first decisions' chances for the plan
        code = batch.payments["decline_code"].astype("object")
        rows = np.flatnonzero(code.isin(self.codes).to_numpy())
        if not len(rows):
            return mine
        plan = self.planner.act(batch.take(rows), rng)
        retry_at, reason = mine.retry_at.copy(), mine.reason.copy()
        retry_at.iloc[rows] = plan.retry_at.to_numpy()
        reason.iloc[rows] = plan.reason.to_numpy()
        propensity = np.array(mine.retry_propensity, dtype=float)
        propensity[rows] = plan.retry_propensity
        return dataclasses.replace(
            mine, retry_at=retry_at, reason=reason, retry_propensity=propensity
        )


def _changed(policy: LearnedPolicy, name: str, **values) -> LearnedPolicy:
    other = copy.copy(policy)
    other.__dict__.update(values)
    other.name = name
    return other


VARIANTS: dict[str, Callable[[LearnedPolicy], Policy]] = {
    "any_channel": lambda p: _changed(
        p,
        "any_channel",
        channel_calibration={
            ch: dataclasses.replace(c, ahead_first=True, ahead_later=True)
            for ch, c in (p.channel_calibration or {}).items()
        }
        or None,
    ),
    "funds_on_paydays": lambda p: FundsOnPaydays(p, DeclineRules(max_retries=8)),
    "backoff": Backoff,
    "continuation_0.8": lambda p: _changed(p, "continuation_0.8", continuation=0.8),
    "no_count_bound": lambda p: _changed(p, "no_count_bound", last_retry=None),
    "published_timing": PublishedTiming,
    "no_timing": lambda p: _changed(p, "no_timing", timing=None),
    "message_after_first_retry": MessageAfterFirstRetry,
    "lookahead_tail": lambda p: PastTheGrid(p, "tail"),
    "lookahead_best": lambda p: PastTheGrid(p, "best"),
}
#: Variants that also need the fresh marketplace (to plan on its rules and window).
MARKET_VARIANTS: dict[str, Callable[[LearnedPolicy, object], Policy]] = {
    "planned_issuer_retries": PlannedIssuerRetries,
}


def main() -> None:
    parser = registered_policy_args(__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join([*VARIANTS, *MARKET_VARIANTS]))
    args = parser.parse_args()
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = {*VARIANTS, *MARKET_VARIANTS}
    if unknown := sorted(set(chosen) - known):
        raise SystemExit(f"unknown variants {unknown}: choose from {sorted(known)}")

    from reclaim.intervals import interval
    from reclaim.simulator import Oracle, compare
    from reclaim.simulator.evaluation import decline_kinds, net_share, paired_difference

    policy, market = registered_policy_market(args)
    policies: dict[str, Policy] = {"policy": policy}
    for name in chosen:
        if name in MARKET_VARIANTS:
            policies[name] = MARKET_VARIANTS[name](policy, market)
        else:
            policies[name] = VARIANTS[name](policy)
    policies["ceiling"] = Oracle(market)
    _, rolled = compare(market, policies, args.seed)
    kinds = decline_kinds(market)
    print(
        f"{args.model} against variants of itself, {args.payments:,} fresh payments (seed "
        f"{args.seed}); net revenue as a share of the failed amount, and each variant paired "
        "against the policy"
    )
    for name in ["policy", *chosen, "ceiling"]:
        print(f"  {name}: {rolled[name].outcomes['retries'].mean():.2f} retries per payment")
    for kind in ["all", *np.unique(kinds)]:
        mask = None if kind == "all" else kinds == kind
        share = {name: net_share(r.outcomes, mask) for name, r in rolled.items()}
        print(f"{kind}: policy {share['policy']:.1%}, ceiling {share['ceiling']:.1%}")
        for name in chosen:
            diff = paired_difference(rolled[name].outcomes, rolled["policy"].outcomes, mask)
            print(f"  {name:18s} {share[name]:6.1%}  {interval(*diff, pts=True)}")


if __name__ == "__main__":
    main()
