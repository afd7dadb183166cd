"""Simulations on Dask: rollouts spread over a two-worker LocalCluster give the same tables
and figures as one process for the same seed (`reclaim simulate --dask`, `reclaim evaluate
--simulator --dask`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from reclaim.cli import app
from reclaim.simulator import compare, fresh_payments, reference_policies

pytestmark = pytest.mark.slow

TABLES = ("payments", "attempts", "messages", "decisions")


def test_rollouts_on_dask_equal_one_process(dask_client, trained) -> None:
    """The learned policy (which explores), the randomized references and the oracle (which
    reads each slice's hidden state): every table and figure equal, row for row."""
    market = fresh_payments(trained.market, 400, seed=3)  # four slices: two per worker
    policies = {**reference_policies(market), "learned": trained.result.policy}
    table, rollouts = compare(market, policies, seed=3)
    steps: list[tuple[int, int]] = []
    spread_table, spread = compare(
        market,
        policies,
        seed=3,
        on_policy=lambda name: lambda step, active: steps.append((step, active)),
        client=dask_client,
    )
    pd.testing.assert_frame_equal(spread_table, table, check_exact=True)
    for name, one in rollouts.items():
        for t in TABLES:
            pd.testing.assert_frame_equal(
                getattr(spread[name].tables, t), getattr(one.tables, t), check_exact=True
            )
        pd.testing.assert_frame_equal(spread[name].outcomes, one.outcomes, check_exact=True)
    assert rollouts["learned"].tables.decisions["propensity"].lt(1).any(), "it explored"
    # progress: every policy's payments settle slice by slice, down to none active
    assert sum(1 for _, active in steps if active == 0) == len(policies)


def _simulate(tmp_path: Path, name: str, *dask: str) -> Path:
    out = tmp_path / name
    args = ["simulate", "--payments", "1000", "--accounts", "20", "--seed", "4", "--out", str(out)]
    done = CliRunner().invoke(app, [*args, *dask])
    assert done.exit_code == 0, done.output
    return out


def test_simulate_on_dask_writes_the_same_files(dask_client, tmp_path) -> None:
    one = _simulate(tmp_path, "one")
    spread = _simulate(tmp_path, "spread", "--dask", dask_client.scheduler.address)
    files = sorted(p.name for p in one.iterdir())
    assert {"payments.parquet", "attempts.parquet", "decisions.parquet"} <= set(files)
    assert files == sorted(p.name for p in spread.iterdir())
    for name in files:
        assert (spread / name).read_bytes() == (one / name).read_bytes(), name


def test_evaluate_on_dask_logs_the_same_figures(dask_client, trained) -> None:
    model = f"models:/reclaim-policy/{trained.result.model_version}"
    args = ["evaluate", "--simulator", "--model", model, "--tracking-uri", trained.tracking_uri]
    args += ["--payments", "300", "--seed", "5"]
    for extra in ([], ["--dask", dask_client.scheduler.address]):
        done = CliRunner().invoke(app, [*args, *extra])
        assert done.exit_code == 0, done.output
        assert "closes" in done.output
    mlflow = MlflowClient(trained.tracking_uri)
    runs = mlflow.search_runs(
        [e.experiment_id for e in mlflow.search_experiments()],
        "tags.mlflow.runName = 'evaluate-simulator' and params.seed = '5'",
        order_by=["attributes.start_time ASC"],
    )
    one, spread = runs[-2:]
    assert one.data.params["dask_workers"] == "0" and spread.data.params["dask_workers"] == "2"
    assert spread.data.metrics == one.data.metrics
    assert {"learned_recovery_rate", "oracle_net_usd", "gap_closed_net"} <= set(one.data.metrics)


def test_dask_spreads_only_simulator_rollouts(tmp_path) -> None:
    done = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path), "--dask", "local"])
    assert done.exit_code == 2
    assert "--dask spreads --simulator's rollouts only" in done.output
