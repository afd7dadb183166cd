"""Decision rows: one per decision point, holding only what was known at that moment.

A decision point comes right after a payment's first failure and after each failed merchant
retry. :func:`decision_points` finds them in contract tables and returns a
:class:`~reclaim.policy.DecisionBatch`; :func:`decision_features` turns any batch into feature
rows. Training, the simulator and the reference policies call them on up to millions of
decisions; the API computes the same features for its few decisions from plain rows
(:mod:`reclaim.features.single`), and ``tests/test_single_decision.py`` proves the two equal on
thousands of random contexts.

Every feature is computed from the payment row (known at the first failure), from its attempts
up to and including the decision time, its messages strictly before it, and account
aggregates strictly before it; ``docs/features.md`` lists them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim import contract, timeutil, vocab
from reclaim.features import schema
from reclaim.features.accounts import AccountHistory
from reclaim.policy import DecisionBatch, summarize_history
from reclaim.rules import NetworkRules, limits, messages_sent

ZERO_DECIMAL = contract.ZERO_DECIMAL
"""Stripe's zero-decimal currencies: amounts are already in major units."""


def decision_points(tables: contract.ContractTables) -> tuple[DecisionBatch, pd.DataFrame]:
    """Every decision point in a history.

    Returns the batch (payments repeated once per decision) and its keys: ``payment_id``,
    ``decision_number`` and ``decided_at``, in the payments table's order, then time order.
    """
    a = tables.attempts
    failed = a[
        (a["outcome"] == vocab.Outcome.FAILED) & (a["initiator"] == vocab.Initiator.MERCHANT)
    ]
    pos = pd.Index(tables.payments["payment_id"]).get_indexer(failed["payment_id"])
    if (pos < 0).any():
        raise ValueError("attempts reference payments missing from the payments table")
    # Payments in their table's order, each payment's decisions in time order (integer sort
    # keys: sorting by the id strings costs several times more).
    order = np.lexsort(
        (
            failed["attempt_number"].to_numpy(),
            failed["attempted_at"].to_numpy(dtype="datetime64[us]"),
            pos,
        )
    )
    failed, pos = failed.iloc[order], pos[order]
    payments = tables.payments.iloc[pos].reset_index(drop=True)
    now = contract.utc(failed["attempted_at"], payments.index)
    batch = DecisionBatch(
        payments, now, summarize_history(payments, tables.attempts, tables.messages, now)
    )
    keys = pd.DataFrame(
        {
            "payment_id": payments["payment_id"],
            "decision_number": batch.state["decision_number"].to_numpy(),
            "decided_at": now,
        }
    )
    return batch, keys


def calendar_features(local: pd.Series, prefix: str) -> dict[str, np.ndarray]:
    """Local hour (with minutes), weekday, day of month and days to the likely payday of
    naive local times, keyed ``<prefix>local_hour`` and so on."""
    ts = pd.DatetimeIndex(local.to_numpy(dtype="datetime64[us]"))
    return {
        f"{prefix}local_hour": (ts.hour + ts.minute / 60.0).to_numpy(dtype=float),
        f"{prefix}local_dow": ts.day_of_week.to_numpy(dtype=float),
        f"{prefix}local_dom": ts.day.to_numpy(dtype=float),
        f"{prefix}days_to_payday": timeutil.days_to_likely_payday(local).to_numpy(),
    }


def major_units(amount: np.ndarray, currency: np.ndarray) -> np.ndarray:
    """Amounts in minor units (Stripe's) as major units of their currencies."""
    minor = np.where(np.isin(currency, list(ZERO_DECIMAL)), 1.0, 100.0)
    return np.asarray(amount, dtype=float) / minor


def log_amount(payments: pd.DataFrame) -> np.ndarray:
    """log(1 + amount in major units of its currency)."""
    currency = payments["currency"].astype("object").to_numpy()
    return np.log1p(major_units(payments["amount"].to_numpy(), currency))


def decision_features(
    batch: DecisionBatch,
    accounts: AccountHistory,
    network_rules: NetworkRules | None = None,
) -> pd.DataFrame:
    """Feature rows for a batch of decisions.

    Parameters
    ----------
    batch
        Decisions, each with its payment row, time and history summary.
    accounts
        Account timelines; only events strictly before each decision are read.
    network_rules
        For the retries left and the earliest allowed retry.

    Returns
    -------
    pd.DataFrame with :data:`schema.DECISION_FEATURES` (categoricals with their fixed dtypes,
    numbers as float64), index of ``batch``.
    """
    p, s, now = batch.payments, batch.state, batch.now
    idx = p.index
    lim = limits(batch, network_rules or NetworkRules())
    category = vocab.decline_categories(
        s["last_decline_code"],
        s["last_advice_code"],
        s["last_network_decline_code"],
        s["last_network_advice_code"],
    )
    visa = vocab.lookup(
        s["last_decline_code"], {k: v.visa_category for k, v in vocab.DECLINE_CODES.items()}, np.nan
    )
    local = timeutil.local_times(now, p["customer_timezone"])
    n_msg = messages_sent(s)

    out: dict[str, object] = {
        "decline_code": schema.as_category(s["last_decline_code"], schema.DECLINE_CODE),
        "first_decline_code": schema.as_category(p["decline_code"], schema.DECLINE_CODE),
        "decline_category": category,
        "advice_code": s["last_advice_code"].astype(vocab.ADVICE_CODE_DTYPE),
        "network_decline_code": schema.as_category(
            s["last_network_decline_code"], schema.NETWORK_DECLINE_CODE
        ),
        "network_advice_code": schema.as_category(
            s["last_network_advice_code"], schema.NETWORK_ADVICE_CODE
        ),
        "charge_model": p["charge_model"].astype(vocab.CHARGE_MODEL_DTYPE),
        "object": p["object"].astype(vocab.PAYMENT_OBJECT_DTYPE),
        "billing_reason": p["billing_reason"].astype(vocab.BILLING_REASON_DTYPE),
        "currency": schema.as_category(p["currency"], schema.CURRENCY),
        "card_brand": p["card_brand"].astype(vocab.CARD_BRAND_DTYPE),
        "card_funding": p["card_funding"].astype(vocab.FUNDING_DTYPE),
        "card_country": schema.as_category(p["card_country"], schema.COUNTRY),
        "visa_category": visa.astype(float),
        "on_behalf_of": p["on_behalf_of"].to_numpy(dtype=float),
        "log_amount": log_amount(p),
        "timezone_known": p["customer_timezone"].notna().to_numpy(dtype=float),
        **{c: v.to_numpy(dtype=float) for c, v in accounts.at(p["account_id"], now).items()},
        **calendar_features(local, ""),
        "hours_since_failure": timeutil.hours_between(now, p["failed_at"]),
        "decision_number": s["decision_number"].to_numpy(dtype=float),
        "retries_left": np.where(lim["blocked"] == "", lim["retries_left"], 0).astype(float),
        "hours_to_window_end": timeutil.hours_between(lim["window_end"], now),
        "hours_to_earliest_retry": timeutil.hours_between(lim["earliest_retry_at"], now),
        "n_email": s["n_email"].to_numpy(dtype=float),
        "n_sms": s["n_sms"].to_numpy(dtype=float),
        "n_in_app": s["n_in_app"].to_numpy(dtype=float),
        "n_messages": n_msg.astype(float),
        "hours_since_last_message": timeutil.hours_between(now, s["last_message_at"]),
    }
    frame = pd.DataFrame(
        {k: (v.reset_index(drop=True) if isinstance(v, pd.Series) else v) for k, v in out.items()}
    )
    frame.index = idx
    return frame[list(schema.DECISION_FEATURES)]


def build_decision_rows(
    tables: contract.ContractTables,
    network_rules: NetworkRules | None = None,
    accounts: AccountHistory | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keys and features of every decision point in ``tables``.

    ``accounts`` defaults to the account timelines of ``tables`` itself (each decision reads
    only their past). Returns ``(keys, features)`` with the same index.
    """
    batch, keys = decision_points(tables)
    accounts = accounts or AccountHistory.from_tables(tables.payments, tables.attempts)
    return keys, decision_features(batch, accounts, network_rules)
