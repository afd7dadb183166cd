"""Turn decision requests into actions: the domain code behind ``POST /v1/decisions``.

Builds the decision batch from the request (or from the store, for a payment given by id),
asks the served policy within what each account's configuration allows, applies the network
rules (which no model output overrides), explains the chosen retries, logs every decision,
and returns the API's answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim import contract, timeutil
from reclaim.account_config import constraints
from reclaim.experiment import ExperimentDesign
from reclaim.policy import DecisionBatch, Policy, decision_seed
from reclaim.reference import REFERENCE_POLICIES
from reclaim.rules import NetworkRules, enforce
from reclaim.serving.policy_holder import Loaded
from reclaim.serving.schemas import DecisionOut, DecisionRequest, RetryOut
from reclaim.serving.store import configs, experiments
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.settings import Settings


@dataclass(frozen=True)
class Experiment:
    """An A/B test: ``control`` decides for the units ``design`` puts in the control arm."""

    control: Policy
    design: ExperimentDesign

    @classmethod
    def from_settings(cls, settings: Settings) -> Experiment | None:
        """The experiment the settings ask for, or None; ValueError names an unknown policy."""
        name = settings.experiment_control
        if not name:
            return None
        if name not in REFERENCE_POLICIES:
            raise ValueError(
                f"RECLAIM_EXPERIMENT_CONTROL={name!r} is not a reference policy; "
                f"choose one of {sorted(REFERENCE_POLICIES)}"
            )
        return cls(REFERENCE_POLICIES[name](), settings.experiment_design())


class UnknownPayment(LookupError):
    """A request names a payment the store does not hold."""

    def __init__(self, payment_id: str):
        self.payment_id = payment_id
        super().__init__(f"no payment {payment_id!r} is stored; send its context instead")


def accounts_of(engine: Engine, payment_ids: list[str]) -> dict[str, str]:
    """The connected account of each stored payment among ``payment_ids``."""
    if not payment_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.payments.c.payment_id, t.payments.c.account_id).where(
                t.payments.c.payment_id.in_(payment_ids)
            )
        ).all()
    return {pid: account for pid, account in rows}


def _context(
    requests: list[DecisionRequest], engine: Engine, now: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.Series]:
    """Payments (one row per request), their attempts and messages, and decision times."""
    inline = [r for r in requests if r.payment is not None]
    by_id = [r.payment_id for r in requests if r.payment is None]
    stored = repo.load_contract(engine, by_id) if by_id else None
    if stored is not None:
        missing = set(by_id) - set(stored.payments["payment_id"])
        if missing:
            raise UnknownPayment(sorted(missing)[0])
    frames = {"payments": [], "attempts": [], "messages": []}
    if inline:
        pays = contract.conform(
            contract.PAYMENTS, pd.DataFrame([r.payment.model_dump(mode="python") for r in inline])
        )
        frames["payments"].append(pays)
        frames["attempts"].append(contract.first_failures(pays))
        for name, table, field in (
            ("attempts", contract.ATTEMPTS, "attempts"),
            ("messages", contract.MESSAGES, "messages"),
        ):
            rows = [
                {
                    **item.model_dump(mode="python"),
                    "payment_id": r.payment.payment_id,
                    "policy": None,
                    "propensity": np.nan,
                }
                for r in inline
                for item in getattr(r, field)
            ]
            if rows:  # logged by no policy of Reclaim's: no propensity
                frames[name].append(contract.conform(table, pd.DataFrame(rows)))
    if stored is not None:
        frames["payments"].append(stored.payments)
        frames["attempts"].append(stored.attempts)
        frames["messages"].append(stored.messages)
    tables = {
        name: contract.concat(parts, contract.TABLES_BY_NAME[name])
        for name, parts in frames.items()
    }
    index = pd.Index(tables["payments"]["payment_id"])
    ids = [r.payment.payment_id if r.payment is not None else r.payment_id for r in requests]
    payments = tables["payments"].iloc[index.get_indexer(ids)].reset_index(drop=True)
    times = pd.Series([pd.Timestamp(r.now) if r.now else now for r in requests])
    return payments, tables["attempts"], tables["messages"], contract.utc(times)


def decide(
    requests: list[DecisionRequest],
    engine: Engine,
    loaded: Loaded,
    now: pd.Timestamp | None = None,
    rules: NetworkRules | None = None,
    experiment: Experiment | None = None,
) -> list[DecisionOut]:
    """The next action for each request, logged to the store. With an ``experiment``, the
    control arm's customers get the control policy's action instead of the served one's."""
    now = now or pd.Timestamp.now(tz="UTC")
    rules = rules or NetworkRules()
    payments, attempts, messages, decided_at = _context(requests, engine, now)
    inline = [r for r in requests if r.payment is not None]
    if inline:  # the service now holds what it was told (first write wins)
        repo.save_contract(
            engine,
            {
                "payments": payments[
                    payments["payment_id"].isin([r.payment.payment_id for r in inline])
                ].drop_duplicates("payment_id"),
                "attempts": attempts,
                "messages": messages,
            },
        )
    configured = configs.effective_configs(engine, payments["account_id"].unique())
    batch = DecisionBatch.from_history(
        payments, attempts, messages, decided_at, constraints(payments["account_id"], configured)
    )
    policy = loaded.policy
    rng = np.random.default_rng(decision_seed(payments["payment_id"], batch.now))
    chosen = policy.act(batch, rng)
    names = np.full(len(batch), getattr(policy, "name", "policy"), dtype=object)
    if experiment is not None:
        at = batch.now.max().to_pydatetime()
        arms = experiments.assign(engine, experiment.design, payments, at)
        control = payments["payment_id"].map(arms).eq("control").to_numpy()
        if control.any():
            chosen = chosen.where(control, experiment.control.act(batch, rng))
            names[control] = experiment.control.name
    actions = enforce(batch, chosen, rules)

    probability, reasons = policy.describe(batch, actions)
    has_retry = actions.retry_at.notna().to_numpy()
    tz = payments["customer_timezone"].fillna(timeutil.DEFAULT_TIMEZONE)
    local = timeutil.local_times(actions.retry_at.fillna(batch.now), tz)

    out = []
    for i in range(len(batch)):
        retry = None
        if has_retry[i]:
            retry = RetryOut(
                at_utc=actions.retry_at.iloc[i].to_pydatetime(),
                at_local=local.iloc[i].to_pydatetime(),
                local_timezone=tz.iloc[i],
            )
        channel = actions.channel.iloc[i]
        out.append(
            DecisionOut(
                payment_id=payments["payment_id"].iloc[i],
                decided_at=batch.now.iloc[i].to_pydatetime(),
                retry=retry,
                no_retry_reason=None if has_retry[i] else (actions.reason.iloc[i] or "policy"),
                channel=None if pd.isna(channel) else channel,
                sender=None if pd.isna(channel) else actions.sender.iloc[i],
                expected_recovery_probability=float(probability[i]),
                propensity=float(actions.propensity[i]),
                model_version=loaded.version,
                policy=names[i],
                reasons=reasons[i],
            )
        )
    _log(engine, out)
    return out


def _log(engine: Engine, decisions: list[DecisionOut]) -> None:
    rows = pd.DataFrame(
        [
            {
                "payment_id": d.payment_id,
                "decided_at": d.decided_at,
                "model_version": d.model_version,
                "policy": d.policy,
                "retry_at": d.retry.at_utc if d.retry else None,
                "channel": d.channel.value if d.channel else None,
                "sender": d.sender.value if d.sender else None,
                "propensity": d.propensity,
                "reason": d.no_retry_reason or "",
                "explanation": json.dumps(d.reasons),
            }
            for d in decisions
        ]
    )
    with engine.begin() as conn:
        conn.execute(
            t.decision_log.insert(),
            rows.astype(object).where(rows.notna(), None).to_dict("records"),
        )
