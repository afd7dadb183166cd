"""Reference policies every learned policy is compared against, and the randomized logging
policy the simulator records its history with.

All read only the :class:`~reclaim.policy.DecisionBatch` (what the service sees) and respect
:func:`reclaim.rules.limits` themselves, so the probability each returns is the probability
of the action actually taken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from reclaim import timeutil, vocab
from reclaim.policy import (
    ActionBatch,
    DecisionBatch,
    Policy,
    Uniforms,
    merchant_of_record,
    merchant_of_record_row,
)
from reclaim.rules import NetworkRules, limits, limits_row


def _schedule(
    batch: DecisionBatch, days: Sequence[float], local_hour: float | None = None
) -> pd.Series:
    """Retry k (k = decision number) at ``days[k]`` after the first failure, NaT past the end.

    With ``local_hour``, at that hour of the customer's local day instead of the failure's
    time of day.
    """
    k = batch.state["decision_number"].to_numpy()
    offsets = np.array(list(days) + [np.nan])[np.minimum(k, len(days))]
    at = batch.payments["failed_at"] + pd.to_timedelta(offsets, unit="D")
    if local_hour is not None:
        tz = batch.payments["customer_timezone"]
        local = timeutil.local_times(at.fillna(batch.now), tz).dt.normalize()
        at = timeutil.to_utc(local + pd.Timedelta(hours=local_hour), tz).where(at.notna())
    return at


def _within_limits(batch: DecisionBatch, at: pd.Series, network_rules: NetworkRules) -> pd.Series:
    """Move proposed retries to the earliest allowed time; drop disallowed ones."""
    lim = limits(batch, network_rules)
    at = at.where(at >= lim["earliest_retry_at"], lim["earliest_retry_at"]).where(at.notna())
    return at.where((lim["blocked"] == "") & (at <= lim["window_end"]))


class NoRetry(Policy):
    """Never retries, never messages: what a platform recovers with no dunning at all."""

    name = "no_retry"

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        return ActionBatch.build(len(batch))


def _scheduled_row(
    days: Sequence[float],
    payment: Mapping[str, Any],
    state: Mapping[str, Any],
    now: datetime,
    rules: NetworkRules,
    constraints: Mapping[str, Any] | None,
) -> datetime | None:
    """:func:`_schedule` then :func:`_within_limits` for one decision given as plain values."""
    k = int(state["decision_number"])
    if k >= len(days):
        return None
    at = payment["failed_at"] + timedelta(days=float(days[k]))
    lim = limits_row(payment, state, now, rules, constraints)
    at = max(at, lim["earliest_retry_at"])
    return at if lim["blocked"] == "" and at <= lim["window_end"] else None


class ScheduledRows:
    """The row path of a fixed-schedule policy (``days``, ``network_rules`` and whether it
    emails at the first failure): the scoring API's control arm decides on plain rows, with
    no pandas, exactly as :meth:`Policy.act` does (``tests/test_reference_rows.py``)."""

    days: Sequence[float]
    network_rules: NetworkRules | None
    email_first: bool = False

    def act_rows(
        self,
        payments: Sequence[Mapping[str, Any]],
        states: Sequence[Mapping[str, Any]],
        now: Sequence[datetime],
        constraints: Sequence[Mapping[str, Any] | None],
    ) -> list[dict[str, Any]]:
        """Per decision: ``retry_at``, ``channel``, ``sender``, both propensities (1: the
        policy is deterministic) and ``reason`` (empty)."""
        rules = self.network_rules or NetworkRules()
        out = []
        for p, s, t, c in zip(payments, states, now, constraints, strict=True):
            first = self.email_first and int(s["decision_number"]) == 0
            out.append(
                {
                    "retry_at": _scheduled_row(self.days, p, s, t, rules, c),
                    "channel": vocab.Channel.EMAIL.value if first else None,
                    "sender": merchant_of_record_row(p) if first else None,
                    "retry_propensity": 1.0,
                    "channel_propensity": 1.0,
                    "reason": "",
                }
            )
        return out


class FixedSchedule(ScheduledRows, Policy):
    """Retries at fixed days after the first failure (default 1, 3, 5, 7), no messages."""

    name = "fixed_schedule"

    def __init__(
        self, days: Sequence[float] = (1, 3, 5, 7), network_rules: NetworkRules | None = None
    ):
        self.days = days
        self.network_rules = network_rules

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        at = _within_limits(
            batch, _schedule(batch, self.days), self.network_rules or NetworkRules()
        )
        return ActionBatch.build(len(batch), retry_at=at)


class StripeLike(ScheduledRows, Policy):
    """Stripe's recommended default: 8 retries within 2 weeks, and an email at the first failure.

    The days (1, 2, 3, 5, 7, 9, 11, 14) spread 8 tries over 2 weeks (docs/sources.md:
    "8 tries in 2 weeks"); the exact spacing is an assumption.
    """

    name = "stripe_like"
    email_first = True

    def __init__(
        self,
        days: Sequence[float] = (1, 2, 3, 5, 7, 9, 11, 14),
        network_rules: NetworkRules | None = None,
    ):
        self.days = days
        self.network_rules = network_rules

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        at = _within_limits(
            batch, _schedule(batch, self.days), self.network_rules or NetworkRules()
        )
        first = (batch.state["decision_number"] == 0).to_numpy()
        channel = np.where(first, vocab.Channel.EMAIL.value, np.array(None))
        merchant = merchant_of_record(batch.payments).astype("object")
        sender = np.where(first, merchant, np.array(None))
        return ActionBatch.build(len(batch), retry_at=at, channel=channel, sender=sender)


class DeclineRules(Policy):
    """Hand-written decline-code rules, as a careful billing team would write them.

    - hard declines: never retried; emailed at the first failure;
    - insufficient funds: retried on the next likely payday (1st, 15th, month end or Friday)
      at 10:00 local, up to ``max_retries`` times;
    - authentication required: emailed (only the customer can authenticate), not retried;
    - expired card: emailed, and retried once a week later in case the card was updated;
    - other soft declines: retried 1, 3, 5, 7, 10 and 14 days later at 10:00 local.
    """

    name = "rules"

    def __init__(
        self,
        soft_days: Sequence[float] = (1, 3, 5, 7, 10, 14),
        max_retries: int = 4,
        local_hour: float = 10.0,
        network_rules: NetworkRules | None = None,
    ):
        self.soft_days = soft_days
        self.max_retries = max_retries
        self.local_hour = local_hour
        self.network_rules = network_rules

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        p, s = batch.payments, batch.state
        code = p["decline_code"].astype("object").to_numpy()
        category = (
            vocab.decline_categories(
                p["decline_code"],
                p["advice_code"],
                p["network_decline_code"],
                p["network_advice_code"],
            )
            .astype("object")
            .to_numpy()
        )
        k = s["decision_number"].to_numpy()
        tz = p["customer_timezone"]

        at = _schedule(batch, self.soft_days, self.local_hour)
        # The next likely payday, at least half a day away, at the chosen local hour.
        from_local = timeutil.local_times(batch.now, tz) + pd.Timedelta(hours=12)
        to_payday = timeutil.days_to_likely_payday(from_local)
        payday = timeutil.to_utc(
            from_local.dt.normalize()
            + pd.to_timedelta(to_payday, unit="D")
            + pd.Timedelta(hours=self.local_hour),
            tz,
        )
        funds = code == "insufficient_funds"
        at = at.where(~funds, payday).where(~funds | (k < self.max_retries))
        expired = code == "expired_card"
        at = at.where(~expired, _schedule(batch, (7,), self.local_hour))
        at = at.where(
            ~np.isin(category, [vocab.DeclineCategory.HARD.value])
            & (code != "authentication_required")
        )
        at = _within_limits(batch, at, self.network_rules or NetworkRules())

        email = (k == 0) & (
            (category == vocab.DeclineCategory.HARD.value)
            | (category == vocab.DeclineCategory.ACTION_REQUIRED.value)
        )
        channel = np.where(email, vocab.Channel.EMAIL.value, np.array(None))
        sender = np.where(email, merchant_of_record(p).astype("object"), np.array(None))
        return ActionBatch.build(len(batch), retry_at=at, channel=channel, sender=sender)


class RandomizedLogging(Policy):
    """The simulator's logging policy: explores retry times and channels uniformly at random.

    At each decision it stops with probability ``stop``, otherwise retries after a delay drawn
    uniformly from the whole hours in ``delay_hours`` that the network rules allow; it sends a
    message with probability ``first_message`` at the first decision and ``later_message``
    after, through one of the channels the customer can receive (``reachable_*``), uniformly,
    from the merchant of record — or, with probability ``foreign_sender``, from the other
    party. The retry, channel and sender probabilities are returned apart; attempts and
    messages each log their own.
    """

    name = "randomized_logging"

    def __init__(
        self,
        delay_hours: tuple[int, int] = (1, 168),
        stop: float = 0.05,
        first_message: float = 0.6,
        later_message: float = 0.15,
        network_rules: NetworkRules | None = None,
        foreign_sender: float = 0.0,
    ):
        self.delay_hours = delay_hours
        self.stop = stop
        self.first_message = first_message
        self.later_message = later_message
        self.network_rules = network_rules
        self.foreign_sender = foreign_sender

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        n = len(batch)
        lim = limits(batch, self.network_rules or NetworkRules())
        lo, hi = self.delay_hours
        now = batch.now
        # Whole-hour delays in [lo, hi] that land inside [earliest, window_end].
        first_ok = np.ceil(
            ((lim["earliest_retry_at"] - now) / pd.Timedelta(hours=1)).to_numpy()
        ).clip(lo, None)
        last_ok = np.floor(((lim["window_end"] - now) / pd.Timedelta(hours=1)).to_numpy()).clip(
            None, hi
        )
        options = np.maximum(last_ok - first_ok + 1, 0)
        allowed = (lim["blocked"].to_numpy() == "") & (options > 0)
        go = allowed & (rng.random(n) >= self.stop)
        delay = first_ok + np.floor(rng.random(n) * np.maximum(options, 1))
        retry_at = (now + pd.to_timedelta(np.where(go, delay, 0), unit="h")).where(go)
        p_retry = np.where(
            allowed, np.where(go, (1 - self.stop) / np.maximum(options, 1), self.stop), 1.0
        )

        first = (batch.state["decision_number"] == 0).to_numpy()
        u = rng.random(n)
        # a channel the customer can receive, uniformly; no message where there is none
        channels = np.array([c.value for c in vocab.Channel], dtype=object)
        reach = np.stack(
            [batch.payments[f"reachable_{c}"].to_numpy(dtype=bool) for c in channels], axis=1
        )
        k = reach.sum(axis=1)
        p_msg = np.where(k > 0, np.where(first, self.first_message, self.later_message), 0.0)
        send = u < p_msg
        nth = np.minimum((u / np.where(send, p_msg / np.maximum(k, 1), 1)).astype(int), k - 1)
        pick = np.argmax(np.cumsum(reach, axis=1) > np.maximum(nth, 0)[:, None], axis=1)
        channel = np.where(send, channels[pick], None)
        p_channel = np.where(send, p_msg / np.maximum(k, 1), 1 - p_msg)
        own = merchant_of_record(batch.payments).astype("object").to_numpy()
        other = np.where(own == vocab.Sender.ACCOUNT.value, "platform", "account")
        foreign = np.zeros(n, dtype=bool)
        if self.foreign_sender > 0:  # drawn only when asked: the stream stays the same otherwise
            foreign = send & (rng.random(n) < self.foreign_sender)
        sender = np.where(send, np.where(foreign, other, own), np.full(n, None, dtype=object))
        p_sender = np.where(
            send, np.where(foreign, self.foreign_sender, 1 - self.foreign_sender), 1.0
        )
        return ActionBatch.build(
            n,
            retry_at=retry_at,
            channel=channel,
            sender=sender,
            retry_propensity=p_retry,
            channel_propensity=p_channel,
            sender_propensity=p_sender if self.foreign_sender > 0 else None,
        )


REFERENCE_POLICIES = {
    "no_retry": NoRetry,
    "fixed_schedule": FixedSchedule,
    "stripe_like": StripeLike,
    "rules": DeclineRules,
}
