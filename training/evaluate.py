"""``reclaim evaluate --simulator``: the registered policy against the reference policies, on
fresh payments of the marketplace it was trained on, with common random numbers.

The training run records the simulation that produced its data (``sim_*`` parameters, from
the ``simulation.json`` that ``reclaim simulate`` writes); evaluation re-creates that
marketplace and draws new payments after its history, which no model has seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from reclaim.cluster import worker_count
from reclaim.simulator import (
    Marketplace,
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


def evaluate_in_simulator(
    model_uri: str,
    tracking_uri: str,
    n_payments: int = 50_000,
    seed: int = 1,
    on_policy: Callable[[str], Callable[[int, int], None] | None] | None = None,
    client: Any | None = None,
) -> tuple[pd.DataFrame, str]:
    """Roll the model and the reference policies out on fresh payments (on the Dask cluster
    of ``client`` if given, with the same result); log and return the table (one row per
    policy, see ``simulator.evaluation.summarize``) and the run id."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    policy = model.unwrap_python_model().policy
    market = simulated_market(model, model_uri)
    fresh = fresh_payments(market, n_payments, seed)
    policies = reference_policies(fresh)
    policies["learned"] = policy
    table, _ = compare(fresh, policies, seed, on_policy, client)
    fixed, oracle = table.loc["fixed_schedule", "net_usd"], table.loc["oracle", "net_usd"]
    gap = (table.loc["learned", "net_usd"] - fixed) / (oracle - fixed)

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
        return table, run.info.run_id
