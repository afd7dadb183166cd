"""Stripe's network codes are recent: a platform's history lacks them for older charges.
Trained with a share of them hidden, the model's decisions do not swing on their absence."""

from __future__ import annotations

import mlflow
import numpy as np

from reclaim import contract
from reclaim.training.robustness import network_code_swing


def test_a_decision_does_not_swing_on_a_missing_network_code(trained):
    mlflow.set_tracking_uri(trained.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/reclaim-policy@champion")
    swing = network_code_swing(
        model.unwrap_python_model().policy, contract.read_tables(trained.data_dir), 400
    )
    assert swing["present"] > 0.9
    # trained without hiding any (network_code_dropout=0) the same check gives 0.169: the
    # model read the codes' absence as a signal (docs/modeling.md,
    # benchmarks/bench_network_code_dropout.py)
    assert swing["mean_change"] < 0.02, swing["mean_change"]
    # what the time chosen without the codes loses, valued by the model that sees them
    regret = swing["regret"]
    assert regret.mean() < 0.012, regret.mean()  # 0.021 without hiding any
    assert np.quantile(regret, 0.95) < 0.06, np.quantile(regret, 0.95)
