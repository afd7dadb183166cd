"""Card-network and recovery-window rules: hard limits no policy or model output can override.

Sources: docs/sources.md. Visa: category-1 responses are never retried, at most
15 reattempts in 30 days per card (configurable: a third-party table says 20 from April 2026).
Mastercard: Merchant Advice Codes 03/21 stop, 24-30 impose waits, more than 35 attempts in 30
days is excessive. Stripe's ``advice_code=do_not_try_again`` stops. A payment is worked for a
30-day recovery window at most. A decline only the customer can clear
(``vocab.CUSTOMER_ACTION_CODES``: ``authentication_required``) is never retried by the merchant
while it is the latest decline: the customer gets a 3D Secure reminder instead, and a customer's
own attempt (which becomes the latest) is what reopens merchant retries.

:func:`limits` says, per decision, what is allowed; :func:`enforce` applies it to a policy's
actions. Every path that schedules a retry — the simulator, the API, the scheduler — goes
through :func:`enforce`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from reclaim import vocab
from reclaim.policy import (
    ActionBatch,
    DecisionBatch,
    merchant_of_record,
    merchant_of_record_row,
)


@dataclass(frozen=True)
class NetworkRules:
    """The limits, with their sources.

    Attributes
    ----------
    window_days
        Recovery window after the first failure (docs/sources.md; issue 2).
    visa_max_retries
        Visa categories 2-4: at most 15 reattempts in 30 days per card.
    mastercard_max_retries
        Mastercard: more than 35 in 30 days is excessive.
    other_max_retries
        Amex, Discover and others: no published cap found; Visa's is used (assumption).
    min_gap_hours
        No two attempts on a payment less than this apart (assumption: avoids bursts that
        issuers read as card testing).
    try_later_hours
        Mastercard advice code 02 "try later" gives no time; wait this long (assumption).
    """

    window_days: float = 30.0
    visa_max_retries: int = 15
    mastercard_max_retries: int = 35
    other_max_retries: int = 15
    min_gap_hours: float = 1.0
    try_later_hours: float = 24.0

    def max_retries(self, brand: pd.Series) -> np.ndarray:
        """The retry cap for each card brand."""
        b = brand.astype("object").to_numpy()
        return np.where(
            b == vocab.CardBrand.VISA.value,
            self.visa_max_retries,
            np.where(
                b == vocab.CardBrand.MASTERCARD.value,
                self.mastercard_max_retries,
                self.other_max_retries,
            ),
        )


#: Reasons a retry is not allowed, as they appear in decisions and the API.
NO_RETRY_REASONS = (
    "already_recovered",
    "hard_decline",
    "customer_action",
    "network_cap",
    "window_closed",
    "opted_out",
    "account_max_retries",
    "policy",
)


def limits(batch: DecisionBatch, rules: NetworkRules) -> pd.DataFrame:
    """What each decision may do.

    Returns
    -------
    pd.DataFrame, index of ``batch``, with columns
        ``retries_left`` (int), ``earliest_retry_at`` and ``window_end`` (UTC timestamps),
        ``blocked`` (str: one of :data:`NO_RETRY_REASONS`, or "" where a retry is allowed).
    """
    p, s, now = batch.payments, batch.state, batch.now
    window_end = p["failed_at"] + pd.Timedelta(days=rules.window_days)
    retries_left = np.maximum(
        rules.max_retries(p["card_brand"]) - s["decision_number"].to_numpy(), 0
    )

    mac = s["last_network_advice_code"]
    waits = {**vocab.MASTERCARD_WAIT_HOURS, "02": rules.try_later_hours}
    wait_hours = vocab.lookup(mac, waits, 0.0).astype(float)
    wait_hours = np.maximum(wait_hours, rules.min_gap_hours)
    after_last = s["last_attempt_at"] + pd.to_timedelta(wait_hours, unit="h")
    earliest = after_last.where(after_last > now, now)

    blocked = np.full(len(p), "", dtype=object)
    blocked[(earliest > window_end).to_numpy()] = "window_closed"
    c = batch.constraints
    if c is not None:  # the account's own cap, below the networks'
        own_left = c["max_retries"].to_numpy() - s["decision_number"].to_numpy()
        own_capped = own_left < retries_left  # NaN (no account cap) compares False
        retries_left = np.where(own_capped, np.maximum(own_left, 0), retries_left).astype(int)
        blocked[own_capped & (retries_left <= 0)] = "account_max_retries"
    blocked[(retries_left <= 0) & (blocked != "account_max_retries")] = "network_cap"
    blocked[s["last_decline_code"].isin(list(vocab.CUSTOMER_ACTION_CODES)).to_numpy()] = (
        "customer_action"
    )
    blocked[s["ever_hard"].to_numpy()] = "hard_decline"
    if c is not None:
        blocked[c["opted_out"].to_numpy()] = "opted_out"
    blocked[s["recovered"].to_numpy()] = "already_recovered"
    return pd.DataFrame(
        {
            "retries_left": retries_left,
            "earliest_retry_at": earliest,
            "window_end": window_end,
            "blocked": blocked,
        },
        index=p.index,
    )


def max_retries_row(rules: NetworkRules, brand: str) -> int:
    """:meth:`NetworkRules.max_retries` for one card brand."""
    if brand == vocab.CardBrand.VISA.value:
        return rules.visa_max_retries
    if brand == vocab.CardBrand.MASTERCARD.value:
        return rules.mastercard_max_retries
    return rules.other_max_retries


def limits_row(
    payment: Mapping[str, Any],
    state: Mapping[str, Any],
    now: datetime,
    rules: NetworkRules,
    constraints: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`limits` for one decision, from plain values (``reclaim.policy.summarize_row``'s
    state and a ``constraints`` row as a dict): the same rules, in the same order of
    precedence, proven equal by ``tests/test_single_decision.py``."""
    window_end = payment["failed_at"] + timedelta(days=rules.window_days)
    decisions = int(state["decision_number"])
    retries_left = max(max_retries_row(rules, payment["card_brand"]) - decisions, 0)
    mac = state["last_network_advice_code"]
    waits = {**vocab.MASTERCARD_WAIT_HOURS, "02": rules.try_later_hours}
    wait = max(float(waits.get(mac, 0.0)) if mac is not None else 0.0, rules.min_gap_hours)
    after_last = state["last_attempt_at"] + timedelta(hours=wait)
    earliest = after_last if after_last > now else now
    blocked = "window_closed" if earliest > window_end else ""
    own_capped = False
    if constraints is not None:
        own_left = constraints["max_retries"] - decisions  # NaN: no account cap
        own_capped = bool(own_left < retries_left)
        if own_capped:
            retries_left = int(max(own_left, 0))
            if retries_left <= 0:
                blocked = "account_max_retries"
    if retries_left <= 0 and blocked != "account_max_retries":
        blocked = "network_cap"
    if state["last_decline_code"] in vocab.CUSTOMER_ACTION_CODES:
        blocked = "customer_action"
    if state["ever_hard"]:
        blocked = "hard_decline"
    if constraints is not None and constraints["opted_out"]:
        blocked = "opted_out"
    if state["recovered"]:
        blocked = "already_recovered"
    return {
        "retries_left": retries_left,
        "earliest_retry_at": earliest,
        "window_end": window_end,
        "blocked": blocked,
    }


def enforce_row(
    state: Mapping[str, Any],
    limit: Mapping[str, Any],
    now: datetime,
    action: Mapping[str, Any],
    constraints: Mapping[str, Any] | None = None,
    payment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`enforce` for one decision: ``action`` has ``retry_at`` (datetime or None),
    ``channel``, ``sender``, ``reason`` and ``channel_propensity``; returns the enforced action
    (propensities are the policy's own, except a rule's 3D Secure reminder, which is certain).
    ``payment`` (its ``charge_model`` and ``on_behalf_of``) names the reminder's default sender.
    Proven equal to :func:`enforce` by ``tests/test_single_decision.py``."""
    retry_at, reason = action["retry_at"], action.get("reason") or ""
    proposed = retry_at is not None
    blocked = limit["blocked"]
    if proposed and blocked:
        reason, retry_at = blocked, None
    if retry_at is not None and retry_at < limit["earliest_retry_at"]:
        retry_at = limit["earliest_retry_at"]
    if retry_at is not None and retry_at > limit["window_end"]:
        reason, retry_at = "window_closed", None
    if not proposed and reason == "":
        reason = blocked or "policy"
    channel, sender = action["channel"], action["sender"]
    propensity = action.get("channel_propensity", 1.0)
    reachable = {ch.value: True for ch in vocab.Channel}
    if payment is not None:
        reachable = {k: bool(payment.get(f"reachable_{k}", True)) for k in reachable}
    if (
        channel is None
        and blocked == "customer_action"
        and _reminder_due(state)
        and reachable[vocab.Channel.EMAIL.value]
    ):
        channel = vocab.Channel.EMAIL.value
        sender = (
            merchant_of_record_row(payment) if payment is not None else vocab.Sender.PLATFORM.value
        )
        reminder = True
    else:
        reminder = False
    done = bool(state["recovered"]) or now > limit["window_end"]
    done = done or (channel is not None and not reachable.get(channel, True))
    if constraints is not None:
        sent = sum(int(state[f"n_{ch.value}"]) for ch in vocab.Channel)
        allowed = channel is not None and bool(constraints.get(f"allow_{channel}", False))
        done = done or constraints["opted_out"] or sent >= constraints["max_messages"]
        done = done or not allowed
        if constraints["sender"] is not None and channel is not None:
            sender = constraints["sender"]
    if done:
        channel = sender = None
    elif reminder:
        propensity = 1.0
    return {
        **action,
        "retry_at": retry_at,
        "reason": reason,
        "channel": channel,
        "sender": sender,
        "channel_propensity": propensity,
    }


def _reminder_due(state: Mapping[str, Any]) -> bool:
    """No message since the latest decline: the customer has not been asked to act on it."""
    last = state["last_message_at"]
    return last is None or pd.isna(last) or last < state["last_attempt_at"]


def other_processor_allowed(
    payment: Mapping[str, Any], declines: Iterable[str | None], orchestration: bool
) -> bool:
    """Whether a retry of ``payment`` may go to another processor through Stripe
    Orchestration (docs/sources.md): only where the account has Orchestration on, never
    for an ``on_behalf_of`` payment (a Connect feature the retry processor lacks), and never
    once 3D Secure failed (any of the payment's ``declines`` is a customer-action decline)."""
    return (
        bool(orchestration)
        and not bool(payment["on_behalf_of"])
        and not any(d in vocab.CUSTOMER_ACTION_CODES for d in declines)
    )


def messages_sent(state: pd.DataFrame) -> np.ndarray:
    """Messages sent so far per decision, over all channels."""
    return sum(state[f"n_{ch.value}"].to_numpy() for ch in vocab.Channel)


def enforce(batch: DecisionBatch, actions: ActionBatch, rules: NetworkRules) -> ActionBatch:
    """Apply the hard limits to ``actions``.

    A retry that is not allowed at all is dropped, with the reason; one proposed before the
    earliest allowed time (advice-code wait, minimum gap) moves to that time; one after the
    recovery window is dropped. No message is sent about a payment already recovered or past its
    window, nor through a channel the customer cannot receive (``reachable_*``). A decline only
    the customer can clear (``customer_action``) that nobody has messaged
    about since gets a 3D Secure reminder by email from the merchant of record (as Stripe's
    automatic collection sends), where the account allows email; that message is the rule's,
    so its channel propensity is 1. Other propensities stay the policy's own.
    """
    lim = limits(batch, rules)
    retry_at = actions.retry_at.copy()
    reason = actions.reason.copy()
    proposed = retry_at.notna().to_numpy()

    blocked = lim["blocked"].to_numpy()
    drop = proposed & (blocked != "")
    reason[drop] = blocked[drop]
    retry_at[drop] = pd.NaT

    too_early = retry_at.notna() & (retry_at < lim["earliest_retry_at"])
    retry_at[too_early] = lim["earliest_retry_at"][too_early]
    too_late = retry_at.notna() & (retry_at > lim["window_end"])
    reason[too_late] = "window_closed"
    retry_at[too_late] = pd.NaT
    # Without a retry, say which rule forbids one, if any; else it was the policy's choice.
    quiet = ~proposed & (reason == "").to_numpy()
    reason[quiet & (blocked != "")] = blocked[quiet & (blocked != "")]
    reason[quiet & (blocked == "")] = "policy"

    channel, sender = actions.channel.copy(), actions.sender.copy()
    last_msg = batch.state["last_message_at"]
    p = batch.payments
    reminder = (
        (blocked == "customer_action")
        & channel.isna().to_numpy()
        & (last_msg.isna() | (last_msg < batch.state["last_attempt_at"])).to_numpy()
        & p["reachable_email"].to_numpy(dtype=bool)
    )
    channel[reminder] = vocab.Channel.EMAIL.value
    sender[reminder] = merchant_of_record(batch.payments)[reminder]
    # No message about a payment already recovered, or whose recovery window has closed.
    done = batch.state["recovered"].to_numpy() | (batch.now > lim["window_end"]).to_numpy()
    # nor one the customer cannot receive
    chosen = channel.astype("object").to_numpy()
    for ch in vocab.Channel:
        done |= (chosen == ch.value) & ~p[f"reachable_{ch.value}"].to_numpy(dtype=bool)
    c = batch.constraints
    if c is not None:  # nor one its account does not allow; and its account's sender
        sent = messages_sent(batch.state)
        chosen = channel.astype("object").to_numpy()
        allowed = np.zeros(len(chosen), dtype=bool)
        for ch in vocab.Channel:
            allowed |= (chosen == ch.value) & c[f"allow_{ch.value}"].to_numpy()
        done |= c["opted_out"].to_numpy() | (sent >= c["max_messages"].to_numpy()) | ~allowed
        own = c["sender"].to_numpy(dtype=object)
        override = pd.notna(own) & pd.notna(chosen)
        sender[override] = own[override]
    channel[done] = np.nan
    sender[done] = np.nan
    return ActionBatch(
        retry_at,
        channel,
        sender,
        actions.retry_propensity.copy(),
        np.where(reminder & ~done, 1.0, actions.channel_propensity),
        reason,
        None
        if actions.sender_propensity is None
        else np.where(reminder & ~done, 1.0, actions.sender_propensity),
    )
