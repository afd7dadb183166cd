"""Decision features for a few decisions at a time, without pandas: the scoring API's path.

The batch path (:func:`~reclaim.features.decisions.decision_features` on a
:class:`~reclaim.policy.DecisionBatch`) is vectorised for millions of training rows, but pandas
costs tens of milliseconds per call whatever the size, so a single decision would spend
almost all its time in pandas. Here the same features are computed from plain rows (the
request's payment, attempts and messages as dicts with aware datetimes), straight into the
float matrix LightGBM scores — categorical features as their codes in ``features.schema``'s
fixed dtypes, exactly what ``models.lgbm.as_matrix`` makes of the batch path's frame.

Both paths share the rules (``reclaim.rules``), the account aggregates
(:meth:`AccountHistory.at_arrays`), the decline vocabulary and the models;
``tests/test_single_decision.py`` proves the two give the same features, actions,
probabilities and reasons on thousands of random contexts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from reclaim import timeutil, vocab
from reclaim.features import schema
from reclaim.features.accounts import AccountHistory
from reclaim.features.decisions import ZERO_DECIMAL
from reclaim.policy import summarize_row
from reclaim.rules import NetworkRules, limits_row

_HOUR = timedelta(hours=1)
_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US


@cache
def _codes(dtype: pd.CategoricalDtype) -> tuple[dict[str, int], int | None]:
    """Category → code for a fixed dtype, and the code of ``other`` (None if it has none)."""
    cats = [str(c) for c in dtype.categories]
    return {c: i for i, c in enumerate(cats)}, (
        cats.index(schema.OTHER) if schema.OTHER in cats else None
    )


def _code(value: Any, dtype: pd.CategoricalDtype) -> tuple[float, Any]:
    """``value``'s LightGBM code in ``dtype`` (NaN for null) and the value the batch path's
    frame would hold (``other`` for an unknown value where the dtype has it, else null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan, None
    codes, other = _codes(dtype)
    code = codes.get(str(value))
    if code is not None:
        return float(code), str(value)
    if other is not None:
        return float(other), schema.OTHER
    return math.nan, None


@lru_cache(maxsize=4096)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_CALENDAR = ("local_hour", "local_dow", "local_dom", "days_to_payday")


def _retry_extra(
    payments: Sequence[Mapping[str, Any]], now: Sequence[datetime], at_us: np.ndarray
) -> dict[str, np.ndarray]:
    """:data:`schema.RETRY_FEATURES` of retries at ``at_us`` (UTC epoch microseconds, shape
    (n, k): k candidate times for each of n decisions) for ``payments[i]`` decided at
    ``now[i]``; each feature flattened to n × k values, decision by decision. One array
    computation for the whole batch: per decision, only its timezone's offsets."""
    at_us = np.asarray(at_us, dtype=np.int64).reshape(len(payments), -1)
    local = np.concatenate(
        [_local_micros(at_us[i], p["customer_timezone"]) for i, p in enumerate(payments)]
    )
    k = at_us.shape[1]
    now_us = np.repeat(np.array([_micros(t) for t in now], dtype=np.int64), k)
    failed_us = np.repeat(np.array([_micros(p["failed_at"]) for p in payments], np.int64), k)
    flat = at_us.ravel()
    hour, dow, dom, payday = _calendar_array(local)
    return {
        "delay_hours": (flat - now_us) / _HOUR_US,
        "retry_local_hour": hour,
        "retry_local_dow": dow,
        "retry_local_dom": dom,
        "retry_days_to_payday": payday,
        "retry_hours_since_failure": (flat - failed_us) / _HOUR_US,
        "retry_is_weekend": (dow >= 5).astype(float),
    }


def _hours(later: datetime | None, earlier: datetime | None) -> float:
    if later is None or earlier is None:
        return math.nan
    return (later - earlier) / _HOUR


@dataclass
class Decisions:
    """n decisions as plain rows, with their features: what the fast path decides on.

    ``features[i]`` maps every name of :data:`schema.DECISION_FEATURES` to the float LightGBM
    sees; ``shown[i]`` holds the same values as people read them (category names).
    """

    payments: list[Mapping[str, Any]]
    now: list[datetime]
    states: list[dict[str, Any]]
    limits: list[dict[str, Any]]
    constraints: list[Mapping[str, Any] | None]
    features: list[dict[str, float]]
    shown: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.payments)

    def matrix(self, names: Sequence[str], rows: Sequence[int] | None = None) -> np.ndarray:
        """The features ``names`` of ``rows`` (all by default) as a float matrix."""
        rows = range(len(self)) if rows is None else rows
        return np.array([[self.features[i][n] for n in names] for i in rows], dtype=np.float64)

    def retry_rows(
        self, rows: Sequence[int], retry_at: Sequence[datetime]
    ) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """For each decision ``rows[j]`` and a retry at ``retry_at[j]``: its features with
        :data:`schema.RETRY_FEATURES` added (codes, shown values)."""
        if not rows:
            return []
        extra = _retry_extra(
            [self.payments[i] for i in rows],
            [self.now[i] for i in rows],
            np.array([[_micros(at)] for at in retry_at], dtype=np.int64),
        )
        out = []
        for j, i in enumerate(rows):
            one = {name: float(v[j]) for name, v in extra.items()}
            out.append(({**self.features[i], **one}, {**self.shown[i], **one}))
        return out

    def retry_grid(
        self, rows: Sequence[int], delays_hours: np.ndarray, names: Sequence[str]
    ) -> np.ndarray:
        """:func:`~reclaim.features.candidates.expand_retry_times` as a matrix: for each of
        ``rows``, one row per candidate delay, columns ``names``."""
        k, names = len(delays_hours), list(names)
        offsets = (np.asarray(delays_hours, dtype=float) * _HOUR_US).astype(np.int64)
        base = np.array(
            [[self.features[i].get(n, math.nan) for n in names] for i in rows], dtype=np.float64
        ).reshape(len(rows), len(names))
        out = np.repeat(base, k, axis=0)
        if len(rows):
            now_us = np.array([_micros(self.now[i]) for i in rows], dtype=np.int64)
            extra = _retry_extra(
                [self.payments[i] for i in rows],
                [self.now[i] for i in rows],
                now_us[:, None] + offsets[None, :],
            )
            for j, name in enumerate(names):
                if name in extra:
                    out[:, j] = extra[name]
        return out


def _micros(t: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _local_micros(utc_us: np.ndarray, timezone: str | None) -> np.ndarray:
    """Wall-clock microseconds in ``timezone`` of UTC epoch microseconds (each instant's own
    offset, so a daylight-saving change inside the candidates is honoured)."""
    zone = _zone(timezone or timeutil.DEFAULT_TIMEZONE)

    def offset(t: int) -> int:
        # astimezone, not zone.utcoffset(instant): the latter reads the instant's fields as
        # wall time in the zone, which is an hour off around a daylight-saving change
        o = (_EPOCH + timedelta(microseconds=t)).astimezone(zone).utcoffset()
        return (o.days * 86_400 + o.seconds) * 1_000_000 + o.microseconds

    utc_us = np.asarray(utc_us, dtype=np.int64)
    if len(utc_us) > 2:
        # one offset for all when it is the same at both ends and every day between: no zone
        # changes its offset twice within a day, so nothing changed in between (a retry
        # grid's 56 instants then cost 9 conversions, not 56)
        lo, hi = int(utc_us.min()), int(utc_us.max())
        first = offset(lo)
        if all(offset(t) == first for t in [*range(lo + _DAY_US, hi, _DAY_US), hi]):
            return utc_us + first
    return utc_us + np.array([offset(int(t)) for t in utc_us], dtype=np.int64)


def _calendar_array(local_us: np.ndarray) -> tuple[np.ndarray, ...]:
    """Local hour (with minutes), weekday, day of month and days to the likely payday of naive
    local times given as epoch microseconds, as float arrays (:data:`_CALENDAR`)."""
    t = local_us.astype("datetime64[us]")
    day = t.astype("datetime64[D]")
    into = (t - day).astype(np.int64)
    hour = into // 3_600_000_000 + (into % 3_600_000_000 // 60_000_000) / 60.0
    dow = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    month = day.astype("datetime64[M]")
    dom = (day - month.astype("datetime64[D]")).astype(np.int64) + 1
    dim = ((month + 1).astype("datetime64[D]") - month.astype("datetime64[D]")).astype(np.int64)
    to_15 = np.where(dom <= 15, 15 - dom, np.inf)
    payday = np.minimum.reduce([(4 - dow) % 7, to_15, dim - dom, dim - dom + 1])
    return hour.astype(float), dow.astype(float), dom.astype(float), payday.astype(float)


def build(
    payments: Sequence[Mapping[str, Any]],
    attempts: Sequence[Sequence[Mapping[str, Any]]],
    messages: Sequence[Sequence[Mapping[str, Any]]],
    now: Sequence[datetime],
    constraints: Sequence[Mapping[str, Any] | None],
    accounts: AccountHistory,
    network_rules: NetworkRules | None = None,
) -> Decisions:
    """Summaries, limits and features of n decisions.

    Parameters
    ----------
    payments
        Contract payment fields per decision (enum values as strings, aware datetimes).
    attempts, messages
        Each decision's own contract rows (attempt 0 included).
    now
        Decision times (aware, UTC).
    constraints
        Per decision, its account's limits as a dict (``reclaim.account_config.constraints``'
        columns), or None where nothing is restricted.
    accounts
        Account timelines for the account aggregates.
    """
    rules = network_rules or NetworkRules()
    states = [
        summarize_row(p, a, m, t)
        for p, a, m, t in zip(payments, attempts, messages, now, strict=True)
    ]
    limits = [
        limits_row(p, s, t, rules, c)
        for p, s, t, c in zip(payments, states, now, constraints, strict=True)
    ]
    times = np.array([np.datetime64(t.astimezone(UTC).replace(tzinfo=None), "us") for t in now])
    acct = accounts.at_arrays([p["account_id"] for p in payments], times)
    # the decision times' calendar in each customer's zone: one array pass for the batch
    local = [_local_micros(np.array([_micros(t)]), p["customer_timezone"])[0]
             for p, t in zip(payments, now, strict=True)]  # fmt: skip
    calendar = dict(zip(_CALENDAR, _calendar_array(np.array(local, dtype=np.int64)), strict=True))
    features, shown = [], []
    for i, (p, s, lim, t) in enumerate(zip(payments, states, limits, now, strict=True)):
        values = _decision_values(p, s, lim, t)
        for name in calendar:
            values[name] = float(calendar[name][i])
        for name in acct:
            values[name] = float(acct[name][i])
        codes, names = {}, {}
        for name, dtype in schema.CATEGORICAL.items():
            codes[name], names[name] = _code(values[name], dtype)
        numeric = {name: float(values[name]) for name in schema.NUMERIC}
        features.append({**codes, **numeric})
        shown.append({**names, **numeric})
    return Decisions(list(payments), list(now), states, limits, list(constraints), features, shown)


def _decision_values(
    p: Mapping[str, Any], s: Mapping[str, Any], lim: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """The features of one decision but the account aggregates and the local calendar,
    categoricals as values."""
    last = (s["last_decline_code"], s["last_advice_code"], s["last_network_decline_code"],
            s["last_network_advice_code"])  # fmt: skip
    info = vocab.DECLINE_CODES.get(s["last_decline_code"]) if s["last_decline_code"] else None
    minor = 1.0 if p["currency"] in ZERO_DECIMAL else 100.0
    n = {ch.value: int(s[f"n_{ch.value}"]) for ch in vocab.Channel}
    return {
        "decline_code": s["last_decline_code"],
        "first_decline_code": p["decline_code"],
        "decline_category": vocab.decline_category(*last),
        "advice_code": s["last_advice_code"],
        "network_decline_code": s["last_network_decline_code"],
        "network_advice_code": s["last_network_advice_code"],
        "charge_model": p["charge_model"],
        "object": p["object"],
        "billing_reason": p["billing_reason"],
        "currency": p["currency"],
        "card_brand": p["card_brand"],
        "card_funding": p["card_funding"],
        "card_country": p["card_country"],
        "visa_category": float(info.visa_category) if info else math.nan,
        "on_behalf_of": float(bool(p["on_behalf_of"])),
        "log_amount": math.log1p(p["amount"] / minor),
        "timezone_known": float(p["customer_timezone"] is not None),
        "hours_since_failure": _hours(now, p["failed_at"]),
        "decision_number": float(s["decision_number"]),
        "retries_left": float(lim["retries_left"] if lim["blocked"] == "" else 0),
        "hours_to_window_end": _hours(lim["window_end"], now),
        "hours_to_earliest_retry": _hours(lim["earliest_retry_at"], now),
        **{f"n_{ch}": float(v) for ch, v in n.items()},
        "n_messages": float(sum(n.values())),
        "hours_since_last_message": _hours(now, s["last_message_at"]),
    }
