"""Rollouts spread over a Dask cluster (``reclaim simulate --dask``, ``reclaim evaluate
--simulator --dask``), with the same result as one process for the same seed.

A payment's rollout depends only on its own draws: the world's noise is drawn per payment
when the marketplace is generated, and the policy's per decision
(:class:`~reclaim.policy.DecisionRandom`). So the marketplace is cut into consecutive slices
of payments (:meth:`Marketplace.subset`), each slice is rolled out on a worker, and the
slices' rollouts are joined in order (:meth:`Rollout.concat`): the same tables and outcomes,
row for row, as :func:`~reclaim.simulator.environment.rollout` on the whole marketplace.

The marketplace itself is drawn on the driver (one random stream, so one process); its
rollouts are the work that grows with the policies compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from reclaim.cluster import worker_count
from reclaim.policy import Policy
from reclaim.simulator.environment import Rollout, rollout
from reclaim.simulator.marketplace import Marketplace
from reclaim.simulator.oracle import Oracle

#: Payments per slice aimed at: small enough to spread a rollout over every worker and show
#: progress, large enough that a step's fixed cost is shared by many payments.
SLICE_PAYMENTS = 20_000


@dataclass(frozen=True)
class _OracleOfSlice:
    """Stands for an :class:`Oracle` on the wire: each worker's oracle reads the hidden state
    of its own slice, instead of every worker receiving the whole marketplace."""

    step_minutes: int


def slices(n: int, parts: int) -> list[np.ndarray]:
    """``parts`` (at most ``n``) consecutive, near-equal position ranges covering ``0..n-1``."""
    return [s for s in np.array_split(np.arange(n), max(1, min(parts, n))) if len(s)]


def slice_count(payments: int, workers: int) -> int:
    """Slices for ``payments``: about :data:`SLICE_PAYMENTS` each, at least two per worker."""
    return max(2 * workers, math.ceil(payments / SLICE_PAYMENTS))


def _roll_slice(market: Marketplace, policy: Policy | _OracleOfSlice, seed: int) -> Rollout:
    if isinstance(policy, _OracleOfSlice):
        policy = Oracle(market, policy.step_minutes)
    return rollout(market, policy, seed=seed)


def rollout_on(
    client: Any,
    market: Marketplace,
    policies: Mapping[str, Policy],
    seed: int = 0,
    parts: int | None = None,
    on_done: Callable[[str, int], None] | None = None,
) -> dict[str, Rollout]:
    """Roll each of ``policies`` out over ``market`` on the cluster of ``client``.

    Parameters
    ----------
    parts
        Slices of the marketplace; :func:`slice_count` by default.
    on_done
        Called as ``on_done(policy_name, payments)`` as each slice's rollout comes back.

    Returns each policy's rollout, equal to ``rollout(market, policy, seed)``.
    """
    from distributed import as_completed

    pieces = slices(len(market), parts or slice_count(len(market), worker_count(client)))
    markets = client.scatter([market.subset(p) for p in pieces])
    futures: dict[Any, tuple[str, int]] = {}
    for name, policy in policies.items():
        sent: Any = (
            _OracleOfSlice(policy.step_minutes)
            if isinstance(policy, Oracle)
            else client.scatter(policy, broadcast=True)
        )
        for i, part in enumerate(markets):
            futures[client.submit(_roll_slice, part, sent, seed, pure=False)] = (name, i)
    done: dict[str, dict[int, Rollout]] = {name: {} for name in policies}
    for future in as_completed(list(futures)):
        name, i = futures[future]
        done[name][i] = future.result()
        future.release()
        if on_done is not None:
            on_done(name, len(pieces[i]))
    return {
        name: Rollout.concat([by_slice[i] for i in range(len(pieces))])
        for name, by_slice in done.items()
    }
