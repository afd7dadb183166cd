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

from reclaim import vocab
from reclaim.policy import Policy
from reclaim.reference import REFERENCE_POLICIES
from reclaim.simulator.environment import Rollout, rollout
from reclaim.simulator.marketplace import Marketplace
from reclaim.simulator.oracle import Oracle

Z95 = 1.959963984540054

#: The kinds of decline figures are broken down by, each with the decline codes it holds; a
#: decline the networks call hard is ``hard`` whatever its code, and the rest ``other``.
DECLINE_KINDS: dict[str, tuple[str, ...]] = {
    "insufficient_funds": ("insufficient_funds",),
    "issuer_decline": ("do_not_honor", "generic_decline"),
    "temporary_hold": ("try_again_later", "card_velocity_exceeded"),
    "expired_card": ("expired_card",),
    "authentication_required": ("authentication_required",),
    "processing_error": ("processing_error", "issuer_not_available"),
}


def decline_kinds(market: Marketplace) -> np.ndarray:
    """Each payment's decline kind (:data:`DECLINE_KINDS`, ``hard`` or ``other``)."""
    code = market.payments["decline_code"].astype("object").to_numpy()
    kind = np.full(len(code), "other", dtype=object)
    for name, codes in DECLINE_KINDS.items():
        kind[np.isin(code, codes)] = name
    p = market.payments
    category = vocab.decline_categories(
        p["decline_code"], p["advice_code"], p["network_decline_code"], p["network_advice_code"]
    )
    kind[(category == vocab.DeclineCategory.HARD.value).to_numpy(dtype=bool)] = "hard"
    return kind


def net_share(outcomes: pd.DataFrame, mask: np.ndarray | None = None) -> float:
    """Net revenue (recovered less fees) as a share of the failed amount, over ``mask``."""
    rows = outcomes if mask is None else outcomes[mask]
    failed = float(rows["amount_usd"].sum())
    net = float((rows["recovered_usd"] - rows["cost_usd"]).sum())
    return net / failed if failed > 0 else float("nan")


def paired_difference(
    a: pd.DataFrame, b: pd.DataFrame, mask: np.ndarray | None = None, z: float = Z95
) -> tuple[float, float, float]:
    """How much more net revenue ``a`` made than ``b`` on the same payments (outcomes in the
    same order), as a share of their failed amount, with its interval over payments:
    ``(difference, lo, hi)``."""
    if not (a["payment_id"].to_numpy() == b["payment_id"].to_numpy()).all():
        raise ValueError("paired outcomes must hold the same payments in the same order")
    keep = np.ones(len(a), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    amount = a["amount_usd"].to_numpy()[keep]
    gain = (a["recovered_usd"] - a["cost_usd"] - b["recovered_usd"] + b["cost_usd"]).to_numpy()
    gain = gain[keep]
    total = amount.sum()
    if len(gain) < 2 or total <= 0:
        return float("nan"), float("nan"), float("nan")
    diff = gain.sum() / total
    # the ratio's delta-method interval: residuals of the gain against diff x amount
    half = z * np.std(gain - diff * amount, ddof=1) * np.sqrt(len(gain)) / total
    return float(diff), float(diff - half), float(diff + half)


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

    Returns the failed amount, recovered revenue, cost and net (USD; the last three with their
    95% bounds, ``*_lo``, ``*_hi``),
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
        "failed_usd": float(outcomes["amount_usd"].sum()),
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
    kinds = decline_kinds(market)
    table = pd.DataFrame(
        [
            {
                "policy": name,
                **summarize(rollouts[name].outcomes),
                **by_decline_kind(rollouts[name].outcomes, kinds),
            }
            for name in policies
        ]
    )
    return table.set_index("policy"), rollouts


def by_decline_kind(outcomes: pd.DataFrame, kinds: np.ndarray) -> dict[str, float]:
    """``net_share`` over all payments and ``net_share_<kind>`` per decline kind present."""
    out = {"net_share": net_share(outcomes)}
    for kind in [*DECLINE_KINDS, "hard", "other"]:
        if (kinds == kind).any():
            out[f"net_share_{kind}"] = net_share(outcomes, kinds == kind)
    return out


def reference_policies(market: Marketplace) -> dict[str, Policy]:
    """The reference policies, weakest first, with the oracle for ``market`` last."""
    policies: dict[str, Policy] = {name: cls() for name, cls in REFERENCE_POLICIES.items()}
    policies["oracle"] = Oracle(market)
    return policies
