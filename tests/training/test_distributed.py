"""Training on Dask: a two-worker LocalCluster builds the same decision rows as one process,
keeps every payment in one partition, and `reclaim train --dask` gives a retry model of the
same quality as the single-process run on the same data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from reclaim import contract
from reclaim.features.decisions import build_decision_rows
from reclaim.training import distributed

pytestmark = pytest.mark.slow


def _in_key_order(keys: pd.DataFrame, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.lexsort(
        (keys["decision_number"].to_numpy(), keys["payment_id"].astype(str).to_numpy())
    )
    return keys.iloc[order].reset_index(drop=True), features.iloc[order].reset_index(drop=True)


def test_decision_rows_equal_the_single_process_rows(dask_client, trained) -> None:
    """One definition per feature: every row, every column, exactly."""
    keys, features = distributed.decision_rows(dask_client, trained.data_dir, 5)
    local_keys, local_features = build_decision_rows(contract.read_tables(trained.data_dir))
    keys, features = _in_key_order(keys, features)
    local_keys, local_features = _in_key_order(local_keys, local_features)
    assert len(keys) > 10_000
    pd.testing.assert_frame_equal(keys, local_keys)
    pd.testing.assert_frame_equal(features, local_features, check_exact=True)


def test_each_payment_lives_in_one_partition(dask_client, trained) -> None:
    tables = dask_client.gather(distributed.partitions(dask_client, trained.data_dir, 3))
    ids = [set(t.payments["payment_id"]) for t in tables]
    assert all(ids), "every partition holds payments"
    assert sum(map(len, ids)) == len(set().union(*ids)), "no payment in two partitions"
    whole = contract.read_tables(trained.data_dir)
    assert set().union(*ids) == set(whole.payments["payment_id"])
    for t, own in zip(tables, ids, strict=True):
        for name in ("attempts", "messages", "decisions"):
            assert set(getattr(t, name)["payment_id"]) <= own
    assert sum(len(t.attempts) for t in tables) == len(whole.attempts)


def test_train_on_dask_matches_the_single_process_model(dask_client, trained, tmp_path) -> None:
    """`reclaim train --dask <scheduler>` on the same tables: the same split and rows, and a
    retry model whose held-out AUC is within 0.005 of the single-process one's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RECLAIM_MLFLOW_ARTIFACT_URI": str(tmp_path / "artifacts")}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("reclaim")),
            "train",
            "--data",
            str(trained.data_dir),
            "--tracking-uri",
            uri,
            "--dask",
            dask_client.scheduler.address,
            "--gate-payments",
            "500",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    mlflow = MlflowClient(uri)
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("reclaim").experiment_id])
    params, metrics = run.data.params, run.data.metrics
    single = trained.result.metrics
    assert params["dask_workers"] == "2"
    local = MlflowClient(trained.tracking_uri).get_run(trained.result.run_id).data.params
    for same in ("cutoff", "train_payments", "test_payments", "retry_rows", "data_digest"):
        assert params[same] == local[same], same
    assert abs(metrics["retry_auc"] - single["retry_auc"]) <= 0.005
    assert metrics["retry_log_loss"] <= single["retry_log_loss"] + 0.01
    assert 0 < metrics["retry_trees"] <= 300
    assert metrics["ope_dr_lo"] <= metrics["ope_dr"] <= metrics["ope_dr_hi"]
    # the timing effect from the workers' rows: the same rows, so the same effect within noise
    for band in ("night", "outside_business_hours", "weekend"):
        assert abs(metrics[f"timing_{band}"] - single[f"timing_{band}"]) < 0.02, (
            band,
            metrics[f"timing_{band}"],
            single[f"timing_{band}"],
        )


def test_csv_tables_are_refused_by_name(dask_client, trained, tmp_path) -> None:
    tables = contract.read_tables(trained.data_dir)
    tables.payments.head(5).to_csv(tmp_path / "payments.csv", index=False)
    with pytest.raises(contract.ContractProblems, match="Parquet only"):
        distributed.prepare(dask_client, tmp_path, distributed.TrainConfig())


def test_large_runs_sample_the_same_payments_in_one_process_and_on_dask(
    dask_client, trained
) -> None:
    """Above max_channel_payments / max_evaluation_payments the channel rows and the
    evaluation read a sample by payment: about the size asked, whole payments, and the same
    payments on a cluster as in one process."""
    from reclaim.training.prepared import TrainConfig, prepare

    config = TrainConfig(max_channel_payments=3_000, max_evaluation_payments=1_000)
    local = prepare(trained.data_dir, config)
    spread = distributed.prepare(dask_client, trained.data_dir, config, npartitions=3)
    for found in (local, spread):
        sampled = set(found.train_payment_ids)
        assert 2_400 <= len(sampled) <= 3_600 < found.train_payments
        assert len(found.train_payment_ids) == len(found.train_rows.arm)
        assert 800 <= len(found.test_tables.payments) <= 1_200 < found.test_payments
        assert set(found.test_data.keys["payment_id"]) == set(
            found.test_tables.payments["payment_id"]
        )
    assert set(local.train_payment_ids) == set(spread.train_payment_ids)
    assert set(local.test_tables.payments["payment_id"]) == set(
        spread.test_tables.payments["payment_id"]
    )
    assert len(local.retry) == len(spread.retry)  # the retry model still reads every row
