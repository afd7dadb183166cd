"""``reclaim train``: contract tables in, a registered policy and an MLflow run out.

1. Read and validate the tables; record a digest of the data.
2. Split by time (``training.data.time_split``): models learn from the earlier payments only.
3. Fit the retry-time model (calibrated on its latest rows) and the channel uplift model.
4. Evaluate on the later payments: the retry model's AUC, log loss, Brier score and
   calibration error; each channel's Qini and AUUC; off-policy estimates (IPS, SNIPS, DR) of
   the learned policy's value against the logging policy, with intervals and effective sample
   size; per-account uplift as one table.
5. Value the whole policy against the history's own schedule by a model rollout on the later
   payments (``training.whole_policy``), with a 95% interval.
6. Log plots, register the policy as ``reclaim-policy`` and let the gate (:func:`_gate`) say
   which of three it is: ``champion`` (the whole policy's lower bound beats the history, and
   the current champion), ``challenger`` (not enough evidence, within the history's support)
   or neither (worse than the history with confidence).

Without a randomized log (a platform's own export: no ``decisions`` table) the message each
decision got is read from the messages table and its probability estimated from the history
(``models.propensity``); the run says what that means for trusting its numbers
(:attr:`TrainResult.caveats`, ``caveats.json``). Either way a channel is used only where its
uplift, measured on the training data (doubly robust, cross-fitted), is above zero with 95%
confidence.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reclaim import contract
from reclaim.features.decisions import decision_features, log_amount
from reclaim.features.drift import FeatureReference
from reclaim.intervals import interval
from reclaim.models.channel import (
    CONTROL,
    DEFAULT_CHANNEL,
    ChannelCalibration,
    ChannelUpliftModel,
)
from reclaim.models.policy import CHANNELS, LearnedPolicy
from reclaim.models.propensity import ArmPropensityModel, overlap
from reclaim.models.timing import BANDS
from reclaim.policy import ActionBatch, DecisionBatch, merchant_of_record
from reclaim.rules import NetworkRules, enforce
from reclaim.training import metrics, ope, plots, registry, whole_policy
from reclaim.training.data import (
    ChannelRows,
    DecisionData,
    channel_rows,
    recovered_in_window,
    sample_payments,
    sample_rate,
)
from reclaim.training.prepared import TrainConfig, prepare
from reclaim.training.registry import CHALLENGER, CHAMPION, MODEL_NAME
from reclaim.training.support import supported_delays, supported_retry_counts
from reclaim.training.tracking import use_experiment

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

# CHALLENGER: a version the evidence could not promote but that keeps within the history's
# support: ready for a guarded A/B test (``reclaim train`` prints the command).
POLICY_CODE = Path(__file__).with_name("mlflow_policy.py")
# what unpickling the policy imports; MLflow would otherwise infer them by loading the model in
# a subprocess (seconds per run), and its inference left lightgbm out
MODEL_PACKAGES = (
    "reclaim", "mlflow", "cloudpickle", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn",
    "lightgbm",
)  # fmt: skip


def pip_requirements() -> list[str]:
    """The logged model's requirements: :data:`MODEL_PACKAGES` pinned to the versions installed
    here (a package not installed as a distribution, e.g. reclaim run from a checkout, unpinned)."""
    pinned = []
    for name in MODEL_PACKAGES:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


SIMULATION_MANIFEST = "simulation.json"


#: The stages ``train`` reports through ``on_stage``, in order (for progress bars).
STAGES = (
    "reading tables",
    "building decision rows",
    "… message propensities",
    "fitting the retry-time model",
    "measuring each channel's uplift",
    "fitting the channel model",
    "measuring the retry timing the model left out",
    "evaluating on the later split",
    "valuing the whole policy",
    "logging to MLflow",
)


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
    caveats: list[str] = field(default_factory=list)
    #: Which of three happened: ``champion`` (promoted), ``challenger``, or ``none``.
    gate: str = ""


def data_digest(folder: Path) -> str:
    """SHA-256 (first 16 hex digits) of the contract files' bytes, in name order."""
    h = hashlib.sha256()
    for table in contract.TABLES:
        path = folder / table.file
        if path.exists():
            h.update(table.file.encode())
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()[:16]


def first_message_ope(
    policy: Any,
    data: DecisionData,
    tables: contract.ContractTables,
    channel_model: ChannelUpliftModel,
    clip: float | None = None,
    rows: ChannelRows | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Off-policy value of a policy's message choice at the first failure.

    Estimand: the recovery rate if ``policy`` picks the first decision's message and the
    logging policy does everything else. Reward: recovered within the window (0/1). The
    reward model of the DR estimator is the channel model's per-arm outcome predictions.
    ``rows`` are the logged decisions with their propensities (default: read from the
    ``decisions`` table of ``tables``; an export without one passes estimated propensities).
    Returns the estimates and the per-decision terms (for per-account tables).
    """
    logged_rows = rows if rows is not None else channel_rows(tables, data)
    first = data.keys["decision_number"].to_numpy()[logged_rows.decision] == 0
    decisions = logged_rows.decision[first]
    batch = data.batch.take(decisions)
    feats = logged_rows.features[first].reset_index(drop=True)
    y0 = logged_rows.recovered[first].astype(float)
    # the whole message part: the channel (or none), and who sent it
    logged0 = logged_rows.propensity[first] * logged_rows.sender_propensity[first]
    options = ["none", *CHANNELS]
    col = pd.Categorical(logged_rows.arm[first], categories=options).codes
    target, probs = _target_probabilities(
        policy, batch, col, logged_rows.sender[first].to_numpy(dtype=object)
    )
    q = channel_model.predict_outcomes(feats[list(channel_model.feature_names_in_)])
    # an arm the reward model never saw is predicted like no message
    q = q.reindex(columns=options).apply(lambda c: c.fillna(q[CONTROL])).to_numpy()
    q_logged = q[np.arange(len(decisions)), col]
    q_target = (probs * q).sum(axis=1)
    estimates = ope.all_estimates(y0, logged0, target, q_logged, q_target, clip)
    w = ope.importance_weights(target, logged0, clip)
    terms = pd.DataFrame(
        {
            "payment_id": batch.payments["payment_id"].to_numpy(),
            "account_id": batch.payments["account_id"].to_numpy(),
            "currency": batch.payments["currency"].astype("object").to_numpy(),
            "amount": np.expm1(log_amount(batch.payments)),
            "logged": y0,
            "dr": q_target + w * (y0 - q_logged),
        }
    )
    return estimates, terms


def _target_probabilities(
    policy: Any, batch: DecisionBatch, logged: np.ndarray, logged_sender: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The probability that ``policy``'s message, as the rules leave it, is each logged one
    (option index ``logged`` and, for a message, its sender), and the (n, 4) probabilities of
    each option after the rules: a policy's "no message" is a 3D Secure reminder where the
    rules send one, a channel the customer cannot receive is none — exactly what the logged
    data recorded for the same choice."""
    n, options = len(batch), ["none", *CHANNELS]
    probs, senders = message_probabilities(policy, batch)
    target, after = np.zeros(n), np.zeros((n, len(options)))
    rules = NetworkRules()
    for j, option in enumerate(options):
        if not probs[:, j].any():
            continue
        message = option != "none"
        enforced = enforce(
            batch,
            ActionBatch.build(
                n,
                channel=np.full(n, option if message else None, dtype=object),
                sender=senders if message else None,
            ),
            rules,
        )
        k = pd.Categorical(
            enforced.channel.astype("object").fillna("none"), categories=options
        ).codes
        after[np.arange(n), k] += probs[:, j]
        same = (k == logged) & ((logged == 0) | (enforced.sender.astype("object") == logged_sender))
        target += probs[:, j] * same
    return target, after


def message_probabilities(policy: Any, batch: DecisionBatch) -> tuple[np.ndarray, np.ndarray]:
    """What ``policy`` would do about messages at these decisions: (n, 4) probabilities of
    each option (none, email, sms, in_app) — the learned policy's own, with exploration; any
    other policy's chosen option, as the rules leave it, with probability 1 — and the sender
    it would use (each policy's sender is a rule, not a draw)."""
    if isinstance(policy, LearnedPolicy):
        own = decision_features(batch, policy.accounts, policy.network_rules)
        return policy.channel_probabilities(batch, own), policy.senders(batch)
    actions = enforce(batch, policy.act(batch, np.random.default_rng(0)), NetworkRules())
    options = ["none", *CHANNELS]
    chosen = pd.Categorical(actions.channel.astype("object").fillna("none"), categories=options)
    probs = np.zeros((len(batch), len(options)))
    probs[np.arange(len(batch)), chosen.codes] = 1.0
    senders = actions.sender.astype("object").to_numpy()
    default = merchant_of_record(batch.payments).astype("object").to_numpy()
    return probs, np.where(pd.isna(senders), default, senders)


#: MLflow's type for each contract column kind (times: per use).
COLUMN_KINDS = {
    "str": "string", "category": "string", "int": "long", "float": "double", "bool": "boolean"
}  # fmt: skip


def _dataset(folder: Path, digest: str) -> Any:
    """The contract tables in ``folder`` as an MLflow dataset (its source, name, digest and
    the payments table's schema), for ``log_input``: a run says what it learned from."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.types import ColSpec, Schema

    kinds = COLUMN_KINDS | {"timestamp": "datetime"}
    schema = Schema(
        [ColSpec(kinds[c.kind], c.name, required=not c.nullable) for c in contract.PAYMENTS.columns]
    )
    source = LocalArtifactDatasetSource(str(folder.resolve()))
    return MetaDataset(source, name=folder.name, digest=digest, schema=schema)


def recovery_by_currency(tables: contract.ContractTables) -> dict[str, float]:
    """The history's recovery on ``tables`` (the later payments) per currency: the rate
    (``logged_recovery_rate_<cur>``, in [0, 1]) and the amount recovered in the currency's
    major units (``logged_recovered_<cur>``) — never summed across currencies."""
    won = recovered_in_window(tables)
    p = tables.payments.assign(paid=won.reindex(tables.payments["payment_id"]).to_numpy())
    out: dict[str, float] = {}
    for cur, g in p.groupby(p["currency"].astype("object"), sort=True):
        out[f"logged_recovery_rate_{cur}"] = float(g["paid"].mean())
        minor = int(g.loc[g["paid"], "amount"].sum())
        out[f"logged_recovered_{cur}"] = contract.major(minor, str(cur))
    return out


def per_account_uplift(terms: pd.DataFrame) -> pd.DataFrame:
    """Per connected account and currency: decisions, the logging policy's recovery rate, the
    learned policy's DR estimate of it (within [0, 1], as is its interval), and the
    recovered-revenue uplift they imply, in the currency's major units — never summed across
    currencies."""
    g = terms.assign(
        rev_logged=terms["logged"] * terms["amount"], rev_dr=terms["dr"] * terms["amount"]
    ).groupby(["account_id", "currency"])
    rate = g["dr"].mean()
    se = (g["dr"].std(ddof=1) / np.sqrt(g.size())).fillna(np.inf)
    out = pd.DataFrame(
        {
            "decisions": g.size(),
            "logged_recovery_rate": g["logged"].mean(),
            "policy_recovery_rate_dr": rate.clip(0.0, 1.0),
            "policy_recovery_rate_lo": (rate - ope.Z95 * se).clip(0.0, 1.0),
            "policy_recovery_rate_hi": (rate + ope.Z95 * se).clip(0.0, 1.0),
            "revenue_logged": g["rev_logged"].sum(),
        }
    )
    # revenue at the rate within [0, 1]: a DR mean outside it is noise, not money
    out["revenue_policy_dr"] = out["policy_recovery_rate_dr"] * g["amount"].sum()
    out["revenue_uplift"] = out["revenue_policy_dr"] - out["revenue_logged"]
    out["uplift_rate_lo"] = out["policy_recovery_rate_lo"] - out["logged_recovery_rate"]
    out["uplift_rate_hi"] = out["policy_recovery_rate_hi"] - out["logged_recovery_rate"]
    return out.reset_index().sort_values("decisions", ascending=False)


def revenue_uplift_by_currency(per_account: pd.DataFrame) -> dict[str, float]:
    """Total DR revenue uplift per currency (major units), as ``revenue_uplift_dr_<cur>``."""
    totals = per_account.groupby("currency")["revenue_uplift"].sum()
    return {f"revenue_uplift_dr_{cur}": float(v) for cur, v in totals.items()}


def observed_propensities(
    train_rows: ChannelRows, test_rows: ChannelRows, randomized_log: bool
) -> tuple[ChannelRows, ChannelRows, list[str], dict[str, Any]]:
    """Propensities for an export without a randomized log, estimated on the training rows
    (``models.propensity``) and applied to both; with the caveats they carry and the test
    rows' overlap report. Rows from a randomized log pass through unchanged."""
    if randomized_log:
        return train_rows, test_rows, [], overlap(test_rows.propensity, test_rows.arm)
    model = ArmPropensityModel().fit(train_rows.features, train_rows.arm)
    train_rows = train_rows.with_propensity(model.logged(train_rows.features, train_rows.arm))
    test_rows = test_rows.with_propensity(model.logged(test_rows.features, test_rows.arm))
    report = overlap(test_rows.propensity, test_rows.arm)
    caveats = [
        "no randomized log (no decisions table): message propensities were estimated from the "
        "history; the channel uplift and the off-policy values assume the export's features "
        "explain who got which message (no hidden confounding), so treat them as indicative",
        f"overlap: {report['share_below_floor']:.1%} of later decisions had an estimated "
        f"probability below {report['floor']:.2f} for the message they got; smallest per arm "
        + ", ".join(f"{a} {p:.3f}" for a, p in report["min_propensity_per_arm"].items()),
    ]
    rare = [a for a, n in report["rows_per_arm"].items() if n < 100]
    if rare:
        caveats.append(f"arms with under 100 later decisions (their values are noise): {rare}")
    return train_rows, test_rows, caveats, report


@dataclass
class MeasuredUplift:
    """Each channel's uplift over no message, measured on the training decisions: overall, at
    the first decision and at later ones (95% intervals), and the calibration the policy reads
    its model through."""

    overall: dict[str, ope.Estimate]
    first: dict[str, ope.Estimate]
    later: dict[str, ope.Estimate]
    calibration: dict[str, ChannelCalibration]
    #: (channel, "first" | "later") -> why the history cannot tell its effect there
    unidentified: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (channel, "first" | "later") -> how much more it recovers than the default channel,
    #: paired on the decisions whose customer could receive both
    versus_default: dict[tuple[str, str], ope.Estimate] = field(default_factory=dict)

    def closed(self) -> list[str]:
        """Where a channel is not used: ``email (later decisions): +0.1 pts (95% CI …)``, or
        ``email (first decision): not identified from this history: …``."""
        out = []
        for ch in CHANNELS:
            for key, stage, found in (
                ("first", "first decision", self.first),
                ("later", "later decisions", self.later),
            ):
                why = self.unidentified.get((ch, key))
                e = found.get(ch)
                if why is not None:
                    out.append(f"{ch} ({stage}): not identified from this history: {why}")
                elif e is None or not e.lo > 0:
                    out.append(f"{ch} ({stage}): {_pts(e) if e is not None else 'never sent'}")
        return out


#: A stratum shows both sides of a choice when each holds at least this share of its
#: decisions, and MIN_SIDE of them.
MIN_SHARE, MIN_SIDE = 0.02, 10
#: A channel's effect at a stage is identified when such strata hold this share of the
#: stage's decisions, with MIN_IDENTIFIED decisions on each side in them.
MIN_MIXED, MIN_IDENTIFIED = 0.2, 50


def identification(features: pd.DataFrame, arm: pd.Series, mask: np.ndarray, ch: str) -> str | None:
    """Why the effect of ``ch`` over no message cannot be told from these decisions
    (``mask``: a stage's), or None when it can.

    Within each stratum the history's own features fix (the decline's category, at this
    stage), the decisions must show both ``ch`` and no message, each in at least
    :data:`MIN_SHARE` of them: a logger that always (or never) sends ``ch`` there leaves
    nothing to compare, whatever a propensity model fitted to it says (its estimates sit
    near 1 or 0; positivity is checked on both sides). Such strata must hold
    :data:`MIN_MIXED` of the stage's decisions and :data:`MIN_IDENTIFIED` on each side."""
    sub = pd.DataFrame(
        {
            "stratum": features["decline_category"].astype("object").fillna("?").to_numpy()[mask],
            "ch": (arm.to_numpy()[mask] == ch),
            "none": (arm.to_numpy()[mask] == CONTROL),
        }
    )
    sub = sub[sub["ch"] | sub["none"]]
    if sub.empty or not sub["ch"].any():
        return f"{ch} was never sent here"
    if not sub["none"].any():
        return f"every decision here got {ch}"
    g = sub.groupby("stratum")[["ch", "none"]].agg(["sum", "count"])
    n = g[("ch", "count")]
    share = g[("ch", "sum")] / n
    mixed = (
        share.between(MIN_SHARE, 1 - MIN_SHARE)
        & (g[("ch", "sum")] >= MIN_SIDE)
        & (g[("none", "sum")] >= MIN_SIDE)
    )
    ones, nones = int(g.loc[mixed, ("ch", "sum")].sum()), int(g.loc[mixed, ("none", "sum")].sum())
    if n[mixed].sum() < MIN_MIXED * len(sub) or min(ones, nones) < MIN_IDENTIFIED:
        return (
            f"within each decline category the history all but always sent {ch} or all but "
            f"always sent nothing ({share.clip(0, 1).mul(100).round(0).astype(int).to_dict()}% "
            f"sent {ch})"
        )
    return None


def measured_uplift(
    rows: ChannelRows, config: TrainConfig, payment_ids: pd.Series, folds: int = 2
) -> MeasuredUplift:
    """Each channel's uplift over no message on the training decisions, doubly robust with
    cross-fitting: each payment's outcomes are predicted by a channel model fit on the other
    folds' payments, so the per-decision effects (AIPW pseudo-outcomes) and the model's
    predictions they are compared with are out of sample. ``payment_ids``: the payment of
    each decision of the rows' ``DecisionData``."""
    payment = pd.factorize(payment_ids.astype("object").to_numpy()[rows.decision])[0]
    fold = payment % folds
    arms = sorted(set(rows.arm.tolist()))
    q = {a: np.zeros(len(rows.arm)) for a in arms}
    for k in range(folds):
        fit, out = rows.take(np.flatnonzero(fold != k)), np.flatnonzero(fold == k)
        model = ChannelUpliftModel(num_boost_round=config.channel_rounds).fit(
            fit.features, fit.arm, fit.recovered, fit.propensity
        )
        pred = model.predict_outcomes(rows.features.iloc[out])
        for a in arms:  # an arm the fold never saw is predicted like no message
            q[a][out] = (pred[a] if a in pred.columns else pred[CONTROL]).to_numpy()
    effects = ope.aipw_effects(rows.recovered, rows.arm.to_numpy(), rows.propensity, q, CONTROL)
    first = rows.features["decision_number"].to_numpy() == 0
    result = MeasuredUplift({}, {}, {}, {})
    for ch, psi in effects.items():
        predicted = q[ch] - q[CONTROL]
        stages = {}
        for name, mask in (("first", first), ("later", ~first)):
            why = identification(rows.features, rows.arm, mask, ch)
            if why is not None:  # reported as such, never estimated, never acted on
                result.unidentified[(ch, name)] = why
                continue
            if mask.sum() > 1:
                e = ope.mean_estimate(psi[mask])
                getattr(result, name)[ch] = e
                stages[name] = (e.value if e.lo > 0 else None, float(predicted[mask].mean()))
        known = ~np.where(
            first,
            (ch, "first") in result.unidentified,
            (ch, "later") in result.unidentified,
        )
        if known.any():
            result.overall[ch] = ope.mean_estimate(psi[known])
        # how much of the model's spread is real: measured effects on predicted, per stage
        dx = predicted - np.where(first, predicted[first].mean(), predicted[~first].mean())
        dy = psi - np.where(first, psi[first].mean(), psi[~first].mean())
        slope = float(np.clip((dx * dy).sum() / max((dx * dx).sum(), 1e-12), 0.0, 1.0))
        # the history's own choice where its effect is not identified: all but always
        # sending it there (never sending it leaves the channel closed there)
        sent = rows.arm.to_numpy() == ch
        keep = {
            name: bool(
                mask.any()
                and (ch, name) in result.unidentified
                and sent[mask].mean() >= 1 - MIN_SHARE
            )
            for name, mask in (("first", first), ("later", ~first))
        }
        ahead = {name: ch == DEFAULT_CHANNEL for name in ("first", "later")}
        if ch != DEFAULT_CHANNEL and DEFAULT_CHANNEL in effects and rows.reachable is not None:
            both = rows.reachable[f"reachable_{ch}"].to_numpy(dtype=bool) & rows.reachable[
                f"reachable_{DEFAULT_CHANNEL}"
            ].to_numpy(dtype=bool)
            for name, mask in (("first", first), ("later", ~first)):
                mine = mask & both
                if mine.sum() > 1 and (ch, name) not in result.unidentified:
                    e = ope.mean_estimate(psi[mine] - effects[DEFAULT_CHANNEL][mine])
                    result.versus_default[(ch, name)] = e
                    ahead[name] = bool(e.lo > 0)
        elif ch != DEFAULT_CHANNEL:  # nothing to compare with: as before
            ahead = {"first": True, "later": True}
        result.calibration[ch] = ChannelCalibration(
            first=stages.get("first", (None, 0.0))[0],
            later=stages.get("later", (None, 0.0))[0],
            slope=slope,
            center_first=stages.get("first", (None, 0.0))[1],
            center_later=stages.get("later", (None, 0.0))[1],
            keep_first=keep["first"],
            keep_later=keep["later"],
            ahead_first=ahead["first"],
            ahead_later=ahead["later"],
        )
    return result


def _pts(e: ope.Estimate) -> str:
    return interval(e.value, e.lo, e.hi, pts=True)


def _run_name(data_dir: Path, observational: bool, cutoff: pd.Timestamp) -> str:
    kind = "observational" if observational else "randomized"
    return f"train {Path(data_dir).name} ({kind}, test from {cutoff:%Y-%m-%d})"


def train(
    data_dir: Path,
    tracking_uri: str,
    config: TrainConfig | None = None,
    on_stage: Callable[[str], None] | None = None,
    artifact_uri: str | None = None,
    dask: Client | None = None,
) -> TrainResult:
    """Train, evaluate and register a policy from the contract tables in ``data_dir``.

    ``artifact_uri`` is where a new experiment keeps its artifacts (default: the tracking
    store's own choice); ``on_stage`` is told each stage's name as it starts. With ``dask``
    (a ``distributed.Client``) the tables are read and the rows built per payment partition
    on its cluster, and the retry-time model is trained there (``training.distributed``).
    """
    import mlflow
    from mlflow import MlflowClient

    config = config or TrainConfig()
    stage = on_stage or (lambda name: log.info(name))
    stage("reading tables")
    digest = data_digest(Path(data_dir))
    if dask is None:
        stage("building decision rows")
        prepared = prepare(Path(data_dir), config)
    else:
        from reclaim.training import distributed  # Dask is only imported when asked for

        prepared = distributed.prepare(dask, Path(data_dir), config, stage)
    observational = prepared.observational
    train_rows, test_rows = prepared.train_rows, prepared.test_rows
    test_data, test_tables = prepared.test_data, prepared.test_tables
    stage("estimating message propensities" if observational else "reading message propensities")
    train_rows, test_rows, caveats, overlap_report = observed_propensities(
        train_rows, test_rows, not observational
    )
    caveats += [f"accepted with --accept-warnings: {w}" for w in prepared.warnings]
    if config.amounts == "major":
        caveats.append(
            "amounts read as major units (--amounts major) and turned into minor units: ×100, "
            "zero-decimal currencies such as jpy ×1"
        )

    stage("fitting the retry-time model")
    retry_model = prepared.retry.fit(config)
    stage("measuring each channel's uplift")
    uplift = measured_uplift(train_rows, config, prepared.train_payment_ids)
    closed = uplift.closed()
    if closed:
        caveats.append(
            "not used where the measured uplift is not above zero with 95% confidence: "
            + "; ".join(closed)
        )
    stage("fitting the channel model")
    channel_model = ChannelUpliftModel(num_boost_round=config.channel_rounds).fit(
        train_rows.features, train_rows.arm, train_rows.recovered, train_rows.propensity
    )
    stage("measuring the retry timing the model left out")
    timing = prepared.retry.timing_effect(config)
    caveats.append(
        timing.describe()
        if timing is not None
        else "retry timing: not measured beyond the retry model (too few retries, or one "
        "outcome only in a half of them); the policy acts on the model's chances as they are"
    )
    logged = prepared.retry.support()
    delays, why_delays = supported_delays(logged["delay_hours"].to_numpy(dtype=float))
    last_retry, why_counts = supported_retry_counts(logged)
    caveats += [why_delays, why_counts]
    policy = LearnedPolicy(
        retry_model,
        channel_model,
        prepared.accounts,
        delays_hours=delays,
        exploration=config.exploration,
        continuation=prepared.retry.continuation(retry_model),
        channel_calibration=uplift.calibration,
        feature_reference=FeatureReference.from_frame(train_rows.features),
        last_retry=last_retry,
        timing=timing,
    )

    stage("evaluating on the later split")
    y_test, p_test = prepared.retry.test_predictions(retry_model)
    results: dict[str, float] = {
        f"retry_{k}": v for k, v in metrics.classifier_metrics(y_test, p_test).items()
    }
    results["retry_trees"] = float(retry_model.booster_.num_trees())
    for suffix, found in (("", uplift.overall), ("_first", uplift.first), ("_later", uplift.later)):
        for ch, e in found.items():
            name = f"uplift_{ch}{suffix}"
            results.update({name: e.value, f"{name}_lo": e.lo, f"{name}_hi": e.hi})
    for ch, cal in uplift.calibration.items():
        results[f"uplift_{ch}_slope"] = cal.slope
    for (ch, when), e in uplift.versus_default.items():
        name = f"uplift_{ch}_vs_{DEFAULT_CHANNEL}_{when}"
        results.update({name: e.value, f"{name}_lo": e.lo, f"{name}_hi": e.hi})
    qini_curves = {}
    if len(channel_model.arms_) > 1:
        uplift_test = channel_model.predict(
            test_rows.features[list(channel_model.feature_names_in_)]
        )
        arm_t, yc, pc = test_rows.arm.to_numpy(), test_rows.recovered, test_rows.propensity
        for ch in uplift_test.columns:
            rows = np.isin(arm_t, [ch, "none"])
            treated = (arm_t[rows] == ch).astype(int)
            w = 1.0 / pc[rows]
            score = uplift_test[ch].to_numpy()[rows]
            q = metrics.qini_metrics(score, treated, yc[rows], w)
            results[f"channel_{ch}_qini"] = q["qini"]
            results[f"channel_{ch}_auuc"] = q["auuc"]
            qini_curves[ch] = metrics.qini_curve(score, treated, yc[rows], w)

    estimates, terms = first_message_ope(
        policy, test_data, test_tables, channel_model, config.weight_clip, test_rows
    )
    for name in ("ips", "snips", "dr", "logging"):
        e = estimates[name]
        results.update({f"ope_{name}": e.value, f"ope_{name}_lo": e.lo, f"ope_{name}_hi": e.hi})
    results["ope_ess"] = estimates["ess"]
    results["ope_decisions"] = estimates["n"]
    if estimates["ips"].value > 1 or estimates["ips"].lo > 1:
        caveats.append(
            f"the IPS estimate {estimates['ips'].value:.3f} is above 1, which no recovery rate "
            "can be: the logged propensities do not describe how messages were chosen (is the "
            "sender, or anything else, randomized too?)"
        )
    per_account = per_account_uplift(terms)
    results["accounts_with_positive_uplift_share"] = float(
        (per_account["revenue_uplift"] > 0).mean()
    )
    results.update(revenue_uplift_by_currency(per_account))
    results["continuation"] = policy.continuation
    if timing is not None:
        results.update({f"timing_{band}": c for band, c in zip(BANDS, timing.coef, strict=True)})
    results["overlap_share_below_floor"] = overlap_report["share_below_floor"]
    first_vs_logging = ope.mean_estimate(terms["dr"].to_numpy() - terms["logged"].to_numpy())

    stage("valuing the whole policy")
    world_model = config.world_model()
    # the gate's world: a retry model whose chance cannot fall with time alone, or the
    # policy's own (TrainConfig.gate_world)
    world = retry_model if world_model is None else prepared.retry.fit(config, world_model)
    rate = sample_rate(len(test_tables.payments), config.max_rollout_payments)
    rolled = sample_payments(test_tables, rate)
    history = whole_policy.LoggedSchedule(rolled, whole_policy.fallback_delays(logged))

    paid = whole_policy.customer_paid_at(rolled.payments, rolled.attempts)

    def roll(p: Any, messages: pd.DataFrame | None = None) -> whole_policy.Rollout:
        empty = contract.empty(contract.MESSAGES)
        sent = empty if messages is None else messages
        return whole_policy.rollout(
            p,
            rolled.payments,
            sent,
            world,
            prepared.accounts,
            customer_paid=paid,
            timing=timing,
        )

    ours = roll(policy)
    whole = whole_policy.compare(ours, roll(history, rolled.messages))
    results |= {
        "whole_policy": whole.policy,
        "whole_history": whole.history,
        # the model check: what the history recovered of the same payments
        "whole_history_observed": float(recovered_in_window(rolled).mean()),
        "whole_uplift": whole.uplift.value,
        "whole_uplift_lo": whole.uplift.lo,
        "whole_uplift_hi": whole.uplift.hi,
        "whole_payments": float(whole.payments),
        "whole_median_gap_hours": whole.policy_median_gap,
        "history_median_gap_hours": whole.history_median_gap,
        "whole_retries_per_payment": whole.policy_retries,
        "history_retries_per_payment": whole.history_retries,
        # the model's calibration where the rollout leans on it: predicted over observed
        # successes of the later logged retries (1: right on average)
        "retry_predicted_over_observed": float(p_test.sum() / max(y_test.sum(), 1)),
    }
    caveats.append(
        "whole-policy value by model rollout (training.whole_policy): assumes the export's "
        "features explain who got which retry time, the retry model is right within the "
        "history's support"
        + (
            " (a retry model fitted on the same rows whose chance cannot fall with time alone)"
            if world_model is not None
            else ""
        )
        + ", a failed retry declines as the first failure did, and customers "
        "pay by themselves when they did in the history; its interval is over payments, not "
        "the model's own error. Model check: the rollout of the history's own schedule "
        f"recovers {whole.history:.1%} of the later payments, which recovered "
        f"{results['whole_history_observed']:.1%}; the retry model predicts "
        f"{results['retry_predicted_over_observed']:.2f}× the later retries' successes"
    )

    stage("logging to MLflow")
    mlflow.set_tracking_uri(tracking_uri)
    use_experiment(config.experiment, artifact_uri)
    manifest = Path(data_dir) / SIMULATION_MANIFEST
    description = (
        f"Retry-time and channel models trained on {prepared.train_payments:,} payments of "
        f"{data_dir} before {prepared.cutoff:%Y-%m-%d %H:%M} UTC and evaluated on the "
        f"{prepared.test_payments:,} after. "
        + ("Randomized log." if not observational else "Observational export. ")
        + (" Caveats: " + "; ".join(caveats) if caveats else "")
    )
    run_name = _run_name(Path(data_dir), observational, prepared.cutoff)
    with (
        mlflow.start_run(run_name=run_name, description=description) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.log_params(
            {
                **asdict(config),
                "data_digest": digest,
                "data_dir": str(data_dir),
                "data_kind": "observational" if observational else "randomized",
                "cutoff": str(prepared.cutoff),
                "train_payments": prepared.train_payments,
                "test_payments": prepared.test_payments,
                "retry_rows": len(prepared.retry),
                "channel_rows": len(train_rows.arm),
                "evaluation_payments": len(test_tables.payments),
                "dask_workers": 0 if dask is None else len(dask.scheduler_info()["workers"]),
                "retry_calibration": retry_model.calibration_method_,
                "channels_closed": "; ".join(closed) or "none",
            }
        )
        if manifest.exists():
            mlflow.log_params({f"sim_{k}": v for k, v in json.loads(manifest.read_text()).items()})
        mlflow.log_input(_dataset(Path(data_dir), digest), context="training")
        results |= recovery_by_currency(test_tables)
        mlflow.log_metrics({k: float(v) for k, v in results.items() if np.isfinite(v)})
        mlflow.log_table(per_account, "per_account_uplift.json")
        mlflow.log_dict({"caveats": caveats, "overlap": overlap_report}, "caveats.json")
        # every feature's missing share and distribution at training: serving's skew reference
        mlflow.log_dict(policy.feature_reference.to_dict(), "feature_reference.json")
        figures = {
            "calibration.png": plots.calibration_curve(metrics.calibration_table(y_test, p_test)),
            "recovery_by_day.png": plots.recovery_by_day(test_tables),
        }
        if qini_curves:
            figures["qini.png"] = plots.qini_curves(qini_curves)
        for name, fig in figures.items():
            mlflow.log_figure(fig, name)
        policy_path = Path(tmp) / "policy.pkl"
        policy_path.write_bytes(pickle.dumps(policy))
        example, signature = _signature(test_tables.payments)
        info = mlflow.pyfunc.log_model(
            name="policy",
            python_model=str(POLICY_CODE),
            artifacts={"policy": str(policy_path)},
            registered_model_name=MODEL_NAME,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )
        version = str(info.registered_model_version)
        client = MlflowClient()
        outcome, reason = _gate(client, version, whole, first_vs_logging, ours, roll)
        client.update_model_version(MODEL_NAME, version, description=description)
        for tag, value in {
            "data_kind": "observational" if observational else "randomized",
            "data_digest": digest,
            "data_dir": str(data_dir),
            "test_from": f"{prepared.cutoff:%Y-%m-%d}",
            "gate": outcome,
            "whole_uplift": interval(
                whole.uplift.value, whole.uplift.lo, whole.uplift.hi, pts=True
            ),
        }.items():
            client.set_model_version_tag(MODEL_NAME, version, tag, value)
        promoted = outcome == CHAMPION
        if outcome == CHALLENGER:
            reason = _as_challenger(client, version, reason)
        mlflow.set_tags(
            {
                "champion_decision": reason,
                "promoted": str(promoted),
                "gate": outcome,
                "caveats": len(caveats),
            }
        )
        return TrainResult(
            run.info.run_id,
            version,
            results,
            promoted,
            reason,
            policy,
            per_account,
            caveats,
            outcome,
        )


def _signature(payments: pd.DataFrame) -> tuple[pd.DataFrame, Any]:
    """The pyfunc model's input example — five payments and their decision times, with times
    as ISO 8601 text (what a JSON caller sends) — and its signature, written from the data
    contract: the payment columns (required unless the contract lets them be null) and
    ``decided_at``; out, one action per row."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from reclaim.training.mlflow_policy import model_input  # models-from-code: load late

    kinds = COLUMN_KINDS | {"timestamp": "string"}  # times travel as ISO 8601 text
    # a nullable whole number (the platform's fee) travels as a double: JSON and pandas have
    # no integer with a null, and MLflow refuses a long column holding one
    inputs = [
        ColSpec(
            "double" if c.kind == "int" and c.nullable else kinds[c.kind],
            c.name,
            required=not c.nullable,
        )
        for c in contract.PAYMENTS.columns
    ]
    inputs.append(ColSpec("string", "decided_at"))
    outputs = [
        ColSpec("string", "payment_id"),
        ColSpec("datetime", "retry_at", required=False),
        ColSpec("string", "channel", required=False),
        ColSpec("string", "sender", required=False),
        ColSpec("double", "propensity"),
        ColSpec("string", "reason"),
    ]
    rows = payments.head(5)
    example = model_input(rows, rows["failed_at"])
    return example, ModelSignature(Schema(inputs), Schema(outputs))


def _as_challenger(client: Any, version: str, reason: str) -> str:
    """Make ``version``, which the evidence could not promote, the ``challenger`` (it keeps
    within the history's support: ``training.support``, :func:`identification`); returns
    ``reason`` with the command that tests it against live traffic."""
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    return reason + (
        f"; version {version} is the challenger: its offline evidence is not enough to "
        "promote it, and it stays within the history's support. Test it on live traffic "
        "with a small treatment share (the rest keep the reference schedule closest to "
        "the platform's), and read `reclaim report` until it stops the test: "
        f"RECLAIM_POLICY_URI=models:/{MODEL_NAME}@{CHALLENGER} "
        "RECLAIM_EXPERIMENT_CONTROL=stripe_like RECLAIM_EXPERIMENT_CONTROL_SHARE=0.9 "
        f"RECLAIM_EXPERIMENT_NAME=challenger-v{version} reclaim serve"
    )


#: How much worse than the history's first message a promoted policy's may be (its upper
#: bound): the price of a little exploration, not a loss worth stopping for.
FIRST_MESSAGE_MARGIN = 0.005


def _gate(
    client: Any,
    version: str,
    whole: whole_policy.WholePolicyValue,
    first_message: ope.Estimate,
    ours: whole_policy.Rollout,
    roll: Callable[[Any], whole_policy.Rollout],
) -> tuple[str, str]:
    """Which of three ``version`` is — ``champion``, ``challenger`` or ``none`` (no alias) —
    and why, in one sentence.

    Promoted when the whole policy's value beats the history's schedule with 95% confidence
    (the lower bound of the paired uplift is above 0; ``training.whole_policy``), its first
    message is not worse than the history's by more than :data:`FIRST_MESSAGE_MARGIN` with
    95% confidence (doubly robust; a non-inferiority margin: exploration alone costs a
    little), and it beats the current champion rolled out on the same payments. Worse with
    95% confidence on either measure: no alias. Anything between: the challenger, ready for
    a guarded A/B test (it keeps within the history's support by construction).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    up, first = whole.uplift, first_message
    said = (
        f"whole policy {whole.policy:.1%} against the history's schedule {whole.history:.1%} "
        f"on {whole.payments:,} later payments (model rollout): "
        f"{interval(up.value, up.lo, up.hi, pts=True)}; first message (doubly robust) "
        f"{interval(first.value, first.lo, first.hi, pts=True)} against the history's"
    )
    if up.hi < 0:
        return "none", (
            f"version {version} is worse than the history's schedule with 95% confidence: {said}"
        )
    if first.hi < -FIRST_MESSAGE_MARGIN:
        return "none", (
            f"version {version}'s first message is worse than the history's by more than "
            f"{FIRST_MESSAGE_MARGIN * 100:g} pts with 95% confidence: {said}"
        )
    if not (up.lo > 0):
        return CHALLENGER, (
            f"version {version} not promoted: the lower bound of its uplift is not above "
            f"zero: {said}"
        )
    try:
        current = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        current = None
    if current is None:
        registry.promote(client, version)
        return CHAMPION, f"no champion yet: version {version} becomes champion: {said}"
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    theirs = roll(champion.unwrap_python_model().policy)
    vs = ope.mean_estimate(ours.value - theirs.value)
    against = (
        f"against champion v{current.version} rolled out on the same payments "
        f"{interval(vs.value, vs.lo, vs.hi, pts=True)}"
    )
    if vs.value > 0:
        registry.promote(client, version)  # tagged with the champion it replaces
        return CHAMPION, f"version {version} promoted: {said}; {against}"
    return CHALLENGER, f"version {version} not promoted, champion kept: {said}; {against}"
