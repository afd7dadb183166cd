"""The whole policy's value on later payments: every retry it would make, every message it
would send, over the whole window — by rolling it out through the retry-time model.

Estimator: a model-based rollout (the g-formula, "direct method" for sequential decisions).
Each later payment starts at its first failure; at each decision the policy acts (through
the network rules, as it would deployed), the retry model gives the chance that its retry
succeeds, and the payment goes on to the next decision as if that retry failed, until the
policy stops retrying, the window ends or the customer pays by themselves. A payment's value
is the chance that one of its retries succeeds, ``1 − Π(1 − p_k)``, plus, if its customer
paid by themselves, the chance that none did first. The history's own behaviour is valued
the same way (:class:`LoggedSchedule`: each payment's logged retries at their logged
times), so the two are compared payment by payment, on the same model, and what the model
gets wrong in the same way for both cancels in the difference.

Why this estimator: a platform's own export usually comes from a fixed schedule, whose
probability of any other retry time is 0, so importance weighting cannot value another
schedule at all. A model can, where the history shows comparable decisions
(``training.support`` keeps the policy there). Its assumptions, stated in every run:

- no hidden confounding: the export's features explain who got which retry time;
- the retry model is right about retry times within the history's support (its calibration
  on the later retries is reported next to the estimate);
- a failed retry declines as the payment's first failure did (the simulator's rule too);
- a customer who paid by themselves in the history pays at the same time under any policy
  (retries after it do not happen, and it counts as recovered), and one whose payment a
  retry recovered would not have paid by themselves: so the rollout of the history's own
  schedule reproduces the history's recovery rate when the model is right (reported next to
  the estimate: the model check);
- messages count only through what they change of the next retry's chance and, above, of
  nothing else (their value at the first failure is measured separately, doubly robust, by
  ``first_message_ope``).

Its interval is over payments only (paired differences, normal approximation): it does not
include the model's own error, which the calibration check is there to expose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reclaim import contract, vocab
from reclaim.features.accounts import AccountHistory
from reclaim.features.candidates import retry_features
from reclaim.features.decisions import decision_features
from reclaim.models.retry import RetryTimeModel
from reclaim.models.timing import TimingEffect
from reclaim.policy import ActionBatch, DecisionBatch, DecisionRandom, Policy, Uniforms
from reclaim.rules import NetworkRules, enforce
from reclaim.training import ope

#: The retry features along which the gate's world may not lower a retry's chance (+1: not
#: lower as it grows; -1: not lower as it shrinks): time alone does not make a retry worse,
#: failing does (the decision's number and retries left stay free). A retry model fitted
#: freely gives a later retry a lower chance at the same decision number, which in a model
#: rollout makes any schedule that waits look worse (``benchmarks/gate_rollout.py``).
TIME_DIRECTION = {
    "retry_hours_since_failure": 1,
    "hours_since_failure": 1,
    "delay_hours": 1,
    "hours_to_window_end": -1,
}
#: No rollout goes past this many decisions (a 30-day window at the rules' minimum gaps is
#: far fewer; this only stops a policy that never stops).
MAX_DECISIONS = 40
ROLLOUT_STREAM = "whole-policy/"


class LoggedSchedule(Policy):
    """The history's own retries, replayed: at a payment's k-th decision, its k-th logged
    merchant retry, at the logged time. Where the history stops because the payment was
    recovered (by that retry or by its customer), what it would have done next is not in the
    data: the history's median delay at that decision number (``fallback_hours``, from the
    training retries) stands in for it, up to the last decision number it shows. Where the
    history stopped retrying a payment that stayed unpaid, the replay stops too. Sends no
    message: the logged messages are already in the rollout's history."""

    name = "history"

    def __init__(self, tables: contract.ContractTables, fallback_hours: pd.Series):
        a = tables.attempts
        retries = a[(a["initiator"] == vocab.Initiator.MERCHANT) & (a["attempt_number"] > 0)]
        self._ids = pd.Index(tables.payments["payment_id"].astype("object"))
        row = self._ids.get_indexer(retries["payment_id"].astype("object"))
        number = retries["attempt_number"].to_numpy(dtype=int) - 1
        width = int(number.max()) + 1 if len(number) else 0
        self._times = np.full((len(self._ids), max(width, 1)), np.datetime64("NaT", "us"))
        at = retries["attempted_at"].to_numpy(dtype="datetime64[us]")
        keep = row >= 0
        self._times[row[keep], number[keep]] = at[keep]
        paid = a.loc[a["outcome"] == vocab.Outcome.SUCCEEDED, "payment_id"].astype("object")
        self._recovered = self._ids.isin(paid)
        self._fallback = fallback_hours

    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        n = len(batch)
        row = self._ids.get_indexer(batch.payments["payment_id"].astype("object"))
        number = batch.state["decision_number"].to_numpy(dtype=int)
        inside = (row >= 0) & (number < self._times.shape[1])
        logged = np.full(n, np.datetime64("NaT", "us"))
        logged[inside] = self._times[row[inside], number[inside]]
        wait = self._fallback.reindex(number).to_numpy(dtype=float)
        go_on = (row >= 0) & self._recovered[np.maximum(row, 0)] & np.isfinite(wait)
        after = batch.now.to_numpy(dtype="datetime64[us]") + (np.nan_to_num(wait) * 3600e6).astype(
            "timedelta64[us]"
        )
        at = np.where(~np.isnat(logged), logged, np.where(go_on, after, np.datetime64("NaT")))
        return ActionBatch.build(n, retry_at=pd.Series(pd.DatetimeIndex(at).tz_localize("UTC")))


def fallback_delays(support: pd.DataFrame) -> pd.Series:
    """The history's median delay (hours) at each decision number, from
    :meth:`training.prepared.RetryRows.support`: what :class:`LoggedSchedule` does after a
    logged recovery."""
    return support.groupby("decision_number")["delay_hours"].median()


@dataclass
class Rollout:
    """A policy rolled out through the retry model over a set of payments."""

    value: np.ndarray  # per payment: the chance it is recovered (by a retry, or its customer)
    retries: np.ndarray  # per payment: expected retries (each counted while still unpaid)
    gaps: np.ndarray  # hours from each decision to the retry the policy chose there

    @property
    def median_gap(self) -> float:
        return float(np.median(self.gaps)) if len(self.gaps) else float("nan")


def customer_paid_at(payments: pd.DataFrame, attempts: pd.DataFrame) -> np.ndarray:
    """When each payment's customer paid by themselves in the history (datetime64[us], NaT
    where they did not)."""
    paid = attempts[
        (attempts["initiator"] == vocab.Initiator.CUSTOMER)
        & (attempts["outcome"] == vocab.Outcome.SUCCEEDED)
    ]
    first = paid.groupby("payment_id", observed=True)["attempted_at"].min()
    at = first.reindex(payments["payment_id"].astype("object").to_numpy())
    return contract.utc(at.reset_index(drop=True), pd.RangeIndex(len(payments))).to_numpy(
        dtype="datetime64[us]"
    )


def rollout(
    policy: Policy,
    payments: pd.DataFrame,
    messages: pd.DataFrame,
    retry_model: RetryTimeModel,
    accounts: AccountHistory,
    customer_paid: np.ndarray | None = None,
    rules: NetworkRules | None = None,
    on_step: Callable[[int, int], None] | None = None,
    timing: TimingEffect | None = None,
) -> Rollout:
    """Roll ``policy`` out over ``payments`` (contract rows, each from its first failure),
    with ``messages`` already sent (the history's, for :class:`LoggedSchedule`; none for a
    policy that sends its own) and the customers paying by themselves at ``customer_paid``
    (:func:`customer_paid_at`; None: none does). Each retry succeeds with the retry model's
    chance, shifted by ``timing`` (``models.timing``: what the run measured of local time
    beyond the model) where given. See the module for what is assumed."""
    rules = rules or NetworkRules()
    pay = payments.reset_index(drop=True)
    n = len(pay)
    never = np.full(n, np.datetime64("NaT", "us"))
    customer = never if customer_paid is None else np.asarray(customer_paid, "datetime64[us]")
    columns = list(retry_model.feature_names_in_)
    attempts = contract.first_failures(pay)
    sent = contract.conform(contract.MESSAGES, messages)
    now = pay["failed_at"].to_numpy(dtype="datetime64[us]").copy()  # a view otherwise
    unpaid, value, retries = np.ones(n), np.zeros(n), np.zeros(n)
    active = np.ones(n, dtype=bool)
    gaps: list[np.ndarray] = []
    for step in range(MAX_DECISIONS):
        rows = np.flatnonzero(active)
        if on_step is not None:
            on_step(step, len(rows))
        if len(rows) == 0:
            break
        when = pd.Series(pd.DatetimeIndex(now[rows]).tz_localize("UTC"))
        batch = DecisionBatch.from_history(pay.iloc[rows], attempts, sent, when)
        draws = DecisionRandom(batch.payments["payment_id"], batch.now, ROLLOUT_STREAM)
        action = enforce(batch, policy.act(batch, draws), rules)
        message = action.channel.notna().to_numpy()
        if message.any():
            new = pd.DataFrame(
                {
                    "message_id": [f"rollout_{p}_{step}" for p in batch.payments["payment_id"]],
                    "payment_id": batch.payments["payment_id"].to_numpy(),
                    "sent_at": batch.now.array,
                    "channel": action.channel.astype("object").to_numpy(),
                    "sender": action.sender.astype("object").to_numpy(),
                    "policy": policy.name,
                    "propensity": action.channel_propensity,
                }
            )[message]
            sent = contract.concat(
                [sent, contract.conform(contract.MESSAGES, new)], contract.MESSAGES
            )
        retry_at = action.retry_at.to_numpy(dtype="datetime64[us]")
        # the customer paid first: no retry after that (their payment is counted at the end)
        retry = ~np.isnat(retry_at) & (np.isnat(customer[rows]) | (retry_at < customer[rows]))
        active[rows[~retry]] = False
        if not retry.any():
            continue
        idx, sub = rows[retry], batch.subset(retry)
        at = action.retry_at[retry].reset_index(drop=True)
        x = retry_features(sub, decision_features(sub, accounts, rules), at)
        p = retry_model.predict_proba(x[columns])[:, 1]
        if timing is not None:
            p = timing.apply(p, x["retry_local_hour"].to_numpy(), x["retry_is_weekend"].to_numpy())
        value[idx] += unpaid[idx] * p
        retries[idx] += unpaid[idx]
        unpaid[idx] *= 1.0 - p
        gaps.append(x["delay_hours"].to_numpy(dtype=float))
        failed = contract.first_failures(pay.iloc[idx])
        failed["attempt_number"] = sub.state["decision_number"].to_numpy() + 1
        failed["attempted_at"] = at.array
        attempts = contract.concat([attempts, failed], contract.ATTEMPTS)
        now[idx] = at.to_numpy(dtype="datetime64[us]")
    value += unpaid * ~np.isnat(customer)
    return Rollout(value, retries, np.concatenate(gaps) if gaps else np.array([]))


@dataclass
class WholePolicyValue:
    """The whole policy against the history's own schedule, on the same later payments."""

    policy: float
    history: float
    uplift: ope.Estimate  # paired: policy − history, with its 95% interval
    payments: int
    policy_median_gap: float
    history_median_gap: float
    policy_retries: float  # expected retries per payment
    history_retries: float


def compare(policy: Rollout, history: Rollout) -> WholePolicyValue:
    """:class:`WholePolicyValue` of two rollouts over the same payments."""
    return WholePolicyValue(
        policy=float(policy.value.mean()),
        history=float(history.value.mean()),
        uplift=ope.mean_estimate(policy.value - history.value),
        payments=len(policy.value),
        policy_median_gap=policy.median_gap,
        history_median_gap=history.median_gap,
        policy_retries=float(policy.retries.mean()),
        history_retries=float(history.retries.mean()),
    )
