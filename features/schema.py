"""The feature columns and their fixed dtypes, defined once for training and serving.

LightGBM rejects pandas 3 string columns, and a category set learned from a training batch
would differ from the one a single payment in the API produces; so every categorical feature
has a ``pd.CategoricalDtype`` fixed here, with an ``other`` bucket for values outside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim import vocab
from reclaim.features.accounts import COLUMNS as ACCOUNT_COLUMNS

OTHER = "other"


def _categories(values: list[str]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype([*values, OTHER])


DECLINE_CODE = _categories(sorted(vocab.DECLINE_CODES))
NETWORK_DECLINE_CODE = _categories(sorted({i.network_code for i in vocab.DECLINE_CODES.values()}))
NETWORK_ADVICE_CODE = _categories(["01", "02", "03", "04", "21", *vocab.MASTERCARD_WAIT_HOURS])
CURRENCY = _categories(
    [
        "usd",
        "eur",
        "gbp",
        "cad",
        "aud",
        "jpy",
        "brl",
        "inr",
        "mxn",
        "chf",
        "sek",
        "nok",
        "dkk",
        "pln",
        "nzd",
        "sgd",
        "hkd",
    ]
)
COUNTRY = _categories(
    [
        "US",
        "GB",
        "DE",
        "FR",
        "CA",
        "AU",
        "BR",
        "IN",
        "JP",
        "MX",
        "ES",
        "IT",
        "NL",
        "IE",
        "SE",
        "CH",
        "PL",
        "BE",
        "AT",
        "DK",
        "NO",
        "NZ",
        "SG",
        "HK",
    ]
)
CHANNEL_OR_NONE = pd.CategoricalDtype(["none", *[c.value for c in vocab.Channel]])

#: Categorical decision features and their dtypes.
CATEGORICAL: dict[str, pd.CategoricalDtype] = {
    "decline_code": DECLINE_CODE,
    "first_decline_code": DECLINE_CODE,
    "decline_category": vocab.DECLINE_CATEGORY_DTYPE,
    "advice_code": vocab.ADVICE_CODE_DTYPE,
    "network_decline_code": NETWORK_DECLINE_CODE,
    "network_advice_code": NETWORK_ADVICE_CODE,
    "charge_model": vocab.CHARGE_MODEL_DTYPE,
    "object": vocab.PAYMENT_OBJECT_DTYPE,
    "billing_reason": vocab.BILLING_REASON_DTYPE,
    "currency": CURRENCY,
    "card_brand": vocab.CARD_BRAND_DTYPE,
    "card_funding": vocab.FUNDING_DTYPE,
    "card_country": COUNTRY,
}

#: Numeric decision features (float64; NaN where unknown).
NUMERIC: tuple[str, ...] = (
    "visa_category",
    "on_behalf_of",
    "log_amount",
    "timezone_known",
    *ACCOUNT_COLUMNS,
    "local_hour",
    "local_dow",
    "local_dom",
    "days_to_payday",
    "hours_since_failure",
    "decision_number",
    "retries_left",
    "hours_to_window_end",
    "hours_to_earliest_retry",
    "n_email",
    "n_sms",
    "n_in_app",
    "n_messages",
    "hours_since_last_message",
)

DECISION_FEATURES: tuple[str, ...] = (*CATEGORICAL, *NUMERIC)

#: Features of a candidate retry time, added to the decision's.
RETRY_FEATURES: tuple[str, ...] = (
    "delay_hours",
    "retry_local_hour",
    "retry_local_dow",
    "retry_local_dom",
    "retry_days_to_payday",
    "retry_hours_since_failure",
    "retry_is_weekend",
)
#: Features of a candidate message, added to the decision's.
CHANNEL_FEATURES: dict[str, pd.CategoricalDtype] = {"channel": CHANNEL_OR_NONE}


def as_category(values: pd.Series | np.ndarray, dtype: pd.CategoricalDtype) -> pd.Series:
    """Values as ``dtype``; anything outside its categories becomes ``other``, nulls stay null."""
    s = pd.Series(values)
    # Factorise first: a column has a handful of distinct values, so map those, not every row.
    found, uniques = pd.factorize(s, use_na_sentinel=True)
    position = dtype.categories.get_indexer(pd.Index(uniques).astype("object"))
    if OTHER in dtype.categories:
        position = np.where(position < 0, dtype.categories.get_loc(OTHER), position)
    codes = np.append(position, -1)[found]
    return pd.Series(pd.Categorical.from_codes(codes, dtype=dtype), index=s.index)
