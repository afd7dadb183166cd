"""The simulator's ground truth: how likely a retry or a message is to recover a payment.

These functions read hidden state. The environment and the oracle call them; nothing a
policy or a model sees is computed from them, except the logged outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from reclaim import timeutil, vocab
from reclaim.policy import merchant_of_record
from reclaim.simulator.marketplace import Marketplace

_DAY = np.timedelta64(1, "D")
_FRIDAY_EPOCH = np.datetime64("1970-01-02", "D")  # a Friday


def last_payday(local: np.ndarray, cycle: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """The latest payday at or before each naive local time, at local midnight.

    ``monthly``: the 1st; ``semimonthly``: the 15th and the month's last day; ``biweekly``:
    every other Friday, ``phase`` choosing which.
    """
    day = local.astype("datetime64[D]")
    month_start = local.astype("datetime64[M]").astype("datetime64[D]")
    next_month = (local.astype("datetime64[M]") + 1).astype("datetime64[D]")
    dom = (day - month_start).astype(int) + 1
    is_last = day == next_month - 1
    fifteenth = month_start + 14
    semi = np.where(is_last, day, np.where(dom >= 15, fifteenth, month_start - 1))
    since_friday = (day - _FRIDAY_EPOCH).astype(int)
    friday = day - (since_friday % 7)
    weeks = ((friday - _FRIDAY_EPOCH).astype(int) // 7) % 2
    biweekly = np.where(weeks == phase, friday, friday - 7)
    out = np.where(
        cycle == "monthly", month_start, np.where(cycle == "semimonthly", semi, biweekly)
    )
    return out.astype("datetime64[us]")


_RETRY_PAYMENT_COLUMNS = ["failed_at", "decline_code", "amount", "card_funding"]
_RETRY_HIDDEN_COLUMNS = [
    "true_timezone",
    "failed_local",
    "category",
    "latent_r",
    "hold_hours",
    "pay_cycle",
    "biweekly_phase",
    "funds_window_days",
    "funds_never",
    "usd_per_minor",
    "card_update_hours",
    "b2b",
    "quality",
]


def retry_success_probability(
    market: Marketplace, rows: np.ndarray, at: pd.Series, retry_number: np.ndarray
) -> np.ndarray:
    """The true probability that retry number ``retry_number`` (1, 2, …) at ``at`` succeeds.

    Parameters
    ----------
    rows
        Positions of the payments in ``market``.
    at
        UTC retry times, one per row.
    retry_number
        Which merchant retry this is (the first retry is 1).
    """
    return attempt_probability(market, retry_odds(market, rows, at), retry_number)


def attempt_probability(
    market: Marketplace, odds: np.ndarray, retry_number: np.ndarray | int
) -> np.ndarray:
    """Retry number ``retry_number``'s success probability from its :func:`retry_odds`: each
    earlier failed retry lowers it by ``attempt_decay``, and it never exceeds ``max_success``."""
    cfg = market.config
    decay = cfg.attempt_decay ** (np.asarray(retry_number) - 1)
    return np.clip(odds * decay, 0.0, cfg.max_success)


def retry_odds(market: Marketplace, rows: np.ndarray, at: pd.Series | np.ndarray) -> np.ndarray:
    """A first retry's success chance at ``at`` before the cap on success: the payment's
    state at that time (the issuer's score, a hold, funds, the card updater) times the
    local hour, weekday, funding and business multipliers. :func:`attempt_probability`
    turns it into the probability of any retry number.

    ``at``: aware UTC times, one per row of ``rows`` (gives one chance per row); or an
    ``(n, k)`` array of naive UTC ``datetime64`` times, ascending along each row, ``k``
    per row of ``rows`` (gives an ``(n, k)`` array).
    """
    cfg = market.config
    rows = np.asarray(rows)
    grid = not isinstance(at, pd.Series)
    if isinstance(at, pd.Series):
        t = at.to_numpy(dtype="datetime64[us]")
    else:
        t = np.asarray(at, dtype="datetime64[us]")

    def per_row(v: np.ndarray) -> np.ndarray:
        return v[rows][:, None] if grid else v[rows]

    p = {k: per_row(v) for k, v in market.arrays("payments", _RETRY_PAYMENT_COLUMNS).items()}
    h = {k: per_row(v) for k, v in market.arrays("hidden", _RETRY_HIDDEN_COLUMNS).items()}
    hours = (t - p["failed_at"]) / np.timedelta64(1, "h")
    days = hours / 24.0
    if isinstance(at, pd.Series):
        zones = pd.Series(h["true_timezone"], dtype=object)
        local = timeutil.local_times(pd.Series(at.array), zones).to_numpy(dtype="datetime64[us]")
    else:
        local = timeutil.local_grid(t, h["true_timezone"][:, 0])
    failure_local = h["failed_local"]
    code = p["decline_code"]
    category = h["category"]

    base = h["latent_r"] * (1.0 - 0.5 * np.exp(-days / cfg.generic_ramp_days))
    hold = np.isin(code, ["try_again_later", "card_velocity_exceeded"])
    lo, hi = cfg.hold_success
    base = np.where(hold, np.where(hours >= h["hold_hours"], hi, lo), base)

    funds = code == "insufficient_funds"
    if funds.any():
        payday = last_payday(local, h["pay_cycle"], h["biweekly_phase"])
        funded = (
            (payday > failure_local)
            & ((local - payday) / _DAY < h["funds_window_days"])
            & ~h["funds_never"].astype(bool)
        )
        usd = p["amount"] * h["usd_per_minor"]
        amount_factor = np.clip(1.0 - cfg.amount_elasticity * np.log(usd / 30.0), 0.5, 1.1)
        f_lo, f_hi = cfg.funds_success
        base = np.where(funds, np.where(funded, f_hi * amount_factor, f_lo), base)

    base = np.where(
        np.isin(code, ["processing_error", "issuer_not_available"]), cfg.processing_success, base
    )
    base = np.where(
        code == "expired_card",
        np.where(hours >= h["card_update_hours"], cfg.updated_card_success, 0.0),
        base,
    )
    base = np.where(code == "authentication_required", 0.0, base)
    base = np.where(category == vocab.DeclineCategory.HARD.value, 0.0, base)

    hour = (local - local.astype("datetime64[D]")) / np.timedelta64(1, "h")
    night = (hour >= cfg.night_hours[0]) & (hour < cfg.night_hours[1])
    business = (hour >= cfg.business_hours[0]) & (hour < cfg.business_hours[1])
    mult = np.where(
        night,
        cfg.hour_multiplier["night"],
        np.where(business, cfg.hour_multiplier["business"], cfg.hour_multiplier["other"]),
    )
    debit = p["card_funding"] == vocab.Funding.DEBIT.value
    mult = mult * np.where(debit & (hour < 2), cfg.debit_midnight_multiplier, 1.0)
    dow = ((local.astype("datetime64[D]") - _FRIDAY_EPOCH).astype(int) + 4) % 7  # Monday = 0
    mult = mult * np.where(dow >= 5, cfg.weekend_multiplier, 1.0)
    funding = vocab.lookup(
        pd.Series(p["card_funding"].ravel(), dtype=object), cfg.funding_multiplier, 1.0
    ).astype(float)
    funding = funding[:, None] if grid else funding
    mult = mult * funding * np.where(h["b2b"].astype(bool), cfg.b2b_multiplier, 1.0)
    return base * mult * h["quality"]


def prior_retry_odds(
    draws: Sequence[Marketplace],
) -> Callable[[Marketplace, np.ndarray, np.ndarray], np.ndarray]:
    """:func:`retry_odds` as a planner that knows the simulator but no payment's hidden retry
    state sees it: the mean over ``draws`` of the marketplace with that state drawn again
    (``marketplace.redraw_retry_state``). It still knows the rest of the hidden truth that
    moves a retry's chance (the account's quality, the customer's true time zone, a
    business card), so it bounds what planning alone could gain; the market it is asked
    about is not read."""

    def odds(market: Marketplace, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
        return np.mean([retry_odds(d, rows, at) for d in draws], axis=0)

    return odds


def prior_message_effect(
    draws: Sequence[Marketplace],
) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """:func:`message_effect` as a planner that knows each account's customers but not the
    customer sees it: the mean chance of a reply and of a cancellation over ``draws`` (the
    marketplace with each customer's segment drawn again from its account's mix,
    ``marketplace.redraw_customer_state``); the market it is asked about is not read."""

    def effect(
        market: Marketplace,
        rows: np.ndarray,
        at: pd.Series,
        channel: np.ndarray,
        sender: np.ndarray,
        earlier_messages: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        each = [message_effect(d, rows, at, channel, sender, earlier_messages) for d in draws]
        return np.mean([r for r, _ in each], axis=0), np.mean([c for _, c in each], axis=0)

    return effect


def response_decay(days: np.ndarray, market: Marketplace) -> np.ndarray:
    """Relative effect of a message sent ``days`` after the failure (1 at day 0)."""
    curve = market.config.response_decay
    x = np.array(sorted(curve))
    y = np.array([curve[k] for k in x])
    return np.interp(days, x, y) / y[0]


def message_effect(
    market: Marketplace,
    rows: np.ndarray,
    at: pd.Series,
    channel: np.ndarray,
    sender: np.ndarray,
    earlier_messages: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The true chance that a message makes the customer pay, and that it makes them cancel.

    Returns ``(respond, cancel)`` probabilities per row.
    """
    cfg = market.config
    p = market.payments.iloc[rows]
    h = market.hidden.iloc[rows]
    days = timeutil.hours_between(pd.Series(at.to_numpy(), index=p.index), p["failed_at"]) / 24.0
    segment = h["segment"].to_numpy()
    base = np.zeros(len(rows))
    for seg, by_channel in cfg.response_base.items():
        for ch, value in by_channel.items():
            base[(segment == seg) & (channel == ch)] = value
    base = np.where(
        (channel == vocab.Channel.IN_APP.value) & ~h["app_active"].to_numpy(), 0.0, base
    )
    for ch in vocab.Channel:  # a message the customer cannot receive does nothing
        base = np.where((channel == ch.value) & ~p[f"reachable_{ch.value}"].to_numpy(), 0.0, base)
    null = np.isin(channel, list(cfg.null_channels))
    base = np.where(null, 0.0, base)
    own = merchant_of_record(p).astype("object").to_numpy()
    base = base * np.where(sender == own, 1.0, cfg.foreign_sender_multiplier)
    respond = base * response_decay(days, market) * cfg.repeat_message_damping**earlier_messages
    cancel = np.where((segment == "backfire") & ~null, cfg.backfire_cancel, 0.0)
    return np.clip(respond, 0.0, 1.0), cancel
