"""Synthetic A/B experiments whose true uplift is known, for checking the report's intervals.

The full simulator scores policies; checking that a 95% interval covers the truth 95% of the
time needs hundreds of experiments, so this draws only what the report reads: the simulator's
payments (accounts of very different sizes, several currencies, customers), a recovery
probability per connected account (drawn from a Beta: accounts differ, so the pre-period
predicts the experiment, as CUPED needs), and a treatment that adds ``uplift`` to it.

Assumptions (not published figures): account recovery rates Beta(2, 3) (mean 40%), a recovery
lands 2 hours to 20 days after the failure, half the payments get one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from reclaim import contract
from reclaim.experiment import ExperimentDesign, Segment
from reclaim.simulator.config import SimulatorConfig
from reclaim.simulator.marketplace import generate


@dataclass
class SyntheticExperiment:
    """An experiment's contract tables and assignments, and the truth the report estimates.

    Attributes
    ----------
    tables
        Payments failed before ``start`` (the pre-period) and during the experiment, with
        their attempts and messages.
    assignments
        ``payment_id``, ``unit_id``, ``segment``, ``arm`` for the experiment's payments.
    start
        When the experiment began.
    true_rate_uplift
        Mean over the experiment's payments of P(recovered | treatment) − P(… | control).
    true_revenue_uplift
        The same for recovered revenue per failed payment, in USD.
    fx
        USD per major unit of each currency (the simulator's fixed rates).
    """

    tables: contract.ContractTables
    assignments: pd.DataFrame
    start: pd.Timestamp
    true_rate_uplift: float
    true_revenue_uplift: float
    fx: dict[str, float]


def synthetic_experiment(
    n_accounts: int = 40,
    n_payments: int = 4000,
    uplift: float = 0.03,
    seed: int = 0,
    unit: Literal["customer", "account"] = "customer",
    treatment_share: float = 0.5,
) -> SyntheticExperiment:
    """Draw one experiment; the first half of the payments (by failure time) is the
    pre-period, the second half is assigned to arms by a hash of ``unit`` (``customer`` or
    ``account``) salted with the seed."""
    config = SimulatorConfig()
    payments = generate(n_accounts, n_payments, seed=seed, config=config).payments
    rng = np.random.default_rng(seed + 1_000_003)
    accounts = payments["account_id"].astype("object")
    ids = np.unique(accounts)
    base = dict(zip(ids, np.clip(rng.beta(2.0, 3.0, len(ids)), 0.02, 0.95), strict=True))
    p0 = accounts.map(base).to_numpy(dtype=float)
    start = payments["failed_at"].quantile(0.5)
    in_experiment = (payments["failed_at"] >= start).to_numpy()
    units = (payments["customer_id"] if unit == "customer" else payments["account_id"]).astype(
        "object"
    )
    design = ExperimentDesign(
        name=f"synthetic-{seed}",
        unit=unit,
        segments=[Segment(name="all", treatment_share=treatment_share)],
    )
    treated = in_experiment & (design.assign(units, np.zeros(len(units)))[1] == "treatment")
    p1 = np.minimum(p0 + uplift, 0.98)
    recovered = rng.random(len(payments)) < np.where(treated, p1, p0)

    currency = payments["currency"].astype("object").to_numpy()
    minor = np.where(np.isin(currency, config.zero_decimal_currencies), 1.0, 100.0)
    usd = payments["amount"].to_numpy() / minor * np.vectorize(config.usd_per_unit.get)(currency)
    gain = (p1 - p0)[in_experiment]

    failed_at = payments["failed_at"]
    delay = pd.to_timedelta(rng.uniform(2, 20 * 24, len(payments)), unit="h")
    retries = pd.DataFrame(
        {
            "payment_id": payments["payment_id"].to_numpy(),
            "attempt_number": 1,
            "attempted_at": (failed_at + delay).array,
            "initiator": "merchant",
            "outcome": np.where(recovered, "succeeded", "failed"),
            "decline_code": np.where(recovered, np.array(None), "insufficient_funds"),
            "advice_code": None,
            "network_decline_code": None,
            "network_advice_code": None,
            "policy": np.where(treated, "treatment", "control"),
            "propensity": 1.0,
        }
    )
    messaged = rng.random(len(payments)) < 0.5
    channels = np.array(["email", "sms", "in_app"], dtype=object)
    messages = pd.DataFrame(
        {
            "message_id": [f"msg_{p}" for p in payments["payment_id"][messaged]],
            "payment_id": payments["payment_id"][messaged].to_numpy(),
            "sent_at": (failed_at[messaged] + pd.Timedelta(hours=1)).array,
            "channel": channels[rng.integers(0, 3, int(messaged.sum()))],
            "sender": "platform",
            "policy": np.where(treated[messaged], "treatment", "control"),
            "propensity": 1.0,
        }
    )
    tables = contract.validate(
        {
            "payments": payments,
            "attempts": pd.concat(
                [contract.first_failures(payments), contract.conform(contract.ATTEMPTS, retries)],
                ignore_index=True,
            ),
            "messages": contract.conform(contract.MESSAGES, messages),
        }
    )
    assignments = pd.DataFrame(
        {
            "payment_id": payments["payment_id"][in_experiment].to_numpy(),
            "unit_id": units[in_experiment].to_numpy(),
            "segment": "all",
            "arm": np.where(treated[in_experiment], "treatment", "control"),
        }
    )
    return SyntheticExperiment(
        tables=tables,
        assignments=assignments,
        start=start,
        true_rate_uplift=float(gain.mean()),
        true_revenue_uplift=float((gain * usd[in_experiment]).mean()),
        fx=dict(config.usd_per_unit),
    )
