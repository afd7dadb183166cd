"""What ``reclaim train`` learns from and is evaluated on, however it was built.

:func:`prepare` builds it in this process from the contract tables; ``training.distributed``
builds the same from the tables partitioned over a Dask cluster. Either way the retry rows
stay where they were built (:class:`RetryRows`: fit, continuation, test predictions), and the
channel rows, the later decisions and their tables are frames in this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from reclaim import contract
from reclaim.features.accounts import AccountHistory
from reclaim.models.retry import RetryTimeModel
from reclaim.models.timing import TimingEffect, fit_timing_effect
from reclaim.training.data import (
    ChannelRows,
    DecisionData,
    TimeSplit,
    channel_rows,
    in_sample,
    randomized,
    retry_rows,
    sample_payments,
    sample_rate,
    time_split,
)


@dataclass
class TrainConfig:
    """What ``reclaim train`` does, all of it logged as run parameters."""

    test_share: float = 0.2
    exploration: float = 0.05
    retry_rounds: int = 300
    retry_early_stopping: int | None = 25
    channel_rounds: int = 200
    calibration_share: float = 0.2
    weight_clip: float | None = None
    experiment: str = "reclaim"
    #: The channel model and the uplift measurement learn from at most about this many
    #: earlier payments (a sample by payment id, each with all its decisions); None: all.
    max_channel_payments: int | None = 250_000
    #: The off-policy evaluation reads at most about this many later payments (sampled the
    #: same way; the retry model's test metrics always read every later retry); None: all.
    max_evaluation_payments: int | None = 250_000
    #: The whole-policy gate rolls the policy and the history's schedule out over at most
    #: about this many later payments (``training.whole_policy``); None: all it evaluates.
    max_rollout_payments: int | None = 5_000
    #: The retry-time model of the gate's world: ``monotone``, one fitted on the same rows
    #: whose chance cannot fall with time alone (``training.whole_policy.TIME_DIRECTION``),
    #: or ``policy``, the policy's own (whose chance can fall with time alone where the
    #: history's retries do not, so that it favours faster schedules; docs/decisions.md).
    gate_world: Literal["monotone", "policy"] = "monotone"
    #: Share of the earlier payments whose network decline and advice codes are hidden from
    #: the models (by payment id): Stripe's network codes are recent and a real history
    #: lacks them for older charges, so the models learn that a missing code says nothing
    #: rather than a decision that swings on its absence (docs/modeling.md).
    network_code_dropout: float = 0.25
    #: Train on data that validation warns about (the warnings become the run's caveats).
    accept_warnings: bool = False
    #: The unit of the payments' amounts in the data: the contract's ``minor`` units, or
    #: ``major`` units (49.99), turned into minor units as they are read (a run caveat says so).
    amounts: Literal["minor", "major"] = "minor"

    def retry_model(self, monotone: dict[str, int] | None = None) -> RetryTimeModel:
        """The retry-time model this configuration asks for, unfitted (with ``monotone``
        constraints, ``RetryTimeModel``'s)."""
        return RetryTimeModel(
            num_boost_round=self.retry_rounds,
            calibration_share=self.calibration_share,
            early_stopping_rounds=self.retry_early_stopping,
            monotone=monotone,
        )

    def world_model(self) -> RetryTimeModel | None:
        """The retry-time model the whole-policy gate rolls policies out through, unfitted
        (``training.whole_policy.TIME_DIRECTION``); None: the policy's own."""
        from reclaim.training.whole_policy import TIME_DIRECTION

        return self.retry_model(TIME_DIRECTION) if self.gate_world == "monotone" else None


class RetryRows(Protocol):
    """The retry-time model's rows (training and later), wherever they are."""

    def __len__(self) -> int:
        """Training rows."""
        ...

    def fit(self, config: TrainConfig, model: RetryTimeModel | None = None) -> RetryTimeModel:
        """``model`` (the configuration's retry-time model by default) fitted on the training
        rows."""
        ...

    def continuation(self, model: RetryTimeModel) -> float:
        """:func:`continuation_factor` of ``model`` over the training rows."""
        ...

    def test_predictions(self, model: RetryTimeModel) -> tuple[np.ndarray, np.ndarray]:
        """Outcomes (0/1) of the later rows and ``model``'s calibrated probabilities."""
        ...

    def support(self) -> pd.DataFrame:
        """The history's support of retrying, one row per training retry: its delay
        (``delay_hours``, from the decision to the retry), and the ``decline_category`` and
        ``decision_number`` of the decision that chose it."""
        ...

    def timing_effect(self, config: TrainConfig) -> TimingEffect | None:
        """The local-time effect the retry model leaves out (``models.timing``), measured on
        out-of-fold predictions of the training rows; None where it is not measured."""
        ...


@dataclass
class Prepared:
    """Everything after the rows are built: counts, channel rows, later decisions."""

    cutoff: pd.Timestamp
    observational: bool
    train_payments: int
    test_payments: int
    retry: RetryRows
    train_payment_ids: pd.Series  # the payment of each training channel row
    train_rows: ChannelRows
    test_rows: ChannelRows
    test_data: DecisionData
    test_tables: contract.ContractTables  # the later payments with their history
    accounts: AccountHistory  # every payment's account events (the policy's)
    warnings: list[str] = field(default_factory=list)  # validation's, accepted to train on


def continuation_sums(model: RetryTimeModel, x: pd.DataFrame) -> np.ndarray:
    """The sums :func:`continuation_factor` divides, over ``x``: the predicted success chance
    as the rows are and after one more failed attempt, and the rows counted."""
    after = x.copy()
    after["decision_number"] += 1
    after["retries_left"] = np.maximum(after["retries_left"] - 1, 0)
    before = model.predict_proba(x)[:, 1].sum()
    return np.array([before, model.predict_proba(after)[:, 1].sum(), len(x)], dtype=float)


def continuation_factor(sums: np.ndarray) -> float:
    """How much the model says one more failed attempt scales a retry's success chance, from
    :func:`continuation_sums` (added up over parts of the rows)."""
    before, after = sums[0], sums[1]
    return float(np.clip(after / max(before, 1e-9 * max(sums[2], 1.0)), 0, 1))


@dataclass
class LocalRetryRows:
    """Retry rows in this process: the earlier payments' (time order) and the later ones'."""

    x: pd.DataFrame
    y: np.ndarray
    x_test: pd.DataFrame
    y_test: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def fit(self, config: TrainConfig, model: RetryTimeModel | None = None) -> RetryTimeModel:
        return (model or config.retry_model()).fit(self.x, self.y)

    def continuation(self, model: RetryTimeModel) -> float:
        return continuation_factor(continuation_sums(model, self.x))

    def support(self) -> pd.DataFrame:
        return support_columns(self.x)

    def timing_effect(self, config: TrainConfig) -> TimingEffect | None:
        """Two folds by time: each half's chances from a model fitted on the other half."""
        return timing_effect(config, self.x, self.y)

    def test_predictions(self, model: RetryTimeModel) -> tuple[np.ndarray, np.ndarray]:
        return self.y_test, model.predict_proba(self.x_test)[:, 1]


SUPPORT_COLUMNS = ("delay_hours", "decline_category", "decision_number")


def support_columns(x: pd.DataFrame) -> pd.DataFrame:
    """The columns of retry rows that say where the history retried (:meth:`RetryRows.support`)."""
    return x[list(SUPPORT_COLUMNS)].reset_index(drop=True)


#: Fewer training retries than this leave the timing effect unmeasured (each fold fits a model).
MIN_TIMING_ROWS = 2_000


def timing_effect(config: TrainConfig, x: pd.DataFrame, y: np.ndarray) -> TimingEffect | None:
    """:func:`models.timing.fit_timing_effect` on retry rows ``x`` (time order) with
    outcomes ``y``, the chances out of fold: the earlier half's from a model fitted on the
    later half, and the other way round. None with fewer than :data:`MIN_TIMING_ROWS` rows
    or where a half holds one outcome only."""
    y = np.asarray(y, dtype=float)
    half = len(x) // 2
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    if len(x) < MIN_TIMING_ROWS or any(len(np.unique(y[f])) < 2 for f, _ in folds):
        return None
    chance = np.zeros(len(x))
    for fit, out in folds:
        model = config.retry_model().fit(x.iloc[fit], y[fit])
        chance[out] = model.predict_proba(x.iloc[out])[:, 1]
    hour = x["retry_local_hour"].to_numpy(dtype=float)
    return fit_timing_effect(y, chance, hour, x["retry_is_weekend"].to_numpy(dtype=float))


class DataWarnings(ValueError):
    """The tables are valid but validation warns about them (amounts that look like major
    units, decline codes Reclaim does not know), and training was not told to accept that."""

    def __init__(self, warnings: list[str]):
        self.warnings = warnings
        major = any("major units" in w for w in warnings)
        super().__init__(
            "validation warns about this data; fix it, "
            + ("read its amounts as major units with --amounts major, " if major else "")
            + "or train on it as it is with --accept-warnings (the warnings become the run's "
            "caveats):\n- " + "\n- ".join(warnings)
        )


def prepare(data_dir: Path, config: TrainConfig) -> Prepared:
    """Read the contract tables in ``data_dir``, split them by time and build every row, in
    this process. :class:`DataWarnings` when validation warns and ``config`` does not accept
    warnings: a model trained on amounts in major units values revenue 100× too low."""
    tables = contract.read_tables(data_dir, config.amounts)
    if tables.warnings and not config.accept_warnings:
        raise DataWarnings(tables.warnings)
    return prepare_tables(tables, config)


def prepare_tables(tables: contract.ContractTables, config: TrainConfig) -> Prepared:
    """:func:`prepare` of tables already read."""
    split = time_split(tables, config.test_share)
    all_accounts = AccountHistory.from_tables(tables.payments, tables.attempts)
    train_accounts = AccountHistory.from_tables(split.train.payments, split.train.attempts)
    rates = sample_rates(config, len(split.train.payments), len(split.test.payments))
    built = split_rows(split, train_accounts, all_accounts, rates, config.network_code_dropout)
    return Prepared(
        cutoff=split.cutoff,
        observational=not randomized(tables),
        train_payments=len(split.train.payments),
        test_payments=len(split.test.payments),
        retry=LocalRetryRows(built.x, built.y, built.x_test, built.y_test),
        train_payment_ids=built.train_payment_ids,
        train_rows=built.train_rows,
        test_rows=built.test_rows,
        test_data=built.test_data,
        test_tables=built.test_tables,
        accounts=all_accounts,
        warnings=list(tables.warnings),
    )


@dataclass
class SplitRows:
    """Every row built from one time split (all payments, or a Dask partition's)."""

    x: pd.DataFrame  # the earlier payments' retry rows, in time order
    y: np.ndarray
    at: np.ndarray  # each of those retries' time, datetime64[us]
    x_test: pd.DataFrame  # the later payments' retry rows
    y_test: np.ndarray
    train_payment_ids: pd.Series  # the payment of each channel row
    train_rows: ChannelRows  # sampled at the first rate
    test_data: DecisionData  # the later decisions, sampled at the second rate
    test_rows: ChannelRows
    test_tables: contract.ContractTables


NETWORK_CODE_FEATURES = ("network_decline_code", "network_advice_code")


def hide_network_codes(data: DecisionData, share: float) -> DecisionData:
    """``data`` with the network codes of a ``share`` of its payments (chosen by payment id,
    so every decision of a payment alike) set missing."""
    if share <= 0:
        return data
    hidden = in_sample(data.keys["payment_id"], share)
    features = data.features.copy()
    for name in NETWORK_CODE_FEATURES:
        features[name] = features[name].where(~hidden)
    return DecisionData(data.batch, data.keys, features)


def split_rows(
    split: TimeSplit,
    train_accounts: AccountHistory,
    all_accounts: AccountHistory,
    rates: tuple[float, float],
    network_code_dropout: float = 0.0,
) -> SplitRows:
    """The retry rows of both sides of ``split`` (all of them), the earlier channel rows and
    the later decisions (sampled at ``rates``, :func:`sample_rates`); the earlier side reads
    ``train_accounts``, the later ``all_accounts``, and hides the network codes of a
    ``network_code_dropout`` share of its payments (:func:`hide_network_codes`)."""
    train_data = hide_network_codes(
        DecisionData.build(split.train, train_accounts), network_code_dropout
    )
    test_data = DecisionData.build(split.test, all_accounts)
    x, y, at = retry_rows(split.train, train_data)
    x_test, y_test, _ = retry_rows(split.test, test_data)
    train_rows, train_payment_ids = sampled_channel_rows(split.train, train_data, rates[0])
    test_tables = sample_payments(split.test, rates[1])
    if rates[1] < 1.0:
        test_data = DecisionData.build(test_tables, all_accounts)
    return SplitRows(
        x=x,
        y=y,
        at=at.to_numpy(dtype="datetime64[us]"),
        x_test=x_test,
        y_test=y_test,
        train_payment_ids=train_payment_ids,
        train_rows=train_rows,
        test_data=test_data,
        test_rows=channel_rows(test_tables, test_data),
        test_tables=test_tables,
    )


def sample_rates(
    config: TrainConfig, train_payments: int, test_payments: int
) -> tuple[float, float]:
    """The sampled shares of the earlier payments (channel rows) and of the later ones
    (evaluation), from :attr:`TrainConfig.max_channel_payments` and
    :attr:`TrainConfig.max_evaluation_payments`."""
    return (
        sample_rate(train_payments, config.max_channel_payments),
        sample_rate(test_payments, config.max_evaluation_payments),
    )


def sampled_channel_rows(
    tables: contract.ContractTables, data: DecisionData, rate: float
) -> tuple[ChannelRows, pd.Series]:
    """:func:`channel_rows` of the ``rate`` sample of the payments, and the payment of each
    row (the rows' ``decision`` numbers them from 0: all the uplift measurement needs of
    ``data``)."""
    rows = channel_rows(tables, data)
    payment = data.keys["payment_id"].iloc[rows.decision].reset_index(drop=True)
    if rate < 1.0:
        keep = np.flatnonzero(in_sample(payment, rate))
        rows, payment = rows.take(keep), payment.iloc[keep].reset_index(drop=True)
    return rows._replace(decision=np.arange(len(payment))), payment
