"""reclaim train end to end: the split, what is fit on what, and what MLflow records."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
import sklearn
from mlflow import MlflowClient

from reclaim import contract
from reclaim.features.accounts import AccountHistory
from reclaim.models.channel import ChannelUpliftModel
from reclaim.models.retry import RetryTimeModel
from reclaim.policy import DecisionBatch
from reclaim.rules import NetworkRules, enforce
from reclaim.simulator import fresh_payments
from reclaim.training.data import DecisionData, channel_rows, retry_rows, time_split
from reclaim.training.mlflow_policy import model_input
from reclaim.training.pipeline import MODEL_NAME, TrainConfig, train


def test_time_split_is_disjoint_and_ordered(trained) -> None:
    tables = contract.read_tables(trained.data_dir)
    split = time_split(tables, 0.2)
    train_ids = set(split.train.payments["payment_id"])
    test_ids = set(split.test.payments["payment_id"])
    assert not train_ids & test_ids
    assert train_ids | test_ids == set(tables.payments["payment_id"])
    assert split.train.payments["failed_at"].max() < split.test.payments["failed_at"].min()
    for name in ("attempts", "messages", "decisions"):
        assert set(getattr(split.train, name)["payment_id"]) <= train_ids
        assert set(getattr(split.test, name)["payment_id"]) <= test_ids
    assert len(split.test.payments) == pytest.approx(0.2 * len(tables.payments), abs=1)


def test_models_never_see_test_payments(trained, monkeypatch, tmp_path) -> None:
    """Every row the models are fit on comes from a training payment, and the evaluation
    rows are exactly the test payments'. The retry model is fitted on them all, twice more on
    each half of them (the timing effect's folds), and once more on them all for the gate's
    world (``TrainConfig.world_model``)."""
    seen: dict[str, int] = {}
    retry_fits: list[int] = []
    real_retry_fit, real_channel_fit = RetryTimeModel.fit, ChannelUpliftModel.fit

    def retry_fit(self, X, y):
        retry_fits.append(len(X))
        return real_retry_fit(self, X, y)

    def channel_fit(self, X, treatment, y, propensity=None):
        seen["channel"] = len(X)
        return real_channel_fit(self, X, treatment, y, propensity)

    monkeypatch.setattr(RetryTimeModel, "fit", retry_fit)
    monkeypatch.setattr(ChannelUpliftModel, "fit", channel_fit)
    result = train(
        trained.data_dir,
        f"sqlite:///{tmp_path / 'm.db'}",
        TrainConfig(
            experiment="split-proof", retry_rounds=20, channel_rounds=20, max_rollout_payments=1_000
        ),
    )

    tables = contract.read_tables(trained.data_dir)
    split = time_split(tables, 0.2)
    train_data = DecisionData.build(
        split.train, AccountHistory.from_tables(split.train.payments, split.train.attempts)
    )
    rows = len(retry_rows(split.train, train_data)[0])
    assert sorted(retry_fits) == sorted([rows, rows, rows // 2, rows - rows // 2]), retry_fits
    seen["retry"] = max(retry_fits)
    assert seen["channel"] == len(channel_rows(split.train, train_data)[0])
    all_retries = tables.attempts[
        (tables.attempts["initiator"] == "merchant") & (tables.attempts["attempt_number"] > 0)
    ]
    assert seen["retry"] < len(all_retries)
    test_first = (split.test.decisions["decision_number"] == 0).sum()
    assert result.metrics["ope_decisions"] == test_first


def test_run_records_params_metrics_plots_table_and_model(trained) -> None:
    client = MlflowClient(trained.tracking_uri)
    run = client.get_run(trained.result.run_id)
    assert len(run.data.params["data_digest"]) == 16
    assert run.data.params["sim_seed"] == "5"
    # the gate's world cannot fall with time alone (training.whole_policy.TIME_DIRECTION)
    assert run.data.params["gate_world"] == "monotone"
    assert any("cannot fall with time alone" in c for c in trained.result.caveats)
    for key in (
        "retry_auc",
        "retry_log_loss",
        "retry_brier",
        "retry_ece",
        "ope_dr",
        "ope_dr_lo",
        "ope_dr_hi",
        "ope_ips",
        "ope_snips",
        "ope_ess",
        "channel_email_qini",
        "channel_sms_auuc",
        "timing_night",
        "timing_outside_business_hours",
        "timing_weekend",
    ):
        assert key in run.data.metrics, key
    # the timing the retry model left out is measured, acted on and said
    mlflow.set_tracking_uri(trained.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
    timing = loaded.unwrap_python_model().policy.timing
    assert timing is not None and timing.coef[0] == run.data.metrics["timing_night"]
    assert any("retry timing beyond the retry model" in c for c in trained.result.caveats)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "calibration.png",
        "qini.png",
        "recovery_by_day.png",
        "per_account_uplift.json",
    } <= artifacts
    mlflow.set_tracking_uri(trained.tracking_uri)
    table = mlflow.load_table("per_account_uplift.json", run_ids=[run.info.run_id])
    assert {"account_id", "currency", "revenue_uplift", "uplift_rate_lo"} <= set(table.columns)
    assert "revenue_uplift_total_dr" not in run.data.metrics  # never summed across currencies
    assert run.info.run_name.startswith("train sim (randomized")
    model = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/1")
    assert model.signature is not None and "failed_at" in model.signature.inputs.input_names()
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    assert run.data.tags["promoted"] == "True"


def test_retry_model_is_calibrated_on_the_later_split(trained) -> None:
    m = trained.result.metrics
    assert m["retry_ece"] <= 0.02
    assert m["retry_auc"] > 0.7


def test_policy_survives_an_mlflow_round_trip(trained) -> None:
    mlflow.set_tracking_uri(trained.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
    fresh = fresh_payments(trained.market, 300, seed=9).payments
    # whole seconds: the signature's ISO text carries no fractions
    fresh["failed_at"] = fresh["failed_at"].dt.floor("s")
    fresh.loc[fresh.index[:50], "application_fee_amount"] = pd.NA  # the contract allows it
    rows = model_input(fresh, fresh["failed_at"])
    out = loaded.predict(rows)
    again = loaded.predict(rows)
    pd.testing.assert_frame_equal(out, again)

    policy = trained.result.policy
    batch = DecisionBatch.from_history(
        fresh,
        contract.first_failures(fresh),
        contract.empty(contract.MESSAGES),
        fresh["failed_at"],
    )
    from reclaim.policy import DecisionRandom
    from reclaim.rules import NetworkRules

    rng = DecisionRandom(fresh["payment_id"].tolist(), fresh["failed_at"].tolist())
    direct = enforce(batch, policy.act(batch, rng), NetworkRules())
    pd.testing.assert_series_equal(out["retry_at"], direct.retry_at, check_names=False)
    assert (out["channel"].fillna("none") == direct.channel.astype("object").fillna("none")).all()
    np.testing.assert_array_equal(out["propensity"], direct.propensity)
    assert out["retry_at"].notna().mean() > 0.5
    # an environment built from the logged requirements can unpickle the policy: lightgbm too
    wanted = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{MODEL_NAME}/1")).read_text()
    pinned = dict(line.split("==") for line in wanted.split() if "==" in line)
    assert pinned["lightgbm"] == lgb.__version__ and pinned["scikit-learn"] == sklearn.__version__
    assert "reclaim" in wanted


def test_a_signature_example_with_null_fees_first_is_accepted(trained) -> None:
    """Issue 30: ``reclaim train`` failed at MLflow logging when the first payments' fees
    were null ("Can not safely convert object to int64"). The example and its signature
    agree whatever the nullable columns hold."""
    from mlflow.models.utils import _enforce_schema

    from reclaim.training.pipeline import _signature

    payments = trained.market.payments.head(20).copy()
    payments["application_fee_amount"] = payments["application_fee_amount"].astype("Int64")
    payments.loc[payments.index[:2], "application_fee_amount"] = pd.NA
    payments.loc[payments.index[:2], ["customer_timezone", "card_country"]] = None
    example, signature = _signature(payments)  # its example: the first five payments
    checked = _enforce_schema(example, signature.inputs)
    back = contract.conform(contract.PAYMENTS, checked)
    fees = payments["application_fee_amount"].head(5)
    assert back["application_fee_amount"].isna().tolist() == [True, True, False, False, False]
    assert back["application_fee_amount"].iloc[2:].tolist() == fees.iloc[2:].tolist()


def test_champion_moves_only_when_the_new_policy_is_better(trained, tmp_path) -> None:
    worse = train(
        trained.data_dir,
        trained.tracking_uri,
        TrainConfig(experiment="tests", exploration=1.0, retry_rounds=50, channel_rounds=50),
    )
    assert not worse.promoted
    assert "champion kept" in worse.reason
    client = MlflowClient(trained.tracking_uri)
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    assert client.get_run(worse.run_id).data.tags["champion_decision"] == worse.reason


def test_policy_explains_its_retries_and_honours_sender_overrides(trained) -> None:
    import copy

    policy = copy.copy(trained.result.policy)
    fresh = fresh_payments(trained.market, 400, seed=10).payments
    batch = DecisionBatch.from_history(
        fresh, contract.first_failures(fresh), contract.empty(contract.MESSAGES), fresh["failed_at"]
    )
    actions = policy.act(batch, np.random.default_rng(0))
    reasons = policy.explain(batch, actions)
    retried = actions.retry_at.notna().to_numpy()
    assert all(len(r) == 3 for r, ok in zip(reasons, retried, strict=True) if ok)
    assert all(r == [] for r, ok in zip(reasons, retried, strict=True) if not ok)
    assert any("=" in r[0] and "(" in r[0] for r in reasons if r)

    messaged = actions.channel.notna().to_numpy()
    assert messaged.any()
    account = fresh.loc[messaged, "account_id"].iloc[0]
    default = actions.sender[messaged].iloc[0]
    flipped = "platform" if default == "account" else "account"
    policy.sender_overrides = {account: flipped}
    again = policy.act(batch, np.random.default_rng(0))
    mine = (fresh["account_id"] == account).to_numpy() & again.channel.notna().to_numpy()
    assert (again.sender[mine] == flipped).all()
    others = ~(fresh["account_id"] == account).to_numpy()
    pd.testing.assert_series_equal(again.sender[others], actions.sender[others])


def test_exploring_policy_stays_inside_each_accounts_configuration(trained) -> None:
    import copy

    from reclaim.account_config import AccountConfig, constraints

    policy = copy.copy(trained.result.policy)
    policy.exploration = 0.5
    # a channel the policy uses (its measured uplift is above zero), and customers it reaches
    used = next(ch for ch, c in policy.channel_calibration.items() if c.first is not None)
    fresh = fresh_payments(trained.market, 400, seed=11).payments.assign(
        reachable_email=True, reachable_sms=True, reachable_in_app=True
    )
    accounts = fresh["account_id"].unique()
    configs = {a: AccountConfig(allowed_channels=[used]) for a in accounts[::2]}
    configs |= {a: AccountConfig(max_retries=0) for a in accounts[1::4]}
    batch = DecisionBatch.from_history(
        fresh,
        contract.first_failures(fresh),
        contract.empty(contract.MESSAGES),
        fresh["failed_at"],
        constraints(fresh["account_id"], configs),
    )
    actions = policy.act(batch, np.random.default_rng(3))
    one_channel = fresh["account_id"].isin(list(accounts[::2])).to_numpy()
    channel = actions.channel.astype("object").to_numpy()
    assert set(channel[one_channel & actions.channel.notna().to_numpy()]) == {used}
    # exploration spreads over the two open options (none, that channel) and says so exactly
    explored = one_channel & (actions.channel_propensity < 1)
    assert explored.any()
    assert np.allclose(np.sort(np.unique(actions.channel_propensity[explored])), [0.25, 0.75])
    no_retries = fresh["account_id"].isin(list(accounts[1::4])).to_numpy()
    assert actions.retry_at[no_retries].isna().all()
    assert np.allclose(actions.retry_propensity[no_retries], 1.0)
    enforced = enforce(batch, actions, policy.network_rules or NetworkRules())
    # nothing left to drop; the rules only add 3D Secure reminders where the policy sent none
    added = (enforced.reason == "customer_action").to_numpy() & actions.channel.isna().to_numpy()
    pd.testing.assert_series_equal(enforced.channel[~added], actions.channel[~added])
    assert set(enforced.channel[added].dropna()) <= {"email"}
