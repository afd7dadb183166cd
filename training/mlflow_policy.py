"""The learned policy as an MLflow pyfunc model, logged from code (models-from-code).

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"policy": <pickle>})``: MLflow
runs this file at load time; ``load_context`` unpickles the :class:`LearnedPolicy` (its two
models and the account history it was trained with).

``predict`` takes one row per decision: the contract payment columns plus ``decided_at``
(times as UTC timestamps or ISO 8601 text with an offset; the logged signature says which
columns may be null), for payments with no retry yet; the scoring API passes full histories through
``unwrap_python_model().policy`` instead. It returns the action per row: ``retry_at``,
``channel``, ``sender``, ``propensity``, ``reason``. Exploration draws from a seed derived
from the decisions themselves, so asking twice about the same decisions gives the same answer.
"""

from __future__ import annotations

import pickle
from typing import Any

import mlflow
import pandas as pd


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Wraps a pickled :class:`reclaim.models.policy.LearnedPolicy`."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["policy"], "rb") as f:
            self.policy = pickle.load(f)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        from reclaim import contract
        from reclaim.policy import DecisionBatch
        from reclaim.rules import enforce

        payments = contract.conform(contract.PAYMENTS, model_input)
        decided_at = contract.utc(
            pd.to_datetime(model_input["decided_at"], utc=True, format="ISO8601")
        )
        batch = DecisionBatch.from_history(
            payments,
            contract.first_failures(payments),
            contract.empty(contract.MESSAGES),
            decided_at,
        )
        from reclaim.policy import DecisionRandom

        rng = DecisionRandom(payments["payment_id"].tolist(), decided_at.tolist())
        actions = enforce(batch, self.policy.act(batch, rng), self.policy.network_rules or _rules())
        return pd.DataFrame(
            {
                "payment_id": payments["payment_id"],
                "retry_at": actions.retry_at,
                "channel": actions.channel.astype("object"),
                "sender": actions.sender.astype("object"),
                "propensity": actions.propensity,
                "reason": actions.reason,
            }
        )


def model_input(payments: pd.DataFrame, decided_at: pd.Series) -> pd.DataFrame:
    """Contract payment rows and their decision times as the model's signature takes them:
    plain text and numbers (a nullable whole number as a float, NaN where unknown), times as
    ISO 8601 text in UTC (``2026-03-01T14:00:00Z``)."""
    from reclaim import contract

    rows = payments.reset_index(drop=True)

    def column(c: contract.Column) -> pd.Series:
        values = rows[c.name]
        if c.kind == "timestamp":
            return values.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        if c.kind == "int" and c.nullable:  # the signature's double: NaN where unknown
            return values.astype("float64")
        return values.astype("object").where(values.notna(), None)

    out = pd.DataFrame({c.name: column(c) for c in contract.PAYMENTS.columns})
    out["decided_at"] = contract.utc(decided_at, out.index).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def _rules():
    from reclaim.rules import NetworkRules

    return NetworkRules()


mlflow.models.set_model(PolicyModel())
