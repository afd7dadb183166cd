"""Generate a Stripe Connect marketplace's failed payments with their hidden ground truth.

:func:`generate` returns a :class:`Marketplace`: the observable contract rows of each failed
payment, the hidden state that decides how it can be recovered (never shown to a policy but
the oracle), and the random numbers the world draws from, fixed per payment and per decision
so that two policies rolled out on one marketplace meet identical luck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reclaim import contract, timeutil, vocab
from reclaim.features.geo import first_location
from reclaim.simulator.config import SimulatorConfig

SEGMENTS = ("email", "sms", "any", "none", "backfire")
PAY_CYCLES = ("monthly", "semimonthly", "biweekly")


@dataclass
class Marketplace:
    """A simulated marketplace.

    Attributes
    ----------
    config
        The parameters it was drawn from.
    accounts
        One row per connected account: ``account_id``, ``charge_model``, ``on_behalf_of``,
        ``b2b``, ``volume_weight`` and hidden ``quality``.
    payments
        Contract payment rows (observable), index 0..n-1.
    hidden
        Hidden truth per payment, same index: ``reason``, ``true_timezone``, ``b2b``,
        ``pay_cycle``, ``biweekly_phase``, ``quality``, ``latent_r``, ``hold_hours``,
        ``funds_never``, ``funds_window_days``, ``card_update_hours``, ``self_cure_hours``,
        ``segment``, ``app_active``, ``usd_per_minor``, ``failed_local`` (the failure's
        wall-clock time in the customer's true timezone).
    noise
        Uniform draws, each of shape (n, config.max_decisions): ``retry`` (does retry k
        succeed), ``respond``, ``delay`` and ``cancel`` (the message sent at decision k).
    """

    config: SimulatorConfig
    accounts: pd.DataFrame
    payments: pd.DataFrame
    hidden: pd.DataFrame
    noise: dict[str, np.ndarray]
    _arrays: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.payments)

    def arrays(self, frame: str, columns: list[str]) -> dict[str, np.ndarray]:
        """Columns of ``payments`` or ``hidden`` as numpy arrays, converted once and kept:
        the truth reads single rows of them thousands of times in a replay. Timestamps come
        as naive ``datetime64[us]`` (UTC for aware ones), text as objects. A marketplace's
        frames are never changed after it is drawn."""
        out = {}
        for name in columns:
            key = (frame, name)
            if key not in self._arrays:
                values = getattr(self, frame)[name]
                if isinstance(values.dtype, pd.DatetimeTZDtype) or values.dtype.kind == "M":
                    self._arrays[key] = values.to_numpy(dtype="datetime64[us]")
                elif values.dtype.kind in "biuf":
                    self._arrays[key] = values.to_numpy()
                else:
                    self._arrays[key] = values.astype(object).to_numpy()
            out[name] = self._arrays[key]
        return out

    def subset(self, index: np.ndarray) -> Marketplace:
        """The payments at positions ``index``, re-indexed from 0 (accounts unchanged)."""
        return Marketplace(
            self.config,
            self.accounts,
            self.payments.iloc[index].reset_index(drop=True),
            self.hidden.iloc[index].reset_index(drop=True),
            {k: v[index] for k, v in self.noise.items()},
        )


def _hold_hours(config: SimulatorConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """How long each temporary hold lasts: log-normal about its median, capped."""
    return np.minimum(
        config.hold_median_hours * np.exp(rng.normal(0.0, 1.0, n)), config.hold_max_days * 24
    )


def _card_update_hours(config: SimulatorConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """When the card updater delivers a new card (inf: never, within the simulation)."""
    return np.where(
        rng.random(n) < config.card_update_share,
        rng.random(n) * config.card_update_max_days * 24,
        np.inf,
    )


#: The hidden columns that decide a retry's chance beyond what a policy sees and beyond the
#: account: drawn for each payment independently of everything observable.
RETRY_STATE = ("pay_cycle", "biweekly_phase", "funds_never", "funds_window_days",
               "hold_hours", "latent_r", "card_update_hours")  # fmt: skip


def redraw_retry_state(market: Marketplace, seed: int) -> Marketplace:
    """``market`` with its payments' :data:`RETRY_STATE` drawn again from the configuration's
    distributions (as :func:`generate` draws them), everything else the same: one draw of
    what a policy that knows the simulator but no payment's hidden state must allow for."""
    config, n = market.config, len(market)
    rng = np.random.default_rng(seed)
    g_a, g_b = config.generic_beta
    w_lo, w_hi = config.funds_window_days
    hidden = market.hidden.assign(
        pay_cycle=_choice(rng, config.pay_cycle_mix, n),
        biweekly_phase=rng.integers(0, 2, n),
        funds_never=rng.random(n) < config.funds_never_share,
        funds_window_days=rng.uniform(w_lo, w_hi, n),
        hold_hours=_hold_hours(config, rng, n),
        latent_r=rng.beta(g_a, g_b, n),
        card_update_hours=_card_update_hours(config, rng, n),
    )
    return Marketplace(market.config, market.accounts, market.payments, hidden, market.noise)


#: The hidden columns that decide how a customer answers messages and whether they pay
#: unprompted: drawn for each payment from its account's segment mix and the configuration.
CUSTOMER_STATE = ("segment", "self_cure_hours")


def redraw_customer_state(market: Marketplace, seed: int) -> Marketplace:
    """``market`` with its payments' :data:`CUSTOMER_STATE` drawn again (as :func:`generate`
    draws them: the segment from the payment's account's mix), everything else the same: one
    draw of what a policy that knows each account's customers, but not which customer this
    is, must allow for. Whether the customer has the app (``app_active``) stays: the
    platform sees it (``reachable_in_app``)."""
    config = market.config
    rng = np.random.default_rng(seed)
    mix = market.accounts.set_index("account_id").loc[market.payments["account_id"]]
    hidden = market.hidden.assign(
        self_cure_hours=_self_cure_hours(config, rng, market.hidden["category"].to_numpy()),
        segment=_segments(rng, mix[[f"segment_{s}" for s in SEGMENTS]].to_numpy()),
    )
    return Marketplace(market.config, market.accounts, market.payments, hidden, market.noise)


def _self_cure_hours(
    config: SimulatorConfig, rng: np.random.Generator, category: np.ndarray
) -> np.ndarray:
    """When each customer pays unprompted (inf: not within the simulation), by the decline
    category's share."""
    n = len(category)
    share = np.array([config.self_cure_share[c] for c in category])
    return np.where(
        rng.random(n) < share, rng.exponential(config.self_cure_mean_days * 24, n), np.inf
    )


def _segments(rng: np.random.Generator, mix: np.ndarray) -> np.ndarray:
    """Each customer's channel segment, drawn from its account's segment shares (one row of
    ``mix`` per customer, columns in :data:`SEGMENTS` order)."""
    at = (rng.random(len(mix))[:, None] > np.cumsum(mix, axis=1)).sum(axis=1)
    return np.asarray(SEGMENTS, dtype=object)[at.clip(0, len(SEGMENTS) - 1)]


def _choice(rng: np.random.Generator, mix: dict[str, float], size: int) -> np.ndarray:
    keys = list(mix)
    p = np.array([mix[k] for k in keys], dtype=float)
    return np.asarray(keys, dtype=object)[rng.choice(len(keys), size=size, p=p / p.sum())]


def _accounts(
    config: SimulatorConfig, n: int, rng: np.random.Generator, prefix: str
) -> pd.DataFrame:
    charge_model = _choice(rng, config.charge_model_mix, n)
    obo = (charge_model != vocab.ChargeModel.DIRECT.value) & (
        rng.random(n) < config.on_behalf_of_share
    )
    b2b = rng.random(n) < config.b2b_account_share
    volume = rng.pareto(config.account_volume_pareto_alpha, n) + 1.0
    quality = np.exp(rng.normal(0.0, config.account_quality_sigma, n))
    seg = np.empty((n, len(SEGMENTS)))
    for kind, mask in (("b2b", b2b), ("b2c", ~b2b)):
        base = np.array([config.segment_mix[kind][s] for s in SEGMENTS])
        seg[mask] = rng.dirichlet(base * config.account_segment_concentration, mask.sum())
    out = pd.DataFrame(
        {
            "account_id": [f"acct_{prefix}{i:06d}" for i in range(n)],
            "charge_model": charge_model,
            "on_behalf_of": obo,
            "b2b": b2b,
            "volume_weight": volume / volume.sum(),
            "quality": quality,
        }
    )
    for j, s in enumerate(SEGMENTS):
        out[f"segment_{s}"] = seg[:, j]
    return out


def generate(
    n_accounts: int,
    n_payments: int,
    seed: int,
    config: SimulatorConfig | None = None,
) -> Marketplace:
    """Draw a marketplace of ``n_accounts`` accounts and ``n_payments`` failed payments.

    The same arguments always give the same marketplace.
    """
    if n_accounts < 1 or n_payments < 1:
        raise ValueError(
            f"need at least one account and one payment, got {n_accounts}, {n_payments}"
        )
    config = config or SimulatorConfig()
    rng = np.random.default_rng(seed)
    accounts = _accounts(config, n_accounts, rng, f"s{seed}x")
    return draw_payments(config, accounts, n_payments, rng, f"s{seed}x", config.start)


def fresh_payments(
    market: Marketplace, n_payments: int, seed: int, start: str | pd.Timestamp | None = None
) -> Marketplace:
    """New failed payments of the same accounts, after ``market``'s period by default.

    For evaluating a policy trained on ``market``'s history on payments it never saw: same
    sellers (same hidden quality and customer mix), new customers, new ids, later dates.
    """
    if n_payments < 1:
        raise ValueError(f"need at least one payment, got {n_payments}")
    cfg = market.config
    if start is None:
        start = (market.payments["failed_at"].max() + pd.Timedelta(days=1)).normalize()
    rng = np.random.default_rng([seed, 104729])
    return draw_payments(
        cfg,
        market.accounts,
        n_payments,
        rng,
        f"f{seed}x",
        pd.Timestamp(start).strftime("%Y-%m-%d %H:%M:%S"),
    )


def draw_payments(
    config: SimulatorConfig,
    accounts: pd.DataFrame,
    n_payments: int,
    rng: np.random.Generator,
    prefix: str,
    start: str,
) -> Marketplace:
    """Draw ``n_payments`` failed payments of ``accounts`` from ``start`` on.

    Ids start with ``prefix``; the hidden state and the world's noise are drawn with them.
    """
    n_accounts = len(accounts)
    n = n_payments
    acc = rng.choice(n_accounts, size=n, p=accounts["volume_weight"].to_numpy())
    a = accounts.iloc[acc].reset_index(drop=True)
    b2b = a["b2b"].to_numpy()
    kind = np.where(b2b, "b2b", "b2c")

    country_names = list(config.countries)
    country_p = np.array([config.countries[c][0] for c in country_names])
    country = np.asarray(country_names, dtype=object)[
        rng.choice(len(country_names), size=n, p=country_p / country_p.sum())
    ]
    true_tz = np.empty(n, dtype=object)
    currency = np.empty(n, dtype=object)
    for c in country_names:
        mask = country == c
        true_tz[mask] = _choice(rng, config.countries[c][1], int(mask.sum()))
        currency[mask] = config.countries[c][2]
    known = rng.random(n) < config.timezone_known_share
    card_country = np.where(
        rng.random(n) < config.card_country_matches_share,
        country,
        np.asarray(country_names, dtype=object)[rng.integers(0, len(country_names), n)],
    )

    usd_per_unit = np.array([config.usd_per_unit[c] for c in currency])
    minor_per_unit = np.where(np.isin(currency, config.zero_decimal_currencies), 1.0, 100.0)
    median = np.where(b2b, config.amount_median_usd["b2b"], config.amount_median_usd["b2c"])
    amount_usd = median * np.exp(rng.normal(0.0, config.amount_log_sigma, n))
    amount = np.maximum(np.round(amount_usd / usd_per_unit * minor_per_unit), 1).astype("int64")
    fee = np.floor(amount * config.platform_fee_rate).astype("int64")

    credit = rng.random(n) < np.where(b2b, config.credit_share["b2b"], config.credit_share["b2c"])
    prepaid = ~credit & (rng.random(n) < config.prepaid_share_of_debit)
    funding = np.where(credit, "credit", np.where(prepaid, "prepaid", "debit"))
    brand = _choice(rng, config.card_brand_mix, n)
    brand = np.where((brand == "discover") & (card_country != "US"), "visa", brand)

    reason = np.empty(n, dtype=object)
    for fund in ("credit", "debit"):
        mask = credit if fund == "credit" else ~credit
        reason[mask] = _choice(rng, config.decline_mix[fund], int(mask.sum()))
    code = np.empty(n, dtype=object)
    for r, mix in config.decline_codes_by_reason.items():
        mask = reason == r
        code[mask] = _choice(rng, mix, int(mask.sum()))
    info = {k: v for k, v in vocab.DECLINE_CODES.items()}
    category = np.array([info[c].category.value for c in code], dtype=object)
    network_code = np.array([info[c].network_code for c in code], dtype=object)
    advice = np.full(n, None, dtype=object)
    soft = category == vocab.DeclineCategory.SOFT.value
    hard = category == vocab.DeclineCategory.HARD.value
    advice[soft & (rng.random(n) < config.advice_try_again_share)] = "try_again_later"
    advice[hard] = "do_not_try_again"
    advice[np.isin(code, ["expired_card", "incorrect_number"])] = "confirm_card_data"
    mc = brand == "mastercard"
    mac = np.full(n, None, dtype=object)
    wait_codes = np.asarray(list(vocab.MASTERCARD_WAIT_HOURS), dtype=object)
    wait = mc & soft & (rng.random(n) < config.mastercard_wait_code_share)
    mac[wait] = wait_codes[rng.integers(0, len(wait_codes), wait.sum())]
    stop = mc & hard & (rng.random(n) < config.mastercard_stop_code_share)
    mac[stop] = np.where(rng.random(stop.sum()) < 0.5, "03", "21")
    mac[mc & (code == "expired_card")] = "01"

    card_zone = np.array([first_location([], c)[1] for c in card_country], dtype=object)
    billing = _choice(rng, config.billing_reason_mix, n)
    obj = np.where(billing == "manual", "payment_intent", "invoice")
    start_ts = pd.Timestamp(start, tz="UTC")
    failed_at = start_ts + pd.to_timedelta(
        np.round(rng.random(n) * config.period_days * 86400), unit="s"
    )
    order = np.argsort(failed_at.to_numpy(), kind="stable")

    ids = np.arange(n)
    payments = pd.DataFrame(
        {
            "payment_id": np.where(obj == "invoice", "in_", "pi_")
            + np.char.add(prefix, np.char.zfill(ids.astype(str), 8)).astype(object),
            "object": obj,
            "account_id": a["account_id"].to_numpy(),
            "charge_model": a["charge_model"].to_numpy(),
            "on_behalf_of": a["on_behalf_of"].to_numpy(),
            "amount": amount,
            "currency": currency,
            "application_fee_amount": fee,
            "customer_id": np.char.add(f"cus_{prefix}", np.char.zfill(ids.astype(str), 8)).astype(
                object
            ),
            "customer_country": np.where(known, country, np.array(None)),
            # where the customer's address is not known, the platform's records place them by
            # their card's country, as Reclaim's Stripe normalizer does (features.geo)
            "customer_timezone": np.where(known, true_tz, card_zone),
            "card_brand": brand,
            "card_funding": funding,
            "card_country": card_country,
            "billing_reason": billing,
            "failed_at": failed_at,
            "decline_code": code,
            "advice_code": advice,
            "network_decline_code": network_code,
            "network_advice_code": mac,
        }
    )
    payments = contract.conform(contract.PAYMENTS, payments.iloc[order].reset_index(drop=True))

    # --- hidden truth ---------------------------------------------------------------------
    g_a, g_b = config.generic_beta
    window_lo, window_hi = config.funds_window_days
    hold = _hold_hours(config, rng, n)
    update = _card_update_hours(config, rng, n)
    cure = _self_cure_hours(config, rng, category)
    segment = _segments(rng, a[[f"segment_{s}" for s in SEGMENTS]].to_numpy())
    hidden = (
        pd.DataFrame(
            {
                "reason": reason,
                "category": category,
                "true_timezone": true_tz,
                "b2b": b2b,
                "pay_cycle": _choice(rng, config.pay_cycle_mix, n),
                "biweekly_phase": rng.integers(0, 2, n),
                "quality": a["quality"].to_numpy(),
                "latent_r": rng.beta(g_a, g_b, n),
                "hold_hours": hold,
                "funds_never": rng.random(n) < config.funds_never_share,
                "funds_window_days": rng.uniform(window_lo, window_hi, n),
                "card_update_hours": update,
                "self_cure_hours": cure,
                "segment": segment,
                "app_active": rng.random(n) < config.in_app_active_share,
                "usd_per_minor": usd_per_unit / minor_per_unit,
                "kind": kind,
            }
        )
        .iloc[order]
        .reset_index(drop=True)
    )
    hidden["failed_local"] = timeutil.local_times(payments["failed_at"], hidden["true_timezone"])
    shape = (n, config.max_decisions)
    noise = {name: rng.random(shape)[order] for name in ("retry", "respond", "delay", "cancel")}
    # What the platform knows of how to reach each customer (drawn last, so the draws above
    # stay those of earlier versions): a phone for SMS; the app with notifications on, which
    # is the customers who open it.
    payments["reachable_sms"] = (rng.random(n) < config.sms_reachable_share)[order]
    payments["reachable_in_app"] = hidden["app_active"].to_numpy()
    return Marketplace(config, accounts, payments, hidden, noise)
