"""The oracle: the best any policy can do in expectation, planned on the simulator's hidden state.

Given a payment's hidden state, a policy's only news between decisions is "the retry failed
and the customer has neither paid nor cancelled": every decision after the first is reached
along one path. So the best policy that reads hidden state (but not the world's random draws)
is an open-loop *plan* made at the first failure: the retry times ``a_1 < a_2 < …`` and a
message channel at each decision. :class:`Oracle` finds that plan by backward induction over
(retries made, time) on a grid of ``step_minutes`` over the recovery window, under the same
network rules (:func:`reclaim.rules.limits`: the cap, the wait after each attempt, the window,
the blocked declines) and the account's message limit and channels as every policy.

What the plan maximises is the expected net revenue, recovered amount less retry and message
fees. A payment is not recovered when every planned retry fails (the true success probability
of each, :func:`truth.retry_success_probability`), no message brings a reply before the window
closes (each message's true response chance, with its reply delay), and the customer does not
pay unprompted within the window; so the chance of losing it is the product of those
independent chances, which the induction carries exactly. Two approximations, each worth at
most cents per payment: fees are charged as though no reply could come before a retry (an
overestimate: a reply stops the later retries), and a later message's cancellation risk
(backfire customers) is weighed as though earlier messages' replies came first. Messages go
at the earliest decisions, the damping of repeated messages by their order: a message's true
response chance never rises with time after the failure, so for any retry plan that is the
best time to send them.

It reads hidden state and is for comparison only, never deployable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reclaim import vocab
from reclaim.policy import ActionBatch, DecisionBatch, Policy, Uniforms, merchant_of_record
from reclaim.rules import limits
from reclaim.simulator import truth
from reclaim.simulator.marketplace import Marketplace

#: Messages a payment may get when no account configuration says otherwise: the platform
#: default of ``reclaim.account_config.AccountConfig.max_messages``.
DEFAULT_MAX_MESSAGES = 3


@dataclass
class Plans:
    """Plans for a set of payments (positions in the marketplace).

    Attributes
    ----------
    retry_steps
        ``(n, k)`` grid steps after the first failure of each planned retry, ``-1`` past the
        last one.
    channels
        ``(n, m)`` the channel of the message at each of the first ``m`` decisions, or None.
    sender
        ``(n,)`` who sends the messages.
    expected_net_usd
        ``(n,)`` the plan's expected net revenue (recovered less fees), USD.
    """

    retry_steps: np.ndarray
    channels: np.ndarray
    sender: np.ndarray
    expected_net_usd: np.ndarray


def _shifted_suffix_min(values: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Per row ``i`` and column ``j``: the minimum of ``values[i, j + offset[i]:]`` (inf
    where that is empty)."""
    low = np.minimum.accumulate(values[:, ::-1], axis=1)[:, ::-1]
    n, size = values.shape
    out = np.full((n, size), np.inf, dtype=values.dtype)
    for off in np.unique(offset):  # rows share a few waits: shift each group by slicing
        rows = np.flatnonzero(offset == off)
        if off < size:
            out[rows, : size - off] = low[rows, off:]
    return out


RetryOdds = Callable[[Marketplace, np.ndarray, np.ndarray], np.ndarray]
MessageEffect = Callable[..., tuple[np.ndarray, np.ndarray]]


def plan_payments(
    market: Marketplace,
    batch: DecisionBatch,
    rows: np.ndarray,
    step_minutes: int = 30,
    chunk: int = 256,
    retry_odds: RetryOdds = truth.retry_odds,
    message_effect: MessageEffect = truth.message_effect,
    knows_self_cure: bool = True,
) -> Plans:
    """Plan each payment of ``batch`` (its first decision; ``rows`` its positions in
    ``market``) by backward induction on its hidden state; see the module's docstring.
    ``retry_odds`` gives the retry odds the plan assumes (:func:`truth.retry_odds`'s grid
    form): the truth, or another (``truth.prior_retry_odds``: no hidden retry state);
    ``message_effect`` the messages' (:func:`truth.message_effect`, or
    ``truth.prior_message_effect``: no customer's own response); ``knows_self_cure``
    whether the plan knows who pays unprompted (it leaves them alone). A decision after the
    first is planned from where it stands (the time gone, the messages sent: a planner that
    plans again at every decision, ``simulator.posterior``)."""
    cfg = market.config
    rules = cfg.rules
    n = len(batch)
    lim = limits(batch, rules)
    t0 = batch.now.to_numpy(dtype="datetime64[us]")
    hidden = market.hidden.iloc[rows]
    usd = batch.payments["amount"].to_numpy() * hidden["usd_per_minor"].to_numpy()
    window_h = rules.window_days * 24.0
    cure = hidden["self_cure_hours"].to_numpy(dtype=float)
    pays_anyway = np.isfinite(cure) & (cure <= window_h) & knows_self_cure

    # a plan made later than the first decision counts the time gone and the messages sent
    failed = batch.payments["failed_at"].to_numpy(dtype="datetime64[us]")
    elapsed_h = np.maximum((t0 - failed) / np.timedelta64(1, "h"), 0.0)
    sent = sum(batch.state[f"n_{ch.value}"].to_numpy() for ch in vocab.Channel)

    # the message each payment would get: its best allowed channel, from its own sender
    cons = batch.constraints
    sender = merchant_of_record(batch.payments).astype("object").to_numpy()
    max_messages = np.full(n, DEFAULT_MAX_MESSAGES)
    if cons is not None:
        own = cons["sender"].to_numpy(dtype=object)
        sender = np.where(pd.notna(own), own, sender)
        max_messages = np.where(cons["opted_out"].to_numpy(), 0, cons["max_messages"].to_numpy())
    max_messages = np.maximum(max_messages - sent, 0)
    respond = np.zeros(n)
    cancel = np.zeros(n)
    fee = np.zeros(n)
    channel = np.full(n, None, dtype=object)
    at0 = pd.Series(batch.now.array)
    for ch in vocab.Channel:
        r, c = message_effect(
            market, rows, at0, np.full(n, ch.value, dtype=object), sender, sent.astype(float)
        )
        allowed = batch.payments[f"reachable_{ch.value}"].to_numpy(dtype=bool).copy()
        if cons is not None:
            allowed &= cons[f"allow_{ch.value}"].to_numpy(dtype=bool)
        cost = cfg.message_cost_cents[ch.value] / 100.0
        better = allowed & (r * usd - cost > respond * usd - fee)
        respond, cancel = np.where(better, r, respond), np.where(better, c, cancel)
        fee, channel = np.where(better, cost, fee), np.where(better, ch.value, channel)

    steps = int(round(window_h * 60 / step_minutes))
    grid_h = np.arange(steps + 1) * step_minutes / 60.0
    left_h = window_h - elapsed_h
    now_decay = truth.response_decay(elapsed_h / 24.0, market)

    def message_curve(part: np.ndarray) -> np.ndarray:
        """(len(part), steps + 1): a message sent at each grid step, relative to one sent
        now, times the chance its reply comes before the window closes."""
        later = elapsed_h[part][:, None] + grid_h[None, :]
        decay = truth.response_decay(later / 24.0, market) / now_decay[part][:, None]
        wait = np.maximum(left_h[part][:, None] - grid_h[None, :], 0.0)
        return decay * (1.0 - np.exp(-wait / cfg.response_delay_mean_hours))

    cap = lim["retries_left"].to_numpy()
    wait_h = (lim["earliest_retry_at"] - batch.now).dt.total_seconds().to_numpy() / 3600.0
    offset = np.ceil(wait_h * 60 / step_minutes - 1e-9).astype(int)
    retryable = (lim["blocked"].to_numpy() == "") & (cap > 0) & ~pays_anyway

    k_max = int(cap[retryable].max()) if retryable.any() else 0
    retry_steps = np.full((n, max(k_max, 1)), -1, dtype=np.int32)
    m_max = int(max_messages.max()) if n else 0
    channels = np.full((n, max(m_max, 1)), None, dtype=object)
    expected = np.where(pays_anyway, usd, 0.0)

    # no retry allowed: one message at the first decision, if it pays for itself
    quiet = ~retryable & ~pays_anyway & (max_messages > 0)
    reply_now = 1.0 - np.exp(-np.maximum(left_h, 0.0) / cfg.response_delay_mean_hours)
    gain = usd * (1.0 - cancel) * respond * reply_now - fee
    send = quiet & (channel != None) & (gain > 0)  # noqa: E711 (element-wise)
    channels[send, 0] = channel[send]
    expected = np.where(send, gain, expected)

    order = np.flatnonzero(retryable)
    # payments with the same cap and wait share a chunk: its depth and its shifts
    order = order[np.lexsort((offset[order], cap[order]))]
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        steps_p, send_p, value = _induct(
            market,
            rows[part],
            t0[part],
            grid_h,
            usd[part],
            cap[part],
            offset[part],
            respond[part][:, None] * message_curve(part),
            cancel[part],
            fee[part],
            np.where(channel[part] != None, max_messages[part], 0),  # noqa: E711
            retry_odds,
        )
        retry_steps[part, : steps_p.shape[1]] = steps_p
        for k in range(send_p.shape[1]):
            channels[part[send_p[:, k]], k] = channel[part[send_p[:, k]]]
        expected[part] = value
    senders = np.where(pd.notna(channel), sender, np.full(n, None, dtype=object))
    return Plans(retry_steps, channels, senders, expected)


def _induct(
    market: Marketplace,
    rows: np.ndarray,
    t0: np.ndarray,
    grid_h: np.ndarray,
    usd: np.ndarray,
    cap: np.ndarray,
    offset: np.ndarray,
    reply: np.ndarray,
    cancel: np.ndarray,
    fee: np.ndarray,
    max_messages: np.ndarray,
    retry_odds: RetryOdds = truth.retry_odds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward induction for payments that may be retried and would not pay unprompted.

    ``reply[i, g]``: the chance a first message sent at grid step ``g`` brings a reply
    before the window closes. Returns each payment's planned retry steps ``(n, k)`` (-1 past
    the last), whether a message goes at each of the first decisions ``(n, m)``, and the
    plan's expected net revenue.

    The induction works in expected loss: from a decision after ``k`` retries at step
    ``g``, the expected unrecovered amount plus fees. ``tried[k][i, g]`` is that loss when
    retry ``k + 1`` is made at step ``g``; the plan is read forward from them.
    """
    cfg = market.config
    n, size = len(rows), len(grid_h)
    at = t0[:, None] + (grid_h * 3600e6).astype("timedelta64[us]")[None, :]
    end = market.payments["failed_at"].to_numpy(dtype="datetime64[us]")[rows]
    end = end + np.timedelta64(int(round(cfg.rules.window_days * 24 * 3600e6)), "us")
    odds = np.where(at <= end[:, None], retry_odds(market, rows, at), 0.0)  # a later plan's grid
    retry_fee = cfg.retry_cost_cents / 100.0
    k_max = int(cap.max())
    m_max = int(max_messages.max())
    amount = usd[:, None]
    tried = np.empty((k_max, n, size), dtype=np.float32)
    message = np.zeros((m_max, n, size), dtype=bool)

    after = np.broadcast_to(amount, (n, size))  # loss from decision k + 1, message included
    for k in range(k_max, -1, -1):
        loss = np.broadcast_to(amount, (n, size))
        if k < k_max:
            p = truth.attempt_probability(market, odds, k + 1)
            tried[k] = retry_fee + (1.0 - p) * after
            best = _shifted_suffix_min(tried[k], offset)
            loss = np.where((k < cap)[:, None] & (best < amount), best, amount)
        if k < m_max:
            damped = reply * cfg.repeat_message_damping**k
            c = cancel[:, None]
            sent = fee[:, None] + c * amount + (1.0 - c) * (1.0 - damped) * loss
            go = (k < max_messages)[:, None] & (sent < loss)
            message[k] = go
            loss = np.where(go, sent, loss)
        after = loss

    value = usd - after[:, 0]
    steps = np.full((n, max(k_max, 1)), -1, dtype=np.int32)
    sends = np.zeros((n, max(m_max, 1)), dtype=bool)
    at_step = np.zeros(n, dtype=int)
    alive = np.ones(n, dtype=bool)
    idx = np.arange(n)
    cols = np.arange(size)[None, :]
    for k in range(max(k_max, m_max) + 1):
        if k < m_max:
            sends[:, k] = alive & message[k, idx, at_step]
        if k >= k_max:
            break
        # the best retry from the earliest allowed step on, as the induction chose it
        opened = cols >= (at_step + offset)[:, None]
        candidates = np.where(opened, tried[k], np.inf)
        nxt = np.argmin(candidates, axis=1)
        worth = candidates[idx, nxt] < usd
        alive = alive & (k < cap) & opened.any(axis=1) & worth
        steps[:, k] = np.where(alive, nxt, -1)
        at_step = np.where(alive, nxt, at_step)
    return steps, sends, value


class Oracle(Policy):
    """Acts on hidden truth; for comparison only, never deployable.

    At each payment's first decision it plans the payment whole (:func:`plan_payments`);
    later decisions follow the plan. ``expected_net_usd`` holds each planned payment's
    expected net revenue by its position in the marketplace (NaN until planned).
    ``retry_odds``, ``message_effect`` and ``knows_self_cure`` are :func:`plan_payments`'s:
    the truth by default, priors to plan as one that knows less would
    (``benchmarks/ceiling_parts.py``).
    """

    name = "oracle"

    def __init__(
        self,
        market: Marketplace,
        step_minutes: int = 30,
        retry_odds: RetryOdds = truth.retry_odds,
        name: str = "oracle",
        message_effect: MessageEffect = truth.message_effect,
        knows_self_cure: bool = True,
    ):
        self.market = market
        self.step_minutes = step_minutes
        self.retry_odds = retry_odds
        self.message_effect = message_effect
        self.knows_self_cure = knows_self_cure
        self.name = name
        n = len(market)
        steps = market.config.max_decisions  # no plan has more retries or messages
        self._position = pd.Series(np.arange(n), index=market.payments["payment_id"].to_numpy())
        self._planned = np.zeros(n, dtype=bool)
        self._retry_steps = np.full((n, steps), -1, dtype=np.int32)
        self._channels = np.full((n, steps), None, dtype=object)
        self._sender = np.full(n, None, dtype=object)
        self._first = np.full(n, np.datetime64("NaT", "us"))
        self.expected_net_usd = np.full(n, np.nan)

    def _keep(self, rows: np.ndarray, plans: Plans, first: np.ndarray) -> None:
        self._retry_steps[rows, : plans.retry_steps.shape[1]] = plans.retry_steps
        self._channels[rows, : plans.channels.shape[1]] = plans.channels
        self._sender[rows] = plans.sender
        self._first[rows] = first
        self.expected_net_usd[rows] = plans.expected_net_usd
        self._planned[rows] = True

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        market = self.market
        rows = self._position.reindex(batch.payments["payment_id"].to_numpy()).to_numpy()
        decision = batch.state["decision_number"].to_numpy()
        new = ~self._planned[rows]
        if (new & (decision > 0)).any():
            raise ValueError("the oracle plans each payment at its first decision")
        if new.any():
            sub = batch.subset(new)
            plans = plan_payments(
                market,
                sub,
                rows[new],
                self.step_minutes,
                retry_odds=self.retry_odds,
                message_effect=self.message_effect,
                knows_self_cure=self.knows_self_cure,
            )
            self._keep(rows[new], plans, sub.now.to_numpy(dtype="datetime64[us]"))

        width = self._retry_steps.shape[1]
        step = np.where(
            decision < width,
            self._retry_steps[rows, np.minimum(decision, width - 1)],
            -1,
        )
        offset = (step * self.step_minutes * 60e6).astype("timedelta64[us]")
        at = np.where(step >= 0, self._first[rows] + offset, np.datetime64("NaT", "us"))
        m = self._channels.shape[1]
        channel = np.where(decision < m, self._channels[rows, np.minimum(decision, m - 1)], None)
        sender = np.where(pd.notna(channel), self._sender[rows], None)
        retry_at = pd.Series(pd.DatetimeIndex(at).tz_localize("UTC"))
        return ActionBatch.build(len(batch), retry_at=retry_at, channel=channel, sender=sender)
