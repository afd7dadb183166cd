"""Does the deployed loop decide on what the offline rollout decides on?

The same simulated payments are played twice: (a) as contract tables through the offline
rollout (``simulator.rollout``), and (b) as Stripe objects through the stand-in, webhooks, the
API's store and the scheduler (``reclaim replay``, every payment in the served policy's arm).
Both draw the policy's randomness the way the API does (the empty stream of
``DecisionRandom``), so equal feature rows give equal decisions.

:func:`offline_decisions` gives each offline decision's features (the batch path,
``features.decisions``) and action; :func:`deployed_decisions` reads what the API logged for
each decision (the feature row it scored, as ``decision_log.features`` holds it, and its
action); :func:`compare` joins them on ``(payment_id, decided_at)`` and lists every
difference, column by column.

:func:`compare_payments` compares the payment rows themselves, column by column: what a
decision reads beyond the model's features (how the customer may be reached, the amount, the
account) must be the export's too.

A difference that must remain is named in :data:`EXCEPTIONS` with its reason (also in
docs/features.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from reclaim import contract
from reclaim.features import schema
from reclaim.features.decisions import build_decision_rows
from reclaim.policy import Policy
from reclaim.serving.store import tables as t
from reclaim.serving.store.repository import load_contract
from reclaim.simulator import Marketplace, rollout

#: Differences the deployed loop keeps on purpose, by name.
EXCEPTIONS = {
    "card_update_replan": (
        "When Stripe's card updater refreshes an expired card before a planned retry, the "
        "scheduler asks for a new decision at the retry's time instead of retrying the old "
        "card; the offline rollout has no card-update event to act on. A payment's decisions "
        "are compared up to its first such re-plan."
    ),
}

ACTION_COLUMNS = ("retry_at", "channel")


def offline_decisions(market: Marketplace, policy: Policy) -> pd.DataFrame:
    """Every decision of ``policy`` rolled out offline over ``market``: ``payment_id``,
    ``decided_at``, the features it saw (:data:`schema.DECISION_FEATURES`, categories as
    text) and its action (``retry_at``, ``channel``)."""
    tables = rollout(market, policy, stream="").tables
    rules = getattr(policy, "network_rules", None) or market.config.rules
    keys, features = build_decision_rows(tables, rules, accounts=policy.accounts)
    rows = pd.concat([keys[["payment_id", "decided_at"]], _as_text(features)], axis=1)
    actions = tables.decisions[["payment_id", "decided_at", *ACTION_COLUMNS]]
    return rows.merge(actions, on=["payment_id", "decided_at"], how="left")


def deployed_decisions(engine: sa.Engine) -> pd.DataFrame:
    """Every decision the API logged, with the feature row it scored and its action; plus
    ``replanned``: the decision re-plans a retry after a card update (the scheduler's
    ``replan`` outcome)."""
    d = t.decision_log.c
    with engine.connect() as conn:
        log = pd.read_sql(
            sa.select(d.payment_id, d.decided_at, d.retry_at, d.channel, d.features), conn
        )
        replans = pd.read_sql(
            sa.select(t.scheduled_actions.c.payment_id, t.scheduled_actions.c.updated_at).where(
                t.scheduled_actions.c.status == "replan"
            ),
            conn,
        )
    for column in ("decided_at", "retry_at"):
        log[column] = pd.to_datetime(log[column], utc=True, format="ISO8601")
    features = pd.DataFrame([json.loads(f) for f in log["features"]], index=log.index)
    out = pd.concat([log[["payment_id", "decided_at"]], _as_text(features)], axis=1)
    out["retry_at"] = log["retry_at"]
    out["channel"] = log["channel"]
    out.attrs["replanned_payments"] = set(replans["payment_id"])
    return out


def compare_payments(simulated: pd.DataFrame, engine: sa.Engine) -> dict[str, pd.DataFrame]:
    """Every contract column of the payments the store holds against the simulated rows of
    the same payments (what the export would hold): per column, the rows that differ."""
    stored = load_contract(engine).payments.set_index("payment_id")
    sim = simulated.set_index("payment_id").loc[stored.index]
    out = {}
    for column in contract.PAYMENTS.column_names:
        if column == "payment_id":
            continue
        a = sim[column].astype(object).where(sim[column].notna(), None)
        b = stored[column].astype(object).where(stored[column].notna(), None)
        differ = np.array([x != y for x, y in zip(a, b, strict=True)], dtype=bool)
        if differ.any():
            out[column] = pd.DataFrame({"simulated": a, "stored": b})[differ]
    return out


def _as_text(features: pd.DataFrame) -> pd.DataFrame:
    """Feature columns comparable across the two paths: categories as text (None unknown),
    numbers as float (NaN unknown)."""
    out = {}
    for name in schema.DECISION_FEATURES:
        column = features[name]
        if name in schema.CATEGORICAL:
            out[name] = column.astype(object).where(column.notna(), None)
        else:
            out[name] = pd.to_numeric(column, errors="coerce").astype(float)
    return pd.DataFrame(out, index=features.index)


@dataclass
class Parity:
    """What :func:`compare` found.

    ``matched``: decisions found on both paths; ``only_offline`` / ``only_deployed``: keys on
    one path alone (outside the named exceptions); ``excepted``: decisions left out under
    :data:`EXCEPTIONS`, by name; ``mismatches``: per column, the rows that differ.
    """

    matched: int
    only_offline: pd.DataFrame
    only_deployed: pd.DataFrame
    excepted: dict[str, int]
    mismatches: dict[str, pd.DataFrame]

    @property
    def equal(self) -> bool:
        return not (len(self.only_offline) or len(self.only_deployed) or self.mismatches)

    def summary(self) -> str:
        lines = [f"{self.matched} decisions compared"]
        lines += [f"excepted ({k}): {v}" for k, v in self.excepted.items()]
        if len(self.only_offline):
            lines.append(f"only offline: {len(self.only_offline)}")
        if len(self.only_deployed):
            lines.append(f"only deployed: {len(self.only_deployed)}")
        for column, rows in self.mismatches.items():
            lines.append(f"{column}: {len(rows)} differ, e.g.\n{rows.head(3).to_string()}")
        return "\n".join(lines)


def compare(offline: pd.DataFrame, deployed: pd.DataFrame, tolerance: float = 1e-9) -> Parity:
    """Join the two paths' decisions on ``(payment_id, decided_at)`` and compare every feature
    and the action. Decisions of a payment from its first card-update re-plan on are left out
    (:data:`EXCEPTIONS`)."""
    replanned = deployed.attrs.get("replanned_payments", set())
    first_replan = _first_replan(deployed, replanned)
    off, dep = _before(offline, first_replan), _before(deployed, first_replan)
    excepted = {"card_update_replan": len(deployed) - len(dep)}
    keys = ["payment_id", "decided_at"]
    both = off.merge(dep, on=keys, how="outer", suffixes=("_off", "_dep"), indicator=True)
    only_offline = both.loc[both["_merge"] == "left_only", keys]
    only_deployed = both.loc[both["_merge"] == "right_only", keys]
    both = both[both["_merge"] == "both"]
    mismatches: dict[str, pd.DataFrame] = {}
    for name in (*schema.DECISION_FEATURES, *ACTION_COLUMNS):
        a, b = both[f"{name}_off"], both[f"{name}_dep"]
        if name in schema.CATEGORICAL or name == "channel":
            a, b = a.astype(object).where(a.notna(), None), b.astype(object).where(b.notna(), None)
            differ = np.array([x != y for x, y in zip(a, b, strict=True)], dtype=bool)
        elif name == "retry_at":
            differ = ~((a == b) | (a.isna() & b.isna())).to_numpy(bool)
        else:
            x, y = a.to_numpy(float), b.to_numpy(float)
            same = (np.abs(x - y) <= tolerance * np.maximum(1.0, np.abs(x))) | (
                np.isnan(x) & np.isnan(y)
            )
            differ = ~same
        if differ.any():
            mismatches[name] = pd.DataFrame(
                {"payment_id": both["payment_id"], "decided_at": both["decided_at"],
                 "offline": a, "deployed": b}
            )[differ]  # fmt: skip
    return Parity(len(both), only_offline, only_deployed, excepted, mismatches)


def _before(frame: pd.DataFrame, cut: dict[str, pd.Timestamp]) -> pd.DataFrame:
    """The rows of ``frame`` decided before their payment's time in ``cut`` (all of a payment
    without one)."""
    keep = [
        pid not in cut or at < cut[pid]
        for pid, at in zip(frame["payment_id"], frame["decided_at"], strict=True)
    ]
    return frame[np.array(keep, dtype=bool)]


def _first_replan(deployed: pd.DataFrame, replanned: set[str]) -> dict[str, pd.Timestamp]:
    """Per re-planned payment, the time of its first re-plan decision: the first decision
    whose decision number repeats an earlier one's (the scheduler asked again without a new
    attempt)."""
    rows = deployed[deployed["payment_id"].isin(replanned)].sort_values("decided_at")
    firsts = {}
    for pid, group in rows.groupby("payment_id"):
        n = group["decision_number"].to_numpy(float)
        again = np.flatnonzero(np.r_[False, n[1:] <= n[:-1]])
        if len(again):
            firsts[pid] = group["decided_at"].iloc[again[0]]
    return firsts
