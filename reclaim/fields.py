"""Pydantic field types for what a database can store and a person meant to send.

Used by the API's request bodies and the account configuration, so that an input the store
could not hold (a NUL, which PostgreSQL refuses in text; a lone surrogate, which no UTF-8
encoder takes; a string longer than its column) or a time no payment can have (year 1, year
9999) is a 422 naming the field, never a 500 from deep inside a write.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, StringConstraints

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
"""No payment Reclaim works on failed before this."""
FUTURE_SLACK = timedelta(days=1)
"""A recorded event may be at most this far ahead of the server's clock (clock skew)."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_TEXT = 255
"""The longest id or text a stored column holds."""


def is_storable(value: str) -> bool:
    """True if every database and encoder can hold ``value`` (no NUL, no lone surrogate)."""
    return _UNSTORABLE.search(value) is None


def storable(value: str) -> str:
    """``value`` if every database and encoder can hold it; else ValueError saying why."""
    bad = _UNSTORABLE.search(value)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "a lone UTF-16 surrogate"
        raise ValueError(f"contains {what} at position {bad.start()}, which cannot be stored")
    return value


def _in_history(value: datetime) -> datetime:
    if value < EARLIEST:
        raise ValueError(f"is before {EARLIEST:%Y-%m-%d}")
    latest = datetime.now(UTC) + FUTURE_SLACK
    if value > latest:
        raise ValueError(f"is in the future (after {latest:%Y-%m-%dT%H:%M:%SZ})")
    return value


Text = Annotated[str, AfterValidator(storable)]
"""Any string a database can store."""
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(storable)
]
"""An id (payment, account, customer, message): 1–255 storable characters."""
PastTime = Annotated[AwareDatetime, AfterValidator(_in_history)]
"""A moment that has happened: from 2000 to a day past the server's clock."""

MAX_AMOUNT = 99_999_999
"""Stripe's largest charge: eight digits of minor units ($999,999.99) in most currencies."""
MAX_AMOUNT_BY_CURRENCY = {"idr": 999_999_999_999}
"""Currencies Stripe allows more digits (twelve for the Indonesian rupiah)."""


CURRENCIES = frozenset(
    """
    aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob bov brl bsd
    btn bwp byn bzd cad cdf che chf chw clf clp cny cop cou crc cuc cup cve czk djf dkk dop
    dzd egp ern etb eur fjd fkp gbp gel ghs gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr
    iqd irr isk jmd jod jpy kes kgs khr kmf kpw krw kwd kyd kzt lak lbp lkr lrd lsl lyd mad
    mdl mga mkd mmk mnt mop mru mur mvr mwk mxn mxv myr mzn nad ngn nio nok npr nzd omr pab
    pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sdg sek sgd shp sle sos srd ssp
    stn svc syp szl thb tjs tmt tnd top try ttd twd tzs uah ugx usd usn uyi uyu uyw uzs ved
    ves vnd vuv wst xaf xcd xcg xof xpf yer zar zmw zwg zwl
    byr eek hrk ltl lvl mro sll std vef zmk
    """.split()
)
"""ISO 4217's currencies, lower case as Stripe writes them: those in use (without the
precious metals and the testing and fund codes, which no card is charged in), and those
retired since 2000 that a payment's history may still hold (the kuna, the leone's old code,
…)."""


def known_currency(value: str) -> str:
    """``value`` if it is an ISO 4217 currency (:data:`CURRENCIES`); else ValueError."""
    if value not in CURRENCIES:
        raise ValueError("not an ISO 4217 currency (three lower-case letters, e.g. 'usd')")
    return value


Currency = Annotated[str, AfterValidator(known_currency)]
"""A three-letter ISO 4217 currency, lower case."""


def max_amount(currency: str) -> int:
    """The largest amount, in minor units, Stripe charges in ``currency``."""
    return MAX_AMOUNT_BY_CURRENCY.get(currency, MAX_AMOUNT)
