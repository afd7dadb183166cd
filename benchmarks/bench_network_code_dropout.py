"""How much a decision swings when the network codes are missing, per training dropout share.

Simulates the test suite's history (40 accounts, 16,000 payments, seed 5), trains a policy at
each share of hidden network codes (``TrainConfig.network_code_dropout``) in a temporary MLflow
store, and scores every candidate retry time of 2,000 of its decisions with the codes and with
them hidden. Prints per share: the mean change in predicted success, the success lost by
choosing the time without the codes (mean and 95th percentile, valued by the model with them),
and the retry model's AUC on the later split.

    .venv/bin/python benchmarks/bench_network_code_dropout.py [--shares 0 0.25 0.5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from reclaim import contract
from reclaim.reference import RandomizedLogging
from reclaim.simulator import generate, rollout
from reclaim.training.pipeline import TrainConfig, train
from reclaim.training.robustness import network_code_swing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        market = generate(40, 16_000, 5)
        tables = rollout(market, RandomizedLogging(), seed=5).tables
        contract.write_tables(tables, root / "sim")
        (root / "sim" / "simulation.json").write_text(
            json.dumps({"accounts": 40, "payments": 16_000, "seed": 5})
        )
        print("dropout | mean change in success | regret mean / p95 | retry AUC")
        for share in args.shares:
            result = train(
                root / "sim",
                f"sqlite:///{root / f'm{share}.db'}",
                TrainConfig(experiment="dropout", network_code_dropout=share),
            )
            s = network_code_swing(result.policy, tables)
            regret = s["regret"]
            print(
                f"{share:7.2f} | {s['mean_change']:22.3f} | "
                f"{regret.mean():.3f} / {np.quantile(regret, 0.95):.3f}     | "
                f"{result.metrics['retry_auc']:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
