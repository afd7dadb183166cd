"""What "email first" is worth: a registered policy against the same policy choosing channels as
it did before (the largest calibrated uplift, whichever channel), paired on the same fresh
simulated payments, overall and per decline kind, with the simulator's ceiling for scale.

Net revenue (recovered less fees) as a share of the failed amount; differences in points
with 95% intervals over payments (``simulator.evaluation.paired_difference``).

    .venv/bin/python benchmarks/email_first.py --tracking-uri sqlite:///data/demo/mlflow.db \
        [--model models:/reclaim-policy@champion] [--payments 8000] [--seed 8]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model", default="models:/reclaim-policy@champion")
    parser.add_argument("--payments", type=int, default=8_000)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()

    import mlflow

    from reclaim.intervals import interval
    from reclaim.simulator import Oracle, compare, fresh_payments
    from reclaim.simulator.evaluation import decline_kinds, net_share, paired_difference
    from reclaim.training.evaluate import simulated_market

    mlflow.set_tracking_uri(args.tracking_uri)
    model = mlflow.pyfunc.load_model(args.model)
    policy = model.unwrap_python_model().policy
    if policy.channel_calibration is None:
        raise SystemExit(f"{args.model} reads its channel model uncalibrated: nothing to compare")
    before = copy.copy(policy)
    before.name = "any_channel"
    before.channel_calibration = {
        ch: dataclasses.replace(c, ahead_first=True, ahead_later=True)
        for ch, c in policy.channel_calibration.items()
    }
    market = fresh_payments(simulated_market(model, args.model), args.payments, args.seed)
    policies = {"email_first": policy, "any_channel": before, "oracle": Oracle(market)}
    _, rolled = compare(market, policies, args.seed)
    kinds = decline_kinds(market)
    print(
        f"{args.model}: email first against any channel, {args.payments:,} fresh payments "
        f"(seed {args.seed}); net revenue share of the failed amount"
    )
    print(
        f"  {'decline kind':26s} {'any channel':>12s} {'email first':>12s} {'ceiling':>8s}  paired"
    )
    for kind in ["all", *np.unique(kinds)]:
        mask = None if kind == "all" else kinds == kind
        shares = [net_share(rolled[n].outcomes, mask) for n in policies]
        diff = paired_difference(
            rolled["email_first"].outcomes, rolled["any_channel"].outcomes, mask
        )
        print(
            f"  {kind:26s} {shares[1]:12.1%} {shares[0]:12.1%} {shares[2]:8.1%}  "
            f"{interval(*diff, pts=True)}"
        )


if __name__ == "__main__":
    main()
