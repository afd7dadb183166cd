"""Train on 1,000,000 simulated attempts: wall time and peak memory (aim: under 10 minutes on
2 cores).

The history is simulated and written once; training then runs in a fresh process (so the
simulation's memory does not count) into a temporary MLflow store, next to a reference
measured in the same process: a plain LightGBM fit with default settings on the same retry
rows.

    .venv/bin/python benchmarks/bench_training.py [--attempts N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import peak_rss_mib


def measure(folder: str) -> None:
    import lightgbm as lgb

    from reclaim import contract
    from reclaim.features.accounts import AccountHistory
    from reclaim.training.data import DecisionData, retry_rows, time_split
    from reclaim.training.pipeline import TrainConfig, train

    tables = contract.read_tables(folder)
    split = time_split(tables)
    data = DecisionData.build(
        split.train, AccountHistory.from_tables(split.train.payments, split.train.attempts)
    )
    x, y, _ = retry_rows(split.train, data)
    start = time.perf_counter()
    lgb.train({"objective": "binary", "verbose": -1, "num_threads": 2}, lgb.Dataset(x, y), 100)
    t_ref = time.perf_counter() - start

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(Path(folder), f"sqlite:///{tmp}/mlflow.db", TrainConfig(experiment="bench"))
    t_train = time.perf_counter() - start
    print(
        f"training benchmark: {len(tables.attempts):,} attempts, {len(tables.payments):,} "
        f"payments ({len(x):,} training retries)"
    )
    print(f"  reference (plain LightGBM, 100 rounds on the retry rows): {t_ref:7.1f} s")
    print(
        f"  reclaim train (rows, 2 models, evaluation, OPE, MLflow):  {t_train:7.1f} s "
        f"= {t_train / t_ref:.1f}x reference; aim < 600 s"
    )
    print(f"  retry AUC {result.metrics['retry_auc']:.3f}, ECE {result.metrics['retry_ece']:.4f}")
    print(f"  peak memory: {peak_rss_mib():,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return

    from reclaim import contract
    from reclaim.reference import RandomizedLogging
    from reclaim.simulator import generate, rollout

    payments = int(args.attempts / 4.7)
    tables = rollout(generate(1_000, payments, seed=3), RandomizedLogging(), seed=3).tables
    with tempfile.TemporaryDirectory() as tmp:
        contract.write_tables(tables, tmp)
        subprocess.run([sys.executable, __file__, "--measure", tmp], check=True)


if __name__ == "__main__":
    main()
