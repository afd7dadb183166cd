"""A planner that knows the simulator's prior and learns from each failed retry: what a policy
reading no hidden state could reach by updating its plan, for comparison only.

The prior plan (:class:`~reclaim.simulator.oracle.Oracle` on ``truth.prior_retry_odds``)
plans once, at the first failure, on odds averaged over redrawn hidden retry states. A policy
learns more as it goes: a retry that failed at hour 40 says the hold had not lifted by then,
or that no payday had come. :class:`PosteriorPlan` weighs the same redrawn states, at every
decision, by how likely each makes the failures seen so far (Bayes' rule over the draws, a
uniform prior), and plans the rest of the window from where the payment stands — its next
retry and message, on the weighted odds and the messages' prior effect — with the oracle's
planner, acting on the plan's first step. It reads the payments' observable history and the
simulator's distributions, never a payment's own hidden state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from reclaim.policy import ActionBatch, DecisionBatch, Policy, Uniforms
from reclaim.simulator import truth
from reclaim.simulator.marketplace import Marketplace
from reclaim.simulator.oracle import plan_payments


class PosteriorPlan(Policy):
    """Plans each payment again at every decision on the posterior over ``draws``.

    Parameters
    ----------
    market
        The marketplace it acts in (its payments' positions and observable history only).
    draws
        The marketplace with each payment's retry state drawn again
        (``marketplace.redraw_retry_state``): the prior's support.
    customers
        The marketplace with each customer's state drawn again
        (``marketplace.redraw_customer_state``), for the messages.
    """

    name = "posterior_plan"

    def __init__(
        self,
        market: Marketplace,
        draws: Sequence[Marketplace],
        customers: Sequence[Marketplace],
        step_minutes: int = 30,
        name: str = "posterior_plan",
    ):
        self.market, self.draws, self.step_minutes, self.name = market, draws, step_minutes, name
        self.message_effect = truth.prior_message_effect(customers)
        n, k = len(market), market.config.max_decisions
        self._position = pd.Series(np.arange(n), index=market.payments["payment_id"].to_numpy())
        self._tried = np.full((n, k), np.datetime64("NaT", "us"))  # each failed retry's time
        self._weight = np.full((n, len(draws)), 1.0 / len(draws))
        self._made = np.zeros(n, dtype=int)

    def _update(self, rows: np.ndarray, made: np.ndarray, last: np.ndarray) -> None:
        """Record each decision's latest failed retry and weigh the draws by the failures."""
        again = made > 0
        self._tried[rows[again], made[again] - 1] = last[again]
        self._made[rows] = made
        width = int(made.max()) if len(made) else 0
        if width == 0:
            self._weight[rows] = 1.0 / len(self.draws)
            return
        times = self._tried[rows, :width]
        seen = np.arange(width)[None, :] < made[:, None]
        # padded with each row's latest time: the grid must ascend; padding is masked out
        filled = np.where(
            seen, times, times[np.arange(len(rows)), np.maximum(made - 1, 0)][:, None]
        )
        filled = np.where(np.isnat(filled), np.datetime64("1970-01-01", "us"), filled)
        number = np.arange(1, width + 1)[None, :]
        loglik = np.zeros((len(rows), len(self.draws)))
        for d, draw in enumerate(self.draws):
            p = truth.attempt_probability(draw, truth.retry_odds(draw, rows, filled), number)
            loglik[:, d] = np.where(seen, np.log1p(-np.minimum(p, 1 - 1e-9)), 0.0).sum(axis=1)
        w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
        self._weight[rows] = w / w.sum(axis=1, keepdims=True)

    def _odds(self, market: Marketplace, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The posterior's odds of the next retry at the grid ``at``, the failures made so far
        counted in (the planner gives nothing after the window)."""
        w = self._weight[rows]
        odds = sum(
            w[:, [d]] * truth.retry_odds(draw, rows, at) for d, draw in enumerate(self.draws)
        )
        return odds * market.config.attempt_decay ** self._made[rows][:, None]

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        rows = self._position.reindex(batch.payments["payment_id"].to_numpy()).to_numpy()
        made = batch.state["decision_number"].to_numpy().astype(int)
        last = batch.state["last_attempt_at"].to_numpy(dtype="datetime64[us]")
        self._update(rows, made, last)
        plans = plan_payments(
            self.market,
            batch,
            rows,
            self.step_minutes,
            retry_odds=self._odds,
            message_effect=self.message_effect,
            knows_self_cure=False,
        )
        step = plans.retry_steps[:, 0]
        offset = (step * self.step_minutes * 60e6).astype("timedelta64[us]")
        now = batch.now.to_numpy(dtype="datetime64[us]")
        at = np.where(step >= 0, now + offset, np.datetime64("NaT", "us"))
        retry_at = pd.Series(pd.DatetimeIndex(at).tz_localize("UTC"))
        channel = plans.channels[:, 0]
        sender = np.where(pd.notna(channel), plans.sender, None)
        return ActionBatch.build(len(batch), retry_at=retry_at, channel=channel, sender=sender)
