"""How much of a registered policy's gap to the simulator's ceiling planning alone could close,
and how much takes knowing each payment's hidden retry state.

Beside the policy, stripe_like and the ceiling (the oracle: every payment planned on its
hidden state), it rolls out the same planner with the retries planned on the *prior* retry
odds: the mean over ``--draws`` marketplaces whose payments' pay cycle, funds window, hold
length, issuer approval chance and card-update time are drawn again from the simulator's
distributions (``marketplace.redraw_retry_state``, ``truth.prior_retry_odds``). That planner
still knows the rest of the truth (each customer's channel response, the account's quality),
so it bounds what better planning of retries could reach without new information.

Net revenue as a share of the failed amount per decline kind; paired differences in points
with 95% intervals over payments.

    .venv/bin/python benchmarks/ceiling_parts.py --tracking-uri sqlite:///data/demo/mlflow.db \
        [--model models:/reclaim-policy@champion] [--payments 8000] [--seed 8] [--draws 48]
"""

from __future__ import annotations

import numpy as np
from _util import registered_policy_args, registered_policy_market


def main() -> None:
    parser = registered_policy_args(__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=48)
    args = parser.parse_args()

    from reclaim.intervals import interval
    from reclaim.reference import StripeLike
    from reclaim.simulator import Oracle, compare, truth
    from reclaim.simulator.evaluation import decline_kinds, net_share, paired_difference
    from reclaim.simulator.marketplace import redraw_retry_state

    policy, market = registered_policy_market(args)
    draws = [redraw_retry_state(market, 1_000 + k) for k in range(args.draws)]
    policies = {
        "policy": policy,
        "stripe_like": StripeLike(),
        "prior_plan": Oracle(market, retry_odds=truth.prior_retry_odds(draws), name="prior_plan"),
        "ceiling": Oracle(market),
    }
    _, rolled = compare(market, policies, args.seed)
    kinds = decline_kinds(market)
    print(
        f"{args.model}, {args.payments:,} fresh payments (seed {args.seed}), retries planned on "
        f"the prior from {args.draws} draws; net revenue as a share of the failed amount"
    )
    amount = rolled["policy"].outcomes["amount_usd"].to_numpy()
    for kind in ["all", *np.unique(kinds)]:
        mask = np.ones(len(kinds), dtype=bool) if kind == "all" else kinds == kind
        share = {name: net_share(r.outcomes, mask) for name, r in rolled.items()}
        planning = paired_difference(rolled["prior_plan"].outcomes, rolled["policy"].outcomes, mask)
        knowing = paired_difference(rolled["ceiling"].outcomes, rolled["prior_plan"].outcomes, mask)
        print(
            f"{kind} ({amount[mask].sum() / amount.sum():.1%} of the amount): policy "
            f"{share['policy']:.1%}, stripe_like {share['stripe_like']:.1%}, planned on the prior "
            f"{share['prior_plan']:.1%}, ceiling {share['ceiling']:.1%}"
        )
        said = [interval(*planning, pts=True), interval(*knowing, pts=True)]
        print(f"    planning: {said[0]}; knowing: {said[1]}")
    gap = net_share(rolled["ceiling"].outcomes) - net_share(rolled["policy"].outcomes)
    reach = net_share(rolled["prior_plan"].outcomes) - net_share(rolled["policy"].outcomes)
    print(f"planning on the prior reaches {reach / gap:.0%} of the policy's gap to the ceiling")


if __name__ == "__main__":
    main()
