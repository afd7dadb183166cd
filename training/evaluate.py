"""``reclaim evaluate --simulator``: the registered policy against the reference policies, on
fresh payments of the marketplace it was trained on, with common random numbers.

The training run records the simulation that produced its data (``sim_*`` parameters, from
the ``simulation.json`` that ``reclaim simulate`` writes); evaluation re-creates that
marketplace and draws new payments after its history, which no model has seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from reclaim.cluster import worker_count
from reclaim.simulator import (
    Marketplace,
    Rollout,
    compare,
    fresh_payments,
    generate,
    reference_policies,
)


def simulated_market(model: Any, model_uri: str) -> Marketplace:
    """The marketplace a loaded pyfunc ``model`` was trained on, re-created from its run's
    ``sim_*`` parameters; ValueError if it was not trained on simulated data."""
    from mlflow import MlflowClient

    params = MlflowClient().get_run(model.metadata.run_id).data.params
    missing = [k for k in ("sim_accounts", "sim_payments", "sim_seed") if k not in params]
    if missing:
        raise ValueError(
            f"{model_uri} was not trained on simulated data (its run has no {missing}): "
            "it needs a model trained on `reclaim simulate` output"
        )
    return generate(
        int(params["sim_accounts"]), int(params["sim_payments"]), int(params["sim_seed"])
    )


@dataclass
class SimulatorEvaluation:
    """What :func:`evaluate_in_simulator` found.

    Attributes
    ----------
    table
        One row per policy (``simulator.evaluation.summarize`` and the net revenue share per
        decline kind), the learned policy last.
    run_id
        The MLflow run it was logged as.
    rollouts
        Each policy's rollout on the same fresh payments, in the table's order.
    market
        Those fresh payments.
    gap_closed
        The share of the net-revenue gap from ``fixed_schedule`` to the oracle (the ceiling)
        that the learned policy closes.
    """

    table: pd.DataFrame
    run_id: str
    rollouts: dict[str, Rollout]
    market: Marketplace
    gap_closed: float


def gap_closed(table: pd.DataFrame, policy: str = "learned") -> float:
    """The share of the net-revenue gap from ``fixed_schedule`` to the oracle that
    ``policy`` closes (1: as good as the ceiling)."""
    fixed, ceiling = table.loc["fixed_schedule", "net_usd"], table.loc["oracle", "net_usd"]
    return float((table.loc[policy, "net_usd"] - fixed) / (ceiling - fixed))


def evaluate_in_simulator(
    model_uri: str,
    tracking_uri: str,
    n_payments: int = 50_000,
    seed: int = 1,
    on_policy: Callable[[str], Callable[[int, int], None] | None] | None = None,
    client: Any | None = None,
) -> SimulatorEvaluation:
    """Roll the model and the reference policies out on fresh payments (on the Dask cluster
    of ``client`` if given, with the same result); log them to MLflow and return them."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    policy = model.unwrap_python_model().policy
    market = simulated_market(model, model_uri)
    fresh = fresh_payments(market, n_payments, seed)
    policies = reference_policies(fresh)
    policies["learned"] = policy
    table, rollouts = compare(fresh, policies, seed, on_policy, client)
    gap = gap_closed(table)

    experiment = MlflowClient().get_run(model.metadata.run_id).info.experiment_id
    with mlflow.start_run(run_name="evaluate-simulator", experiment_id=experiment) as run:
        mlflow.log_params(
            {
                "model_uri": model_uri,
                "payments": n_payments,
                "seed": seed,
                "model_run_id": model.metadata.run_id,
                "dask_workers": worker_count(client) if client is not None else 0,
            }
        )
        for name, row in table.iterrows():
            mlflow.log_metrics({f"{name}_{k}": float(v) for k, v in row.items()})
        mlflow.log_metric("gap_closed_net", float(gap))
        mlflow.log_table(table.reset_index(), "policy_table.json")
        return SimulatorEvaluation(table, run.info.run_id, rollouts, fresh, gap)
