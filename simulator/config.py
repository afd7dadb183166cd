"""Every parameter of the simulated marketplace, each with its source.

A source is a published figure, named by its publisher (``docs/sources.md`` gives each with its
original source), or the word "assumption", when no published figure exists and the value is
Reclaim's choice. Published
recovery figures are vendor numbers, not peer-reviewed: they are treated as ranges.
``docs/simulator.md`` explains how the parameters fit together.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from reclaim.rules import NetworkRules


def param(default: Any, source: str) -> Any:
    """A configuration field with its source recorded in the field's metadata."""
    if isinstance(default, dict | list | tuple):
        return field(default_factory=lambda: default, metadata={"source": source})
    return field(default=default, metadata={"source": source})


# Recurly, 836 businesses 2014-16 (docs/sources.md): share of failures by reason.
RECURLY_DECLINE_MIX = {
    "credit": {
        "generic": 0.517,
        "temporary_hold": 0.255,
        "insufficient_funds": 0.069,
        "fraud_stolen_lost": 0.052,
        "invalid_number": 0.017,
        "invalid_transaction": 0.015,
        "other": 0.063,
    },
    "debit": {
        "generic": 0.378,
        "temporary_hold": 0.101,
        "insufficient_funds": 0.290,
        "fraud_stolen_lost": 0.060,
        "invalid_number": 0.083,
        "invalid_transaction": 0.015,
        "other": 0.046,
    },
}


@dataclass(frozen=True)
class SimulatorConfig:
    """The simulated marketplace. Money is in USD cents unless a name says otherwise."""

    # --- the marketplace ---------------------------------------------------------------
    start: str = param("2026-01-05", "assumption: any Monday; results do not depend on it")
    period_days: int = param(120, "assumption: first failures spread over four months")
    account_volume_pareto_alpha: float = param(
        1.1, "assumption: heavy-tailed seller volume (a few sellers make most of it)"
    )
    charge_model_mix: dict[str, float] = param(
        {"direct": 0.4, "destination": 0.4, "separate_charges": 0.2}, "assumption"
    )
    on_behalf_of_share: float = param(0.3, "assumption: share of non-direct accounts using it")
    b2b_account_share: float = param(0.35, "assumption")
    platform_fee_rate: float = param(0.10, "assumption: application fee as a share of amount")
    account_quality_sigma: float = param(
        0.25, "assumption: per-account log-scale spread of retry success (customer base quality)"
    )
    # country: (share, {timezone: share}, currency)
    countries: dict[str, tuple[float, dict[str, float], str]] = param(
        {
            "US": (
                0.45,
                {
                    "America/New_York": 0.45,
                    "America/Chicago": 0.30,
                    "America/Denver": 0.07,
                    "America/Los_Angeles": 0.18,
                },
                "usd",
            ),
            "GB": (0.12, {"Europe/London": 1.0}, "gbp"),
            "DE": (0.10, {"Europe/Berlin": 1.0}, "eur"),
            "FR": (0.08, {"Europe/Paris": 1.0}, "eur"),
            "CA": (0.07, {"America/Toronto": 0.6, "America/Vancouver": 0.4}, "cad"),
            "AU": (0.06, {"Australia/Sydney": 1.0}, "aud"),
            "BR": (0.05, {"America/Sao_Paulo": 1.0}, "brl"),
            "IN": (0.04, {"Asia/Kolkata": 1.0}, "inr"),
            "JP": (0.03, {"Asia/Tokyo": 1.0}, "jpy"),
        },
        "assumption: a marketplace selling mostly in North America and Europe",
    )
    usd_per_unit: dict[str, float] = param(
        {
            "usd": 1.0,
            "gbp": 1.27,
            "eur": 1.08,
            "cad": 0.73,
            "aud": 0.66,
            "brl": 0.18,
            "inr": 0.012,
            "jpy": 0.0067,
        },
        "assumption: fixed exchange rates, used only to report revenue in one currency",
    )
    zero_decimal_currencies: tuple[str, ...] = param(("jpy",), "Stripe: JPY has no minor unit")
    timezone_known_share: float = param(
        0.85, "assumption: customers with an address or billing details to derive a timezone"
    )
    card_country_matches_share: float = param(0.95, "assumption")

    # --- customers and payments -------------------------------------------------------
    amount_median_usd: dict[str, float] = param({"b2c": 29.0, "b2b": 120.0}, "assumption")
    amount_log_sigma: float = param(0.9, "assumption: lognormal amounts")
    credit_share: dict[str, float] = param(
        {"b2c": 0.53, "b2b": 0.65}, "Recurly (docs/sources.md): credit/debit B2C 53/47, B2B 65/35"
    )
    prepaid_share_of_debit: float = param(0.06, "assumption")
    card_brand_mix: dict[str, float] = param(
        {"visa": 0.55, "mastercard": 0.33, "amex": 0.08, "discover": 0.04}, "assumption"
    )
    billing_reason_mix: dict[str, float] = param(
        {
            "subscription_cycle": 0.72,
            "subscription_create": 0.08,
            "subscription_update": 0.05,
            "manual": 0.15,
        },
        "assumption: mostly subscription renewals; manual = standalone payment intents",
    )
    pay_cycle_mix: dict[str, float] = param(
        {"monthly": 0.30, "semimonthly": 0.20, "biweekly": 0.50},
        "assumption: biweekly Fridays most common, then monthly (1st), "
        "then semi-monthly (15th and month end)",
    )

    # --- declines ---------------------------------------------------------------------
    decline_mix: dict[str, dict[str, float]] = param(
        RECURLY_DECLINE_MIX, "Recurly decline mix by funding (docs/sources.md)"
    )
    decline_codes_by_reason: dict[str, dict[str, float]] = param(
        {
            "generic": {"generic_decline": 0.6, "do_not_honor": 0.4},
            "temporary_hold": {"try_again_later": 0.6, "card_velocity_exceeded": 0.4},
            "insufficient_funds": {"insufficient_funds": 1.0},
            "fraud_stolen_lost": {
                "fraudulent": 0.5,
                "stolen_card": 0.2,
                "lost_card": 0.2,
                "pickup_card": 0.1,
            },
            "invalid_number": {"incorrect_number": 0.6, "invalid_account": 0.4},
            "invalid_transaction": {"transaction_not_allowed": 1.0},
            "other": {
                "expired_card": 0.4,
                "authentication_required": 0.3,
                "processing_error": 0.2,
                "do_not_try_again": 0.1,
            },
        },
        "assumption: how Recurly's reasons map onto Stripe decline codes",
    )
    advice_try_again_share: float = param(
        0.7, "assumption: soft declines carrying advice_code=try_again_later"
    )
    mastercard_wait_code_share: float = param(
        0.25, "assumption: Mastercard soft declines carrying a 24-30 wait advice code"
    )
    mastercard_stop_code_share: float = param(
        0.5, "assumption: Mastercard hard declines carrying advice code 03 or 21"
    )

    # --- retry success (hidden truth) -------------------------------------------------
    generic_beta: tuple[float, float] = param(
        (2.0, 8.0), "assumption: per-payment issuer approval chance, mean 0.20"
    )
    generic_ramp_days: float = param(
        1.5, "assumption: issuer risk scores relax over the first days after a decline"
    )
    hold_median_hours: float = param(48.0, "assumption")
    hold_max_days: float = param(15.0, "Recurly 2018: temporary holds last up to 15 days")
    hold_success: tuple[float, float] = param((0.03, 0.75), "assumption: before, after the hold")
    funds_never_share: float = param(
        0.30, "assumption: insufficient-funds customers whose balance never covers it in 30 days"
    )
    funds_window_days: tuple[float, float] = param(
        (2.0, 6.0), "assumption: days after a payday before the balance is spent again (uniform)"
    )
    funds_success: tuple[float, float] = param(
        (0.04, 0.75), "assumption: outside, inside a funded window (Stripe: debit paydays)"
    )
    processing_success: float = param(0.65, "assumption: transient processing errors")
    card_update_share: float = param(
        0.45, "assumption: expired cards refreshed by the networks' account updaters in 30 days"
    )
    card_update_max_days: float = param(12.0, "assumption: update time uniform up to this")
    updated_card_success: float = param(0.85, "assumption")
    night_hours: tuple[int, int] = param((1, 5), "Recurly: decline rate 25-28% from 1 to 4 am")
    business_hours: tuple[int, int] = param((9, 18), "Recurly: decline rate ~18% in business hours")
    hour_multiplier: dict[str, float] = param(
        {"night": 0.90, "business": 1.0, "other": 0.96},
        "Recurly (docs/sources.md): approval (1-0.265)/(1-0.18)=0.90 at night vs business hours",
    )
    debit_midnight_multiplier: float = param(
        1.05, "Stripe: debit succeeds slightly more just after local midnight (size: assumption)"
    )
    weekend_multiplier: float = param(0.95, "assumption")
    funding_multiplier: dict[str, float] = param(
        {"credit": 1.0, "debit": 0.9, "prepaid": 0.8, "unknown": 0.9},
        "Recurly: credit recovers better than debit (size: assumption)",
    )
    b2b_multiplier: float = param(1.1, "Recurly: B2B recovers better than B2C (size: assumption)")
    attempt_decay: float = param(0.80, "assumption: each failed retry lowers the next one's odds")
    amount_elasticity: float = param(
        0.10, "assumption: insufficient funds success falls with log amount"
    )
    max_success: float = param(0.97, "assumption")

    # --- customers' own actions and messages (hidden truth) ----------------------------
    self_cure_share: dict[str, float] = param(
        {"soft": 0.10, "action_required": 0.08, "hard": 0.06},
        "assumption: customers who fix or pay unprompted within 30 days",
    )
    self_cure_mean_days: float = param(6.0, "assumption: exponential")
    segment_mix: dict[str, dict[str, float]] = param(
        {
            "b2c": {"email": 0.28, "sms": 0.22, "any": 0.10, "none": 0.32, "backfire": 0.08},
            "b2b": {"email": 0.50, "sms": 0.05, "any": 0.10, "none": 0.30, "backfire": 0.05},
        },
        "assumption: channel responsiveness segments (docs/sources.md gives no split)",
    )
    account_segment_concentration: float = param(
        8.0, "assumption: Dirichlet concentration of each account's segment mix around the global"
    )
    response_base: dict[str, dict[str, float]] = param(
        {
            "email": {"email": 0.18, "sms": 0.04, "in_app": 0.07},
            "sms": {"email": 0.04, "sms": 0.21, "in_app": 0.07},
            "any": {"email": 0.15, "sms": 0.15, "in_app": 0.15},
            "none": {"email": 0.01, "sms": 0.01, "in_app": 0.01},
            "backfire": {"email": 0.02, "sms": 0.02, "in_app": 0.02},
        },
        "assumption: per-segment response to one message at day 0; on average a day-0 email "
        "causes ~8% to pay, below Baremetrics' observational 13.3% (which counts customers "
        "who would have paid anyway)",
    )
    backfire_cancel: float = param(
        0.30, "assumption: chance a message makes a backfire-segment customer cancel"
    )
    in_app_active_share: float = param(0.6, "assumption: customers who open the app at all")
    sms_reachable_share: float = param(
        0.7, "assumption: customers with a phone number that takes SMS and consented"
    )
    null_channels: tuple[str, ...] = param(
        (), "assumption: none by default; a knob for tests of the policy, not a finding"
    )
    response_decay: dict[float, float] = param(
        {0.0: 13.3, 3.0: 11.5, 7.0: 11.5, 15.0: 4.2, 20.0: 3.8, 30.0: 4.2},
        "Baremetrics (docs/sources.md): recovery per email by days delinquent, relative to day 0",
    )
    repeat_message_damping: float = param(0.5, "assumption: each earlier message halves the next")
    foreign_sender_multiplier: float = param(
        0.8, "assumption: a message from a name the customer does not recognise works less"
    )
    response_delay_mean_hours: float = param(18.0, "assumption: exponential")

    # --- costs, USD cents ---------------------------------------------------------------
    retry_cost_cents: float = param(1.0, "assumption: per-authorization processing fee")
    message_cost_cents: dict[str, float] = param(
        {"email": 0.1, "sms": 0.8, "in_app": 0.01},
        "assumption: typical list prices (an SMS ~$0.008 in the US)",
    )

    # --- limits -----------------------------------------------------------------------
    rules: NetworkRules = param(
        NetworkRules(), "Visa, Mastercard and Stripe retry rules (docs/sources.md; reclaim.rules)"
    )
    max_decisions: int = param(40, "assumption: bound on decision points per payment (> caps)")


def sources(config: SimulatorConfig | None = None) -> dict[str, str]:
    """Each parameter's name mapped to its source."""
    return {f.name: f.metadata.get("source", "") for f in fields(SimulatorConfig)}
