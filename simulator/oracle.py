"""The oracle: a policy that reads the simulator's hidden state.

It knows each payment's true retry-success curve and its customer's channel segment, so it
retries only when and where the truth says a retry is most likely to work, and messages only
customers who respond, through their channel, from the sender they recognise. It does not see
the random draws themselves, so it is an upper bound in expectation for a policy that acts on
what the service can observe, not a clairvoyant one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim import timeutil, vocab
from reclaim.policy import ActionBatch, DecisionBatch, Policy, Uniforms, merchant_of_record
from reclaim.rules import limits
from reclaim.simulator import truth
from reclaim.simulator.marketplace import Marketplace


class Oracle(Policy):
    """Acts on hidden truth; for comparison only, never deployable.

    At each decision it scores candidate retry times — the earliest allowed, 10:00 and 00:30
    local on each of the next 14 days, and the moments a temporary hold clears or a card is
    updated — by their true success probability, and retries at the best (earliest on ties)
    when its expected value beats the retry's cost. At the first decision it messages through
    the channel with the highest true response chance, unless the customer would not respond
    or might cancel.
    """

    name = "oracle"

    def __init__(self, market: Marketplace, horizon_days: int = 14):
        self.market = market
        self.horizon_days = horizon_days

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        market, cfg = self.market, self.market.config
        n = len(batch)
        position = pd.Series(np.arange(len(market)), index=market.payments["payment_id"].to_numpy())
        rows = position.reindex(batch.payments["payment_id"].to_numpy()).to_numpy()
        hidden = market.hidden.iloc[rows].reset_index(drop=True)
        lim = limits(batch, cfg.rules)
        earliest = lim["earliest_retry_at"]
        tz = hidden["true_timezone"]

        local_day = timeutil.local_times(batch.now, tz).dt.normalize()
        # every local candidate of every payment converted in one call (one pass per zone)
        offsets = [
            pd.Timedelta(days=d, hours=h) for d in range(self.horizon_days + 1) for h in (10.0, 0.5)
        ]
        local = pd.concat([local_day + o for o in offsets], ignore_index=True)
        utc = timeutil.to_utc(local, pd.concat([tz] * len(offsets), ignore_index=True))
        candidates = [earliest] + [
            pd.Series(utc.array[k * n : (k + 1) * n], index=batch.payments.index)
            for k in range(len(offsets))
        ]
        failed = batch.payments["failed_at"]
        for hours in (hidden["hold_hours"], hidden["card_update_hours"]):
            finite = np.isfinite(hours.to_numpy())
            offset = pd.to_timedelta(np.where(finite, hours.to_numpy() + 0.25, 0.0), unit="h")
            candidates.append((failed + offset).where(finite, earliest))
        candidates = [at.where(at >= earliest, earliest) for at in candidates]

        # the true success chance of every candidate, in one call over the stacked candidates
        retry_number = batch.state["decision_number"].to_numpy() + 1
        k = len(candidates)
        stacked = pd.concat(candidates, ignore_index=True)
        p_all = truth.retry_success_probability(
            market, np.tile(rows, k), stacked, np.tile(retry_number, k)
        ).reshape(k, n)
        best_p = np.full(n, -1.0)
        best_at = pd.Series(pd.NaT, index=batch.payments.index, dtype=earliest.dtype)
        for at, p in zip(candidates, p_all, strict=True):
            ok = (at <= lim["window_end"]).to_numpy()
            p = np.where(ok, p, -1.0)
            better = p > best_p + 1e-12
            best_p = np.where(better, p, best_p)
            best_at = best_at.where(~better, at)

        usd = batch.payments["amount"].to_numpy() * hidden["usd_per_minor"].to_numpy()
        worth = (best_p * usd * 100.0 > cfg.retry_cost_cents) & (lim["blocked"].to_numpy() == "")
        retry_at = best_at.where(worth)

        channels = [c.value for c in vocab.Channel]
        own = merchant_of_record(batch.payments).astype("object").to_numpy()
        earlier = (batch.state[[f"n_{c}" for c in channels]].sum(axis=1)).to_numpy()
        best_gain = np.zeros(n)
        best_channel = np.full(n, None, dtype=object)
        for ch in channels:
            respond, cancel = truth.message_effect(
                market, rows, batch.now, np.full(n, ch, dtype=object), own, earlier
            )
            gain = respond * usd * 100.0 - cfg.message_cost_cents[ch]
            gain = np.where(cancel > 0, -1.0, gain)
            better = gain > best_gain
            best_gain = np.where(better, gain, best_gain)
            best_channel = np.where(better, ch, best_channel)
        first = batch.state["decision_number"].to_numpy() == 0
        channel = np.where(first, best_channel, None)
        sender = np.where(pd.notna(channel), own, None)
        return ActionBatch.build(n, retry_at=retry_at, channel=channel, sender=sender)
