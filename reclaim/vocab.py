"""Shared vocabulary: the enums and code tables every layer of Reclaim speaks.

Defined once here and imported everywhere (simulator, features, models, serving), so a
charge model or a decline category means the same thing in training and in serving.
Each enum also has a fixed ``pd.CategoricalDtype`` (``*_DTYPE``): LightGBM rejects
pandas 3 string columns, and a category set fixed in code cannot drift between a
training batch and a single payment scored by the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd


class ChargeModel(StrEnum):
    """How a Connect charge is made (see docs/sources.md)."""

    DIRECT = "direct"
    DESTINATION = "destination"
    SEPARATE_CHARGES = "separate_charges"


class Channel(StrEnum):
    """How a customer can be messaged about a failed payment."""

    EMAIL = "email"
    SMS = "sms"
    IN_APP = "in_app"


class Sender(StrEnum):
    """Who a customer message comes from."""

    PLATFORM = "platform"
    ACCOUNT = "account"


class Initiator(StrEnum):
    """Who started a charge attempt: a merchant retry, or the customer paying themselves."""

    MERCHANT = "merchant"
    CUSTOMER = "customer"


class Outcome(StrEnum):
    """The result of one charge attempt."""

    FAILED = "failed"
    SUCCEEDED = "succeeded"


#: The fields of a decline, as Stripe reports them on a charge's outcome, a payment intent's
#: last error and a card error, and as the contract stores them on payments and attempts.
DECLINE_FIELDS = ("decline_code", "advice_code", "network_decline_code", "network_advice_code")


class DeclineCategory(StrEnum):
    """What a decline says about retrying.

    ``hard``: the issuer will never approve this card for this charge; retrying is forbidden.
    ``action_required``: retrying the same card off-session is allowed by the networks but
    cannot work until the customer acts (authenticates) or the card is updated.
    ``soft``: a later retry may succeed.
    """

    HARD = "hard"
    ACTION_REQUIRED = "action_required"
    SOFT = "soft"


class CardBrand(StrEnum):
    VISA = "visa"
    MASTERCARD = "mastercard"
    AMEX = "amex"
    DISCOVER = "discover"
    OTHER = "other"


class Funding(StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"
    PREPAID = "prepaid"
    UNKNOWN = "unknown"


class AdviceCode(StrEnum):
    """Stripe's ``advice_code`` on a decline."""

    TRY_AGAIN_LATER = "try_again_later"
    DO_NOT_TRY_AGAIN = "do_not_try_again"
    CONFIRM_CARD_DATA = "confirm_card_data"


class BillingReason(StrEnum):
    """Stripe's ``invoice.billing_reason``; ``manual`` also covers standalone payment intents."""

    SUBSCRIPTION_CREATE = "subscription_create"
    SUBSCRIPTION_CYCLE = "subscription_cycle"
    SUBSCRIPTION_UPDATE = "subscription_update"
    MANUAL = "manual"


class PaymentObject(StrEnum):
    """The Stripe object a failed payment is recovered through."""

    INVOICE = "invoice"
    PAYMENT_INTENT = "payment_intent"


@dataclass(frozen=True)
class DeclineInfo:
    """What Reclaim knows about one Stripe decline code.

    ``network_code`` is the ISO 8583 response code the issuer most likely sent; the mapping
    from Stripe's decline codes to network codes is Reclaim's inference from public
    network-code tables, not a Stripe statement. ``visa_category`` follows Visa's retry
    categories (1: never retry; 2: cannot approve now; 3: data quality; 4: generic).
    """

    category: DeclineCategory
    network_code: str
    visa_category: int


# Visa category-1 response codes (docs/sources.md): never retried.
VISA_CATEGORY_1_CODES = frozenset(
    {"04", "07", "12", "14", "15", "41", "43", "46", "57", "R0", "R1", "R3"}
)

DECLINE_CODES: dict[str, DeclineInfo] = {
    # soft: the issuer may approve later
    "generic_decline": DeclineInfo(DeclineCategory.SOFT, "05", 2),
    "do_not_honor": DeclineInfo(DeclineCategory.SOFT, "05", 2),
    "insufficient_funds": DeclineInfo(DeclineCategory.SOFT, "51", 2),
    "try_again_later": DeclineInfo(DeclineCategory.SOFT, "19", 2),
    "card_velocity_exceeded": DeclineInfo(DeclineCategory.SOFT, "65", 2),
    "processing_error": DeclineInfo(DeclineCategory.SOFT, "96", 2),
    "issuer_not_available": DeclineInfo(DeclineCategory.SOFT, "91", 2),
    # action required: the networks allow a retry, but it cannot work until the customer
    # authenticates or the card is replaced (docs/sources.md)
    "authentication_required": DeclineInfo(DeclineCategory.ACTION_REQUIRED, "1A", 2),
    "expired_card": DeclineInfo(DeclineCategory.ACTION_REQUIRED, "54", 3),
    # hard: never retried
    "fraudulent": DeclineInfo(DeclineCategory.HARD, "59", 2),
    "stolen_card": DeclineInfo(DeclineCategory.HARD, "43", 1),
    "lost_card": DeclineInfo(DeclineCategory.HARD, "41", 1),
    "pickup_card": DeclineInfo(DeclineCategory.HARD, "04", 1),
    "incorrect_number": DeclineInfo(DeclineCategory.HARD, "14", 1),
    "invalid_account": DeclineInfo(DeclineCategory.HARD, "14", 1),
    "transaction_not_allowed": DeclineInfo(DeclineCategory.HARD, "57", 1),
    "do_not_try_again": DeclineInfo(DeclineCategory.HARD, "R0", 1),
}

#: Declines only the customer can clear: a merchant retry off-session cannot succeed until the
#: customer completes 3D Secure on the hosted page (docs/sources.md, Stripe's automatic
#: collection). ``expired_card`` is not here: Stripe's card updater can replace the card without
#: the customer, and the scheduler re-plans on ``payment_method.automatically_updated``.
CUSTOMER_ACTION_CODES = frozenset({"authentication_required"})

#: Mastercard Merchant Advice Codes that forbid any further retry (docs/sources.md).
MASTERCARD_STOP_CODES = frozenset({"03", "21"})

#: Mastercard Merchant Advice Codes 24-30: retry no sooner than this many hours.
MASTERCARD_WAIT_HOURS: dict[str, int] = {
    "24": 1,
    "25": 24,
    "26": 48,
    "27": 96,
    "28": 144,
    "29": 192,
    "30": 240,
}


def lookup(values: pd.Series, mapping: Mapping[str, object], default: object = None) -> np.ndarray:
    """Map each value through a small ``mapping`` (``default`` where absent or null).

    Factorises first, so the dictionary is consulted once per distinct value: this runs on
    millions of rows in the feature pipeline and on every step of a simulator rollout.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = np.array([mapping.get(u, default) for u in uniques] + [default], dtype=object)
    return table[codes]


def decline_categories(
    decline_code: pd.Series,
    advice_code: pd.Series,
    network_decline_code: pd.Series,
    network_advice_code: pd.Series,
) -> pd.Series:
    """Classify declines, one per row, as a :data:`DECLINE_CATEGORY_DTYPE` series.

    Any signal that forbids a retry wins: a hard Stripe code, ``advice_code=do_not_try_again``,
    a Visa category-1 network code, or a Mastercard stop code. A Stripe code Reclaim does not
    know is hard: a retry is never made on a guess that the decline is soft (a Visa
    category-1 decline retried is a breach and a fee). Nulls (no decline) are null.
    """
    present = decline_code.notna().to_numpy()
    base = lookup(decline_code, _CATEGORY_BY_CODE, DeclineCategory.HARD.value)
    hard = present & (
        (advice_code == AdviceCode.DO_NOT_TRY_AGAIN.value).fillna(False).to_numpy(dtype=bool)
        | network_decline_code.isin(list(VISA_CATEGORY_1_CODES)).to_numpy(dtype=bool)
        | network_advice_code.isin(list(MASTERCARD_STOP_CODES)).to_numpy(dtype=bool)
    )
    out = np.where(hard, DeclineCategory.HARD.value, np.where(present, base, np.array(None)))
    return pd.Series(pd.Categorical(out, dtype=DECLINE_CATEGORY_DTYPE), index=decline_code.index)


_CATEGORY_BY_CODE: dict[str, object] = {k: v.category.value for k, v in DECLINE_CODES.items()}


def decline_category(
    decline_code: str | None,
    advice_code: str | None,
    network_decline_code: str | None,
    network_advice_code: str | None,
) -> str | None:
    """:func:`decline_categories` for one decline (the API's path for a few decisions)."""
    if decline_code is None:
        return None
    if (
        advice_code == AdviceCode.DO_NOT_TRY_AGAIN.value
        or network_decline_code in VISA_CATEGORY_1_CODES
        or network_advice_code in MASTERCARD_STOP_CODES
    ):
        return DeclineCategory.HARD.value
    return str(_CATEGORY_BY_CODE.get(decline_code, DeclineCategory.HARD.value))


def _dtype(enum: type[StrEnum]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype([m.value for m in enum], ordered=False)


CHARGE_MODEL_DTYPE = _dtype(ChargeModel)
CHANNEL_DTYPE = _dtype(Channel)
SENDER_DTYPE = _dtype(Sender)
INITIATOR_DTYPE = _dtype(Initiator)
OUTCOME_DTYPE = _dtype(Outcome)
DECLINE_CATEGORY_DTYPE = _dtype(DeclineCategory)
CARD_BRAND_DTYPE = _dtype(CardBrand)
FUNDING_DTYPE = _dtype(Funding)
ADVICE_CODE_DTYPE = _dtype(AdviceCode)
BILLING_REASON_DTYPE = _dtype(BillingReason)
PAYMENT_OBJECT_DTYPE = _dtype(PaymentObject)
