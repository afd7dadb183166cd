"""An experiment toward issue 31: the learned policy valuing the rest of the window with a
retry model that needs no path, against the policy as it is, on the same fresh payments.

The registered policy looks one step ahead with a fixed ``continuation``. This variant keeps
its choice of the next retry (3 to 168 hours out, as trained: the history's support) but
values what a failure there leaves by backward induction over the rest of the 30-day window:
later retries are scored by a *path-free* retry model — the retry rows of the same training
split, with only what a future decision's path does not change (the payment, its account,
the decline, the retry's number and the retry time's local hour, weekday, day of month,
payday distance and hours since the failure) — each further retry scaled by the policy's
``continuation``, no later retry sooner than an hour after the one before nor more than
168 hours after it, and no more of them than the history's support allows (``last_retry``).
Messages are the policy's.

Not part of the product: it measures whether planning on the model's own odds over the
window pays (net revenue as a share of the failed amount, paired differences in points with
95% intervals over payments), per decline kind.

    .venv/bin/python benchmarks/window_planning.py --data data/demo/sim \\
        --tracking-uri sqlite:///data/demo/mlflow.db [--model models:/reclaim-policy@champion] \\
        [--payments 8000] [--seed 8] [--step 6]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from _util import registered_policy_args, registered_policy_market

from reclaim.features import schema
from reclaim.features.accounts import COLUMNS as ACCOUNT_COLUMNS
from reclaim.features.candidates import expand_retry_times
from reclaim.features.decisions import log_amount
from reclaim.models.policy import Costs, LearnedPolicy
from reclaim.models.retry import RetryTimeModel
from reclaim.rules import NetworkRules, limits

#: What a future decision's path does not change: the retry-time model's features less the
#: decision's time, delay, counts and messages.
PATH_FREE = [
    *schema.CATEGORICAL,
    "visa_category",
    "on_behalf_of",
    "log_amount",
    "timezone_known",
    *ACCOUNT_COLUMNS,
    "decision_number",
    *(name for name in schema.RETRY_FEATURES if name != "delay_hours"),
]
MAX_GAP_HOURS = 168.0


class WindowPlanning(LearnedPolicy):
    """``policy`` with its look-ahead replaced by backward induction over the window on
    ``later_model`` (a :class:`RetryTimeModel` on :data:`PATH_FREE`), on a grid of
    ``step_hours``."""

    name = "window_planning"

    def __init__(
        self,
        policy: LearnedPolicy,
        later_model: RetryTimeModel,
        step_hours: float,
        next_from_later: bool = False,
    ):
        self.__dict__.update(policy.__dict__)
        self.later_model, self.step_hours = later_model, step_hours
        self.next_from_later = next_from_later

    def retry_scores(self, batch: Any, features: Any) -> tuple[np.ndarray, np.ndarray]:
        p, one_step = super().retry_scores(batch, features)
        allowed = np.isfinite(one_step)
        if self.next_from_later:  # the next retry's odds from the path-free model as well
            rows = np.flatnonzero(allowed.any(axis=1))
            if len(rows):
                sub = features.iloc[rows].reset_index(drop=True)
                grid = expand_retry_times(batch.take(rows), sub, self.delays_hours)
                chance = self.later_model.predict_proba(grid[PATH_FREE])[:, 1]
                p[rows] = chance.reshape(len(rows), len(self.delays_hours))
            p = np.where(allowed, p, 0.0)
        n = len(p)
        amount = np.expm1(log_amount(batch.payments))
        cost = (self.costs or Costs()).retry
        number = features["decision_number"].to_numpy()
        last = self._last_retry_at(features["decline_category"].astype("object").to_numpy())
        left = limits(batch, self.network_rules or NetworkRules())["retries_left"].to_numpy()
        later = np.minimum(np.minimum(last - number, left - 1), 20)
        later = np.where(np.isfinite(later), later, 0).astype(int)
        step = self.step_hours
        grid_h = step * np.arange(1, int(np.ceil(30 * 24 / step)) + 1)
        size = len(grid_h)
        after = np.zeros((n, size))  # what a failure of the next retry at each step leaves
        rows = np.flatnonzero(allowed.any(axis=1) & (later > 0))
        if len(rows):
            sub = features.iloc[rows].reset_index(drop=True).copy()
            sub["decision_number"] = sub["decision_number"] + 1
            grid = expand_retry_times(batch.take(rows), sub, grid_h)
            q = self.later_model.predict_proba(grid[PATH_FREE])[:, 1].reshape(len(rows), size)
            inside = grid_h[None, :] <= features["hours_to_window_end"].to_numpy()[rows][:, None]
            a = amount[rows][:, None]
            u = np.zeros((len(rows), size))
            shortest = max(1, int(np.ceil(1.0 / step)))
            longest = int(MAX_GAP_HOURS // step)
            for r in range(int(later[rows].max()), 0, -1):
                qr = q * self.continuation ** (r - 1)
                worth = np.where(inside, qr * a - cost + (1 - qr) * u, -np.inf)
                best = np.full_like(worth, -np.inf)
                for s in range(shortest, longest + 1):
                    best[:, : size - s] = np.maximum(best[:, : size - s], worth[:, s:])
                u = np.where((r <= later[rows])[:, None], np.maximum(best, 0.0), u)
            after[rows] = u
        at = np.clip(np.round(self.delays_hours / step).astype(int) - 1, 0, size - 1)
        value = p * amount[:, None] - cost + (1 - p) * after[:, at]
        return p, np.where(allowed, value, -np.inf)


def main() -> None:
    parser = registered_policy_args(__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the run's training data")
    parser.add_argument("--step", type=float, default=6.0, help="the window's grid, hours")
    args = parser.parse_args()

    from reclaim.intervals import interval
    from reclaim.reference import StripeLike
    from reclaim.simulator import Oracle, compare
    from reclaim.simulator.evaluation import decline_kinds, net_share, paired_difference
    from reclaim.training.prepared import TrainConfig, prepare

    policy, market = registered_policy_market(args)
    retry = prepare(args.data, TrainConfig()).retry  # the same time split as training
    later = RetryTimeModel().fit(retry.x[PATH_FREE], retry.y)
    planning = WindowPlanning(policy, later, args.step)
    policies = {
        "policy": policy,
        "window_planning": planning,
        "stripe_like": StripeLike(),
        "ceiling": Oracle(market),
    }
    _, rolled = compare(market, policies, args.seed)
    kinds = decline_kinds(market)
    print(
        f"{args.model}, {args.payments:,} fresh payments (seed {args.seed}); net revenue as a "
        f"share of the failed amount; window grid {args.step:g} h"
    )
    for kind in ["all", *np.unique(kinds)]:
        mask = np.ones(len(kinds), dtype=bool) if kind == "all" else kinds == kind
        share = {name: f"{net_share(r.outcomes, mask):.1%}" for name, r in rolled.items()}
        diff = paired_difference(
            rolled["window_planning"].outcomes, rolled["policy"].outcomes, mask
        )
        print(f"{kind}: {share}; window_planning − policy {interval(*diff, pts=True)}")


if __name__ == "__main__":
    main()
