"""``reclaim evaluate --data DIR``: registered policies and the reference policies compared on
a platform's own history, off-policy, on a later period none of them was trained on.

The data's latest ``test_share`` of payments (by first failure) is the evaluation period; the
earlier payments fit what the estimators need and nothing else: the reward model of the
doubly robust estimator (a channel model of the evaluation's own) and, for an export without
a randomized log, the message propensities. Every policy is valued on the same decisions — its
message choice at each payment's first failure, the history's own actions everywhere else
(``training.pipeline.first_message_ope``) — so two policies' estimates are compared row by row
(paired differences, with intervals). An estimate whose importance weights leave fewer than
``min_ess`` effective decisions is refused, not printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reclaim import contract
from reclaim.features.accounts import AccountHistory
from reclaim.models.channel import ChannelUpliftModel
from reclaim.reference import REFERENCE_POLICIES
from reclaim.training import ope
from reclaim.training.data import DecisionData, channel_rows, randomized, time_split
from reclaim.training.pipeline import first_message_ope, observed_propensities


@dataclass
class OfflineComparison:
    """One row per policy: its estimates, its paired differences, and whether it was refused."""

    table: pd.DataFrame
    caveats: list[str] = field(default_factory=list)
    decisions: int = 0
    cutoff: pd.Timestamp | None = None
    run_id: str | None = None


def _paired(a: np.ndarray, b: np.ndarray) -> ope.Estimate:
    """Mean of a − b over the same decisions, with its 95% interval."""
    return ope.mean_estimate(np.asarray(a, float) - np.asarray(b, float))


def compare_offline(
    data_dir: Path,
    policies: dict[str, Any],
    test_share: float = 0.2,
    min_ess: float = 200.0,
    channel_rounds: int = 200,
    on_stage: Callable[[str], None] | None = None,
) -> OfflineComparison:
    """Value each of ``policies`` (name → policy; the first is the baseline of the paired
    differences, usually the champion) and the reference policies on the later period.

    Returns a table indexed by policy with ``dr``, ``dr_lo``, ``dr_hi``, ``snips``, ``ips``
    (each with ``_lo``/``_hi``), ``ess``, ``refused`` (a reason, or ""), and the paired
    differences ``vs_logging`` and ``vs_<baseline>`` with ``_lo``/``_hi``. Rates are
    recovery rates within the window, in [0, 1] (the DR and IPS values are clipped to it for
    display; the raw values are kept in ``*_raw``).
    """
    stage = on_stage or (lambda _: None)
    stage("reading tables")
    tables = contract.read_tables(data_dir)
    split = time_split(tables, test_share)
    stage("building decision rows")
    train_data = DecisionData.build(
        split.train, AccountHistory.from_tables(split.train.payments, split.train.attempts)
    )
    test_data = DecisionData.build(
        split.test, AccountHistory.from_tables(tables.payments, tables.attempts)
    )
    train_rows, test_rows, caveats, report = observed_propensities(
        channel_rows(split.train, train_data),
        channel_rows(split.test, test_data),
        randomized(tables),
    )
    stage("fitting the reward model on the earlier period")
    reward = ChannelUpliftModel(num_boost_round=channel_rounds).fit(
        train_rows.features, train_rows.arm, train_rows.recovered, train_rows.propensity
    )
    everyone = {**policies, **{name: cls() for name, cls in REFERENCE_POLICIES.items()}}
    rows: dict[str, dict[str, Any]] = {}
    terms: dict[str, np.ndarray] = {}
    logged: np.ndarray | None = None
    for name, policy in everyone.items():
        stage(f"valuing {name}")
        est, t = first_message_ope(policy, test_data, split.test, reward, rows=test_rows)
        terms[name], logged = t["dr"].to_numpy(), t["logged"].to_numpy()
        row: dict[str, Any] = {"ess": est["ess"], "decisions": est["n"]}
        for k in ("dr", "snips", "ips"):
            e = est[k]
            row |= {f"{k}_raw": e.value, k: np.clip(e.value, 0, 1)}
            row |= {f"{k}_lo": np.clip(e.lo, 0, 1), f"{k}_hi": np.clip(e.hi, 0, 1)}
        row["refused"] = (
            f"effective sample {est['ess']:,.0f} of {est['n']:,} decisions is below {min_ess:,.0f}"
            if est["ess"] < min_ess
            else ""
        )
        rows[name] = row
    assert logged is not None
    baseline = next(iter(policies), None)
    for name, row in rows.items():
        vs_logging = _paired(terms[name], logged)
        row |= {"vs_logging": vs_logging.value, "vs_logging_lo": vs_logging.lo}
        row["vs_logging_hi"] = vs_logging.hi
        if baseline is not None:
            vs = _paired(terms[name], terms[baseline])
            row |= {"vs_baseline": vs.value, "vs_baseline_lo": vs.lo, "vs_baseline_hi": vs.hi}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "policy"
    logging_value = float(np.mean(logged)) if len(logged) else float("nan")
    table.attrs |= {"logging": logging_value, "baseline": baseline or "", "overlap": report}
    if not randomized(tables):
        caveats.append(
            "the reference policies' retry schedules are not what is valued here: only their "
            "first message is (the history's retries are kept), as for every policy"
        )
    return OfflineComparison(table, caveats, int(len(logged)), split.cutoff)


def evaluate_on_data(
    data_dir: Path,
    tracking_uri: str,
    models: dict[str, str],
    test_share: float = 0.2,
    min_ess: float = 200.0,
    on_stage: Callable[[str], None] | None = None,
) -> OfflineComparison:
    """Load ``models`` (name → model URI) from MLflow, compare them with
    :func:`compare_offline`, and log the table to a run of the first model's experiment."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    loaded = {name: mlflow.pyfunc.load_model(uri) for name, uri in models.items()}
    policies = {name: m.unwrap_python_model().policy for name, m in loaded.items()}
    result = compare_offline(data_dir, policies, test_share, min_ess, on_stage=on_stage)
    first = next(iter(loaded.values()))
    experiment = MlflowClient().get_run(first.metadata.run_id).info.experiment_id
    name = f"evaluate {Path(data_dir).name} (later {test_share:.0%}, from {result.cutoff:%Y-%m-%d})"
    with mlflow.start_run(run_name=name, experiment_id=experiment) as run:
        mlflow.log_params(
            {
                **{f"model_{k}": v for k, v in models.items()},
                "data_dir": str(data_dir),
                "test_share": test_share,
                "min_ess": min_ess,
                "cutoff": str(result.cutoff),
                "decisions": result.decisions,
            }
        )
        for policy, row in result.table.iterrows():
            if not row["refused"]:
                mlflow.log_metrics({f"{policy}_dr": float(row["dr"]), f"{policy}_ess": row["ess"]})
        mlflow.log_table(result.table.reset_index(), "offline_comparison.json")
        mlflow.log_dict({"caveats": result.caveats}, "caveats.json")
        result.run_id = run.info.run_id
    return result
