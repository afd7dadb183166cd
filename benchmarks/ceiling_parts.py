"""How much of a registered policy's gap to the simulator's ceiling planning alone could close,
and how much takes knowing each payment's hidden state: the customer's, and the retry's.

Beside the policy, stripe_like and the ceiling (the oracle: every payment planned on its
hidden state), it rolls out the same planner on priors instead of hidden state:

- ``prior_plan`` knows neither the payment's retry state nor its customer: the retry odds are
  the mean over ``--draws`` marketplaces whose payments' pay cycle, funds window, hold length,
  issuer approval chance and card-update time are drawn again (``redraw_retry_state``,
  ``truth.prior_retry_odds``), the messages' effect the mean over as many whose customers'
  segments are drawn again from their account's mix (``redraw_customer_state``,
  ``truth.prior_message_effect``), and it does not know who pays unprompted. It still knows
  the simulator's structure and each account's quality and segment mix (what a policy could
  learn of an account from its history), so it bounds what better planning alone could reach;
- ``prior_retries`` plans the retries on the same prior but knows each customer (their
  segment, who pays unprompted): the step from ``prior_plan`` is knowing the customer, the
  step from it to the ceiling knowing the retry state;
- with ``--email-only``, ``prior_plan_email``: ``prior_plan`` allowed email alone — what
  choosing each account's channel from its segment mix is worth to the plan — and
  ``model_plan_email``, the planner on the policy's own odds (below) allowed email alone,
  as the policy sends (against the policy);
- with ``--retries``, per decline kind, each plan's first three merchant retries: how many,
  how many hours after the failure (median), and the share that succeeded; and all its
  retries, how many succeeded, and how many of those came after the 15th retry (beyond the
  history's support: Visa allows 15 in 30 days, Mastercard 35);
- with ``--posterior``, ``posterior_plan`` (``simulator.posterior.PosteriorPlan``) knows what
  ``prior_plan`` knows and learns from each failed retry: at every decision it weighs the
  redrawn retry states by how likely each makes the failures so far and plans the rest of
  the window on them — what a policy reading no hidden state could reach by updating as it
  goes (several times slower than the rest).

A last planner plans on the policy's own odds: its retry model's chance for each first retry
3 to 168 hours after the failure (held at the last beyond), read at each payment's first
decision, with the messages as ``prior_plan`` knows them (no customer's own response, nor who
pays unprompted) — whether the model is good enough to plan the window on.

Net revenue as a share of the failed amount per decline kind; paired differences in points
with 95% intervals over payments.

    .venv/bin/python benchmarks/ceiling_parts.py --tracking-uri sqlite:///data/demo/mlflow.db \
        [--model models:/reclaim-policy@champion] [--payments 8000] [--seed 8] [--draws 48] \
        [--posterior] [--email-only] [--retries]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from _util import registered_policy_args, registered_policy_market

from reclaim.features.decisions import decision_features
from reclaim.models.policy import LearnedPolicy
from reclaim.policy import ActionBatch, DecisionBatch, Policy


class FirstOdds(Policy):
    """``policy`` as it is, keeping its retry model's chance for each candidate delay at each
    payment's first decision; :meth:`odds` reads them as a planner's retry odds."""

    def __init__(self, policy: LearnedPolicy, market: Any) -> None:
        self.policy, self.name = policy, policy.name
        n = len(market)
        self._position = pd.Series(np.arange(n), index=market.payments["payment_id"].to_numpy())
        self._chance = np.zeros((n, len(policy.delays_hours)))
        self._at = np.full(n, np.datetime64("NaT", "us"))

    def act(self, batch: DecisionBatch, rng: Any) -> ActionBatch:
        first = np.flatnonzero((batch.state["decision_number"] == 0).to_numpy())
        if len(first):
            sub = batch.take(first)
            features = decision_features(sub, self.policy.accounts, self.policy.network_rules)
            chance, _ = self.policy.retry_scores(sub, features)
            rows = self._position.loc[sub.payments["payment_id"].to_numpy()].to_numpy()
            self._chance[rows] = chance
            self._at[rows] = sub.now.to_numpy(dtype="datetime64[us]")
        return self.policy.act(batch, rng)

    def odds(self, market: Any, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The kept chances at the (n, k) grid ``at``, interpolated between candidate delays
        and held at the first and last beyond them."""
        d = self.policy.delays_hours
        hours = (at - self._at[rows][:, None]) / np.timedelta64(1, "h")
        x = np.clip((hours - d[0]) / (d[1] - d[0]), 0, len(d) - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, len(d) - 1)
        chance, r = self._chance[rows], np.arange(len(rows))[:, None]
        return chance[r, lo] * (1 - (x - lo)) + chance[r, hi] * (x - lo)


def email_only(effect: Any) -> Any:
    """A planner's message effect (``truth.message_effect``'s signature) with every channel
    but email doing nothing, so the plan sends email or nothing."""

    def only(market: Any, rows: Any, at: Any, channel: Any, *rest: Any) -> Any:
        respond, cancel = effect(market, rows, at, channel, *rest)
        email = np.asarray(channel, dtype=object) == "email"
        return np.where(email, respond, 0.0), np.where(email, cancel, 0.0)

    return only


def retry_profile(rolled: dict[str, Any], market: Any, kinds: np.ndarray) -> None:
    """Print, per decline kind and rollout, its first three merchant retries: their count,
    median hours after the failure and success share; and the share of all its merchant
    retries on the customer's weekend."""
    from reclaim import timeutil

    zone = pd.Series(market.hidden["true_timezone"].to_numpy(), index=market.payments["payment_id"])
    failed = pd.Series(
        market.payments["failed_at"].to_numpy(dtype="datetime64[us]"),
        index=market.payments["payment_id"].to_numpy(),
    )
    kind_of = pd.Series(kinds, index=failed.index)
    for kind in np.unique(kinds):
        print(f"{kind}: merchant retries 1, 2, 3 (count, median hours after the failure, success)")
        for name, r in rolled.items():
            a = r.tables.attempts
            a = a[(a["initiator"] == "merchant") & (a["attempt_number"] > 0)]
            a = a[kind_of.loc[a["payment_id"]].to_numpy() == kind]
            local = timeutil.local_times(
                pd.Series(a["attempted_at"].array),
                pd.Series(zone.loc[a["payment_id"]].to_numpy(), dtype=object),
            )
            weekend = float((local.dt.day_of_week >= 5).mean()) if len(a) else float("nan")
            won = (a["outcome"] == "succeeded").to_numpy()
            cap = market.config.rules.visa_max_retries  # Visa's 15 in 30 days
            late = (a["attempt_number"] > cap).to_numpy()
            every = (
                f"all {len(a):,} retries: {won.sum():,} succeeded, {won[late].sum():,} of them "
                f"after retry {cap}"
            )
            a = a[a["attempt_number"] <= 3]
            hours = (
                a["attempted_at"].to_numpy(dtype="datetime64[us]")
                - failed.loc[a["payment_id"]].to_numpy()
            ) / np.timedelta64(1, "h")
            said = []
            for k in (1, 2, 3):
                at = (a["attempt_number"] == k).to_numpy()
                ok = (a["outcome"][at] == "succeeded").mean() if at.any() else float("nan")
                med = np.median(hours[at]) if at.any() else float("nan")
                said.append(f"{at.sum():,}, {med:.0f} h, {ok:.1%}")
            print(
                f"    {name}: " + "; ".join(said) + f"; all its retries {weekend:.0%} on weekends"
                f"; {every}"
            )


def main() -> None:
    parser = registered_policy_args(__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=48)
    parser.add_argument("--posterior", action="store_true", help="add the posterior plan")
    parser.add_argument(
        "--email-only", action="store_true", help="add the prior plan allowed email alone"
    )
    parser.add_argument(
        "--retries", action="store_true", help="each plan's first three retries by kind"
    )
    args = parser.parse_args()

    from reclaim.intervals import interval
    from reclaim.reference import StripeLike
    from reclaim.simulator import Oracle, compare, truth
    from reclaim.simulator.evaluation import decline_kinds, net_share, paired_difference
    from reclaim.simulator.marketplace import redraw_customer_state, redraw_retry_state

    policy, market = registered_policy_market(args)
    draws = [redraw_retry_state(market, 1_000 + k) for k in range(args.draws)]
    customers = [redraw_customer_state(market, 2_000 + k) for k in range(args.draws)]
    retry_prior = truth.prior_retry_odds(draws)
    probe = FirstOdds(policy, market)
    _, rolled = compare(market, {"policy": probe}, args.seed)  # reads the model's odds
    message_prior = truth.prior_message_effect(customers)
    others = {
        "stripe_like": StripeLike(),
        "model_plan": Oracle(
            market,
            retry_odds=probe.odds,
            message_effect=message_prior,
            knows_self_cure=False,
            name="model_plan",
        ),
        "prior_plan": Oracle(
            market,
            retry_odds=retry_prior,
            message_effect=message_prior,
            knows_self_cure=False,
            name="prior_plan",
        ),
        "prior_retries": Oracle(market, retry_odds=retry_prior, name="prior_retries"),
        "ceiling": Oracle(market),
    }
    if args.posterior:
        from reclaim.simulator.posterior import PosteriorPlan

        others["posterior_plan"] = PosteriorPlan(market, draws, customers)
    if args.email_only:
        others["prior_plan_email"] = Oracle(
            market,
            retry_odds=retry_prior,
            message_effect=email_only(message_prior),
            knows_self_cure=False,
            name="prior_plan_email",
        )
        others["model_plan_email"] = Oracle(
            market,
            retry_odds=probe.odds,
            message_effect=email_only(message_prior),
            knows_self_cure=False,
            name="model_plan_email",
        )
    rolled.update(compare(market, others, args.seed)[1])
    kinds = decline_kinds(market)
    print(
        f"{args.model}, {args.payments:,} fresh payments (seed {args.seed}), retries planned on "
        f"the prior from {args.draws} draws; net revenue as a share of the failed amount"
    )
    amount = rolled["policy"].outcomes["amount_usd"].to_numpy()
    for kind in ["all", *np.unique(kinds)]:
        mask = np.ones(len(kinds), dtype=bool) if kind == "all" else kinds == kind
        share = {name: net_share(r.outcomes, mask) for name, r in rolled.items()}
        out = {name: r.outcomes for name, r in rolled.items()}
        planning = paired_difference(out["prior_plan"], out["policy"], mask)
        customer = paired_difference(out["prior_retries"], out["prior_plan"], mask)
        retry_state = paired_difference(out["ceiling"], out["prior_retries"], mask)
        print(
            f"{kind} ({amount[mask].sum() / amount.sum():.1%} of the amount): policy "
            f"{share['policy']:.1%}, stripe_like {share['stripe_like']:.1%}, planned on the "
            f"policy's odds {share['model_plan']:.1%}, on the prior {share['prior_plan']:.1%}, "
            f"knowing the customer {share['prior_retries']:.1%}, ceiling {share['ceiling']:.1%}"
        )
        own = paired_difference(out["model_plan"], out["policy"], mask)
        said = [interval(*d, pts=True) for d in (own, planning, customer, retry_state)]
        print(
            f"    on its odds: {said[0]}; planning: {said[1]}; knowing the customer: {said[2]}; "
            f"knowing the retry state: {said[3]}"
        )
        if args.email_only:
            email = paired_difference(out["prior_plan_email"], out["prior_plan"], mask)
            print(
                f"    planned on the prior with email alone {share['prior_plan_email']:.1%}: "
                f"{interval(*email, pts=True)} against choosing the channel"
            )
            own_email = paired_difference(out["model_plan_email"], out["policy"], mask)
            print(
                f"    planned on the policy's odds with email alone "
                f"{share['model_plan_email']:.1%}: {interval(*own_email, pts=True)} against "
                "the policy"
            )
        if args.posterior:
            learned = paired_difference(out["posterior_plan"], out["prior_plan"], mask)
            print(
                f"    planned on the posterior {share['posterior_plan']:.1%}: learning from "
                f"failed retries {interval(*learned, pts=True)} over the prior plan"
            )
    if args.retries:
        retry_profile({k: rolled[k] for k in ("policy", "prior_plan", "ceiling")}, market, kinds)
    gap = net_share(rolled["ceiling"].outcomes) - net_share(rolled["policy"].outcomes)
    reach = net_share(rolled["prior_plan"].outcomes) - net_share(rolled["policy"].outcomes)
    print(f"planning on the prior reaches {reach / gap:.0%} of the policy's gap to the ceiling")
    if args.posterior:
        reach = net_share(rolled["posterior_plan"].outcomes) - net_share(rolled["policy"].outcomes)
        print(f"planning on the posterior reaches {reach / gap:.0%} of it")


if __name__ == "__main__":
    main()
