"""Compare policies on one marketplace: recovered revenue, recovery rate and cost, with 95%
confidence intervals over payments.

Every policy is rolled out on the same payments with the same world noise (common random
numbers), so differences between rows come from the policies, not from luck.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from reclaim.policy import Policy
from reclaim.reference import REFERENCE_POLICIES
from reclaim.simulator.environment import Rollout, rollout
from reclaim.simulator.marketplace import Marketplace
from reclaim.simulator.oracle import Oracle

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (float(centre - half), float(centre + half))


def total_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """The sum of ``values`` and its normal-approximation interval, treating rows as i.i.d."""
    n = len(values)
    total = float(values.sum())
    half = z * float(values.std(ddof=1)) * np.sqrt(n) if n > 1 else float("nan")
    return total, total - half, total + half


def summarize(outcomes: pd.DataFrame) -> dict[str, float]:
    """One policy's figures from its rollout outcomes (see ``OUTCOME_COLUMNS``).

    Returns recovered revenue, cost and net (USD) with their 95% bounds (``*_lo``, ``*_hi``),
    the recovery rate with its Wilson interval, and retries and messages per payment.
    """
    n = len(outcomes)
    revenue, revenue_lo, revenue_hi = total_interval(outcomes["recovered_usd"].to_numpy())
    cost, cost_lo, cost_hi = total_interval(outcomes["cost_usd"].to_numpy())
    net, net_lo, net_hi = total_interval(
        (outcomes["recovered_usd"] - outcomes["cost_usd"]).to_numpy()
    )
    k = int(outcomes["recovered"].sum())
    rate_lo, rate_hi = wilson_interval(k, n)
    return {
        "payments": n,
        "recovered_usd": revenue,
        "recovered_usd_lo": revenue_lo,
        "recovered_usd_hi": revenue_hi,
        "recovery_rate": k / n if n else float("nan"),
        "recovery_rate_lo": rate_lo,
        "recovery_rate_hi": rate_hi,
        "cost_usd": cost,
        "cost_usd_lo": cost_lo,
        "cost_usd_hi": cost_hi,
        "net_usd": net,
        "net_usd_lo": net_lo,
        "net_usd_hi": net_hi,
        "retries_per_payment": float(outcomes["retries"].mean()),
        "messages_per_payment": float(outcomes["messages"].mean()),
    }


def compare(
    market: Marketplace,
    policies: Mapping[str, Policy],
    seed: int = 0,
    on_policy: Callable[[str], Callable[[int, int], None] | None] | None = None,
    client: Any | None = None,
) -> tuple[pd.DataFrame, dict[str, Rollout]]:
    """Roll each policy out on ``market`` and tabulate :func:`summarize` per policy.

    ``on_policy(name)`` gives a policy's ``on_step(decision_number, active_payments)``
    callback. With ``client`` (a ``distributed.Client``) the rollouts run on its cluster
    (``simulator.distributed``, the same result), and ``on_step`` is called as slices of
    payments settle, with decision number -1.

    Returns the table (one row per policy, in the order given) and the rollouts.
    """
    steps = {name: on_policy(name) if on_policy else None for name in policies}
    if client is not None:
        from reclaim.simulator.distributed import rollout_on

        active = dict.fromkeys(policies, len(market))

        def on_done(name: str, payments: int) -> None:
            active[name] -= payments
            if (on_step := steps[name]) is not None:
                on_step(-1, active[name])

        rollouts = rollout_on(client, market, policies, seed, on_done=on_done)
    else:
        rollouts = {
            name: rollout(market, policy, seed=seed, on_step=steps[name])
            for name, policy in policies.items()
        }
    table = pd.DataFrame(
        [{"policy": name, **summarize(rollouts[name].outcomes)} for name in policies]
    )
    return table.set_index("policy"), rollouts


def reference_policies(market: Marketplace) -> dict[str, Policy]:
    """The reference policies, weakest first, with the oracle for ``market`` last."""
    policies: dict[str, Policy] = {name: cls() for name, cls in REFERENCE_POLICIES.items()}
    policies["oracle"] = Oracle(market)
    return policies
