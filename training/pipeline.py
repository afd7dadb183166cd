"""``reclaim train``: contract tables in, a registered policy and an MLflow run out.

1. Read and validate the tables; record a digest of the data.
2. Split by time (``training.data.time_split``): models learn from the earlier payments only.
3. Fit the retry-time model (calibrated on its latest rows) and the channel uplift model.
4. Evaluate on the later payments: the retry model's AUC, log loss, Brier score and
   calibration error; each channel's Qini and AUUC; off-policy estimates (IPS, SNIPS, DR) of
   the learned policy's value against the logging policy, with intervals and effective sample
   size; per-account uplift as one table.
5. Log plots, register the policy as ``reclaim-policy`` and move the ``champion`` alias only
   when its DR value beats the current champion's on the same test data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reclaim import contract
from reclaim.features.accounts import AccountHistory
from reclaim.features.decisions import decision_features, log_amount
from reclaim.models.channel import ChannelUpliftModel
from reclaim.models.policy import CHANNELS, LearnedPolicy
from reclaim.models.retry import RetryTimeModel
from reclaim.training import metrics, ope, plots
from reclaim.training.data import (
    DecisionData,
    channel_rows,
    retry_rows,
    time_split,
)

log = logging.getLogger(__name__)

MODEL_NAME = "reclaim-policy"
CHAMPION = "champion"
POLICY_CODE = Path(__file__).with_name("mlflow_policy.py")
SIMULATION_MANIFEST = "simulation.json"


@dataclass
class TrainConfig:
    """What ``reclaim train`` does, all of it logged as run parameters."""

    test_share: float = 0.2
    exploration: float = 0.05
    retry_rounds: int = 300
    channel_rounds: int = 200
    calibration_share: float = 0.2
    weight_clip: float | None = None
    experiment: str = "reclaim"


@dataclass
class TrainResult:
    """What a training run produced."""

    run_id: str
    model_version: str
    metrics: dict[str, float]
    promoted: bool
    reason: str
    policy: LearnedPolicy
    per_account: pd.DataFrame = field(repr=False)


def data_digest(folder: Path) -> str:
    """SHA-256 (first 16 hex digits) of the contract files' bytes, in name order."""
    h = hashlib.sha256()
    for table in contract.TABLES:
        path = folder / table.file
        if path.exists():
            h.update(table.file.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def continuation_factor(model: RetryTimeModel, x: pd.DataFrame) -> float:
    """How much the model says one more failed attempt scales a retry's success chance."""
    after = x.copy()
    after["decision_number"] += 1
    after["retries_left"] = np.maximum(after["retries_left"] - 1, 0)
    before = model.predict_proba(x)[:, 1].mean()
    return float(np.clip(model.predict_proba(after)[:, 1].mean() / max(before, 1e-9), 0, 1))


def first_message_ope(
    policy: LearnedPolicy,
    data: DecisionData,
    tables: contract.ContractTables,
    channel_model: ChannelUpliftModel,
    clip: float | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Off-policy value of the learned policy's message choice at the first failure.

    Estimand: the recovery rate if the learned policy picks the first decision's message and
    the logging policy does everything else. Reward: recovered within the window (0/1). The
    reward model of the DR estimator is the channel model's per-arm outcome predictions.
    Returns the estimates and the per-decision terms (for per-account tables).
    """
    logged_rows = channel_rows(tables, data)
    first = data.keys["decision_number"].to_numpy()[logged_rows.decision] == 0
    rows = logged_rows.decision[first]
    batch = data.batch.take(rows)
    feats = logged_rows.features[first].reset_index(drop=True)
    y0 = logged_rows.recovered[first].astype(float)
    logged0 = logged_rows.propensity[first]
    options = ["none", *CHANNELS]
    col = pd.Categorical(logged_rows.arm[first], categories=options).codes
    # The target probabilities are the policy's own, on the features it would compute.
    own = decision_features(batch, policy.accounts, policy.network_rules)
    probs = policy.channel_probabilities(batch, own)
    target = probs[np.arange(len(rows)), col]
    q = channel_model.predict_outcomes(feats[list(channel_model.feature_names_in_)])
    q = q.reindex(columns=options, fill_value=0.0).to_numpy()
    q_logged = q[np.arange(len(rows)), col]
    q_target = (probs * q).sum(axis=1)
    estimates = ope.all_estimates(y0, logged0, target, q_logged, q_target, clip)
    w = ope.importance_weights(target, logged0, clip)
    terms = pd.DataFrame(
        {
            "payment_id": batch.payments["payment_id"].to_numpy(),
            "account_id": batch.payments["account_id"].to_numpy(),
            "amount": np.expm1(log_amount(batch.payments)),
            "logged": y0,
            "dr": q_target + w * (y0 - q_logged),
        }
    )
    return estimates, terms


def per_account_uplift(terms: pd.DataFrame) -> pd.DataFrame:
    """Per connected account: decisions, the logging policy's recovery rate, the learned
    policy's DR estimate, and the recovered-revenue uplift they imply (major units)."""
    g = terms.assign(
        rev_logged=terms["logged"] * terms["amount"], rev_dr=terms["dr"] * terms["amount"]
    ).groupby("account_id")
    out = pd.DataFrame(
        {
            "decisions": g.size(),
            "logged_recovery_rate": g["logged"].mean(),
            "policy_recovery_rate_dr": g["dr"].mean(),
            "revenue_logged": g["rev_logged"].sum(),
            "revenue_policy_dr": g["rev_dr"].sum(),
        }
    )
    out["revenue_uplift"] = out["revenue_policy_dr"] - out["revenue_logged"]
    se = g["dr"].std(ddof=1) / np.sqrt(g.size())
    out["uplift_rate_lo"] = out["policy_recovery_rate_dr"] - 1.96 * se - out["logged_recovery_rate"]
    out["uplift_rate_hi"] = out["policy_recovery_rate_dr"] + 1.96 * se - out["logged_recovery_rate"]
    return out.reset_index().sort_values("decisions", ascending=False)


def train(
    data_dir: Path,
    tracking_uri: str,
    config: TrainConfig | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train, evaluate and register a policy from the contract tables in ``data_dir``."""
    import mlflow
    from mlflow import MlflowClient

    config = config or TrainConfig()
    stage = on_stage or (lambda name: log.info(name))
    stage("reading tables")
    tables = contract.read_tables(data_dir)
    digest = data_digest(Path(data_dir))
    split = time_split(tables, config.test_share)
    all_accounts = AccountHistory.from_tables(tables.payments, tables.attempts)
    train_accounts = AccountHistory.from_tables(split.train.payments, split.train.attempts)

    stage("building decision rows")
    train_data = DecisionData.build(split.train, train_accounts)
    test_data = DecisionData.build(split.test, all_accounts)
    x_retry, y_retry, _ = retry_rows(split.train, train_data)
    x_chan, arm, y_chan, p_chan, _ = channel_rows(split.train, train_data)

    stage("fitting the retry-time model")
    retry_model = RetryTimeModel(
        num_boost_round=config.retry_rounds, calibration_share=config.calibration_share
    ).fit(x_retry, y_retry)
    stage("fitting the channel model")
    channel_model = ChannelUpliftModel(num_boost_round=config.channel_rounds).fit(
        x_chan, arm, y_chan, p_chan
    )
    policy = LearnedPolicy(
        retry_model,
        channel_model,
        all_accounts,
        exploration=config.exploration,
        continuation=continuation_factor(retry_model, x_retry),
    )

    stage("evaluating on the later split")
    x_test, y_test, _ = retry_rows(split.test, test_data)
    p_test = retry_model.predict_proba(x_test)[:, 1]
    results: dict[str, float] = {
        f"retry_{k}": v for k, v in metrics.classifier_metrics(y_test, p_test).items()
    }
    xc, arm_t, yc, pc, _ = channel_rows(split.test, test_data)
    uplift = channel_model.predict(xc[list(channel_model.feature_names_in_)])
    qini_curves = {}
    arm_t = arm_t.to_numpy()
    for ch in uplift.columns:
        rows = np.isin(arm_t, [ch, "none"])
        treated = (arm_t[rows] == ch).astype(int)
        w = 1.0 / pc[rows]
        q = metrics.qini_metrics(uplift[ch].to_numpy()[rows], treated, yc[rows], w)
        results[f"channel_{ch}_qini"] = q["qini"]
        results[f"channel_{ch}_auuc"] = q["auuc"]
        qini_curves[ch] = metrics.qini_curve(uplift[ch].to_numpy()[rows], treated, yc[rows], w)

    estimates, terms = first_message_ope(
        policy, test_data, split.test, channel_model, config.weight_clip
    )
    for name in ("ips", "snips", "dr", "logging"):
        e = estimates[name]
        results.update({f"ope_{name}": e.value, f"ope_{name}_lo": e.lo, f"ope_{name}_hi": e.hi})
    results["ope_ess"] = estimates["ess"]
    results["ope_decisions"] = estimates["n"]
    per_account = per_account_uplift(terms)
    results["accounts_with_positive_uplift_share"] = float(
        (per_account["revenue_uplift"] > 0).mean()
    )
    results["revenue_uplift_total_dr"] = float(per_account["revenue_uplift"].sum())
    results["continuation"] = policy.continuation

    stage("logging to MLflow")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(config.experiment)
    manifest = Path(data_dir) / SIMULATION_MANIFEST
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(
            {
                **asdict(config),
                "data_digest": digest,
                "data_dir": str(data_dir),
                "cutoff": str(split.cutoff),
                "train_payments": len(split.train.payments),
                "test_payments": len(split.test.payments),
                "retry_rows": len(x_retry),
                "retry_calibration": retry_model.calibration_method_,
            }
        )
        if manifest.exists():
            mlflow.log_params({f"sim_{k}": v for k, v in json.loads(manifest.read_text()).items()})
        mlflow.log_metrics(results)
        mlflow.log_table(per_account, "per_account_uplift.json")
        figures = {
            "calibration.png": plots.calibration_curve(metrics.calibration_table(y_test, p_test)),
            "qini.png": plots.qini_curves(qini_curves),
            "recovery_by_day.png": plots.recovery_by_day(split.test),
        }
        for name, fig in figures.items():
            mlflow.log_figure(fig, name)
        policy_path = Path(tmp) / "policy.pkl"
        policy_path.write_bytes(pickle.dumps(policy))
        info = mlflow.pyfunc.log_model(
            name="policy",
            python_model=str(POLICY_CODE),
            artifacts={"policy": str(policy_path)},
            registered_model_name=MODEL_NAME,
        )
        version = str(info.registered_model_version)
        promoted, reason = _maybe_promote(
            MlflowClient(),
            version,
            results,
            policy,
            test_data,
            split.test,
            channel_model,
            config.weight_clip,
        )
        mlflow.set_tags({"champion_decision": reason, "promoted": str(promoted)})
        return TrainResult(run.info.run_id, version, results, promoted, reason, policy, per_account)


def _maybe_promote(
    client: Any,
    version: str,
    results: dict[str, float],
    policy: LearnedPolicy,
    test_data: DecisionData,
    tables: contract.ContractTables,
    channel_model: ChannelUpliftModel,
    clip: float | None,
) -> tuple[bool, str]:
    """Move ``champion`` to ``version`` if its DR value beats the champion's on this test data."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        current = None
    ours = results["ope_dr"]
    if current is None:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        return True, f"no champion yet: version {version} becomes champion (DR {ours:.4f})"
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    theirs_policy = champion.unwrap_python_model().policy
    theirs, _ = first_message_ope(theirs_policy, test_data, tables, channel_model, clip)
    theirs_value = theirs["dr"].value
    if ours > theirs_value:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        return True, (
            f"version {version} DR {ours:.4f} beats champion v{current.version} "
            f"DR {theirs_value:.4f} on this run's test data: promoted"
        )
    return False, (
        f"version {version} DR {ours:.4f} does not beat champion v{current.version} "
        f"DR {theirs_value:.4f} on this run's test data: champion kept"
    )
