"""``reclaim train --dask``: the rows built per payment partition on a Dask cluster, the
retry-time model trained there with LightGBM's own distributed training.

1. Each contract table is read as a ``dask.dataframe`` and partitioned by a hash of its
   ``payment_id`` (:func:`read_partitioned`): partition *i* of every table holds the same
   payments, and a payment's rows never split. Each partition is validated as contract tables
   on its worker.
2. The time split's cutoff comes from every payment's first failure (one column, collected);
   each partition is split at it.
3. Account aggregates need every partition's past: each partition's account events
   (``features.accounts.AccountEvents``, a few columns per payment and retry) are collected,
   joined into the one ``AccountHistory`` and sent to every worker, so each decision reads
   only events before its day — whatever partition they came from.
4. Decision rows, retry rows and channel rows are built per partition by the same functions
   as in one process (``training.data``): one definition per feature.
5. The retry-time model's boosting runs on the workers (``lightgbm.DaskLGBMClassifier``,
   data-parallel) over the earlier training rows; its latest rows (``calibration_share``,
   collected) choose the number of trees as early stopping would and calibrate it.
6. The channel rows and the later split's decisions are collected for the channel model,
   the uplift measurement and the evaluation, which run as in one process.

Only Parquet tables are read this way (CSV has no row groups to split and is read whole).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from reclaim import contract
from reclaim.cluster import worker_count
from reclaim.features.accounts import AccountEvents, AccountHistory
from reclaim.features.decisions import build_decision_rows
from reclaim.models import lgbm
from reclaim.models.retry import RetryTimeModel, round_losses
from reclaim.models.timing import TimingEffect
from reclaim.training.data import (
    ChannelRows,
    DecisionData,
    TimeSplit,
    concat_tables,
    payment_hash,
    randomized,
    split_cutoff,
    time_split,
)
from reclaim.training.prepared import (
    Prepared,
    SplitRows,
    TrainConfig,
    continuation_factor,
    continuation_sums,
    sample_rates,
    split_rows,
    support_columns,
    timing_effect,
)

log = logging.getLogger(__name__)

#: Attempts per partition aimed at: a partition's rows, features and retry rows take a few
#: hundred MiB of a worker's memory at this size.
PARTITION_ATTEMPTS = 250_000

#: LightGBM's native parameter names (``models.retry.DEFAULT_PARAMS``) as its scikit-learn
#: estimator (which ``lightgbm.dask`` wraps) spells them.
SKLEARN_NAMES = {
    "min_data_in_leaf": "min_child_samples",
    "feature_fraction": "colsample_bytree",
    "bagging_fraction": "subsample",
    "bagging_freq": "subsample_freq",
    "lambda_l2": "reg_lambda",
    "seed": "random_state",
    "num_threads": "n_jobs",
}


def partition_count(folder: Path, workers: int) -> int:
    """Partitions for the tables in ``folder``: about :data:`PARTITION_ATTEMPTS` attempts
    each, and at least two per worker."""
    path = Path(folder) / contract.ATTEMPTS.file
    attempts = pq.ParquetFile(path).metadata.num_rows if path.exists() else 0
    return max(2 * workers, math.ceil(attempts / PARTITION_ATTEMPTS))


def partition_of(payment_id: pd.Series, npartitions: int) -> pd.Series:
    """The partition of each payment id (``training.data.payment_hash``, the same in every
    process)."""
    part = payment_hash(payment_id) % np.uint64(npartitions)
    return pd.Series(part.astype("int64"), index=payment_id.index)


def read_partitioned(folder: Path, npartitions: int) -> dict[str, Any]:
    """The contract tables in ``folder`` as ``dask.dataframe``s of ``npartitions``
    partitions by payment: partition *i* of each holds the rows of the same payments, with the
    partition number as index. A missing optional table is left out; a missing required one
    is a :class:`~reclaim.contract.ContractProblems` naming it."""
    import dask.dataframe as dd

    folder = Path(folder)
    frames: dict[str, Any] = {}
    missing = []
    for table in contract.TABLES:
        path = folder / table.file
        if not path.exists():
            if table.required:
                csv = folder / f"{table.name}.csv"
                why = "file not found" + (
                    f" ({csv.name} is there: --dask reads Parquet only)" if csv.exists() else ""
                )
                missing.append(contract.ContractError(str(path), None, why))
            continue
        ddf = dd.read_parquet(str(path), split_row_groups=True)  # a partition per row group
        part = ddf["payment_id"].map_partitions(
            partition_of, npartitions, meta=("_partition", "int64")
        )
        divisions = [*range(npartitions), npartitions - 1]
        frames[table.name] = ddf.assign(_partition=part).set_index(
            "_partition", divisions=divisions
        )
    if missing:
        raise contract.ContractProblems(missing)
    return frames


def partitions(client: Any, folder: Path, npartitions: int) -> list[Any]:
    """Futures of the validated contract tables of each partition (``ContractTables``)."""
    import dask

    frames = read_partitioned(folder, npartitions)
    delayed = {name: f.to_delayed() for name, f in frames.items()}
    tasks = [
        dask.delayed(_validate)({name: parts[i] for name, parts in delayed.items()})
        for i in range(npartitions)
    ]
    return client.compute(tasks)


def _validate(raw: dict[str, pd.DataFrame]) -> contract.ContractTables:
    return contract.validate({k: v.reset_index(drop=True) for k, v in raw.items()})


def decision_rows(client: Any, folder: Path, npartitions: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`~reclaim.features.decisions.build_decision_rows` of the tables in ``folder``,
    built per partition on the cluster and collected: ``(keys, features)`` indexed from 0,
    the partitions' rows one after another."""
    parts = partitions(client, folder, npartitions)
    events = client.gather(client.map(_all_events, parts))
    accounts = client.scatter(AccountHistory.from_events(events), broadcast=True, hash=False)
    built = client.gather(client.map(_decision_rows, parts, accounts=accounts))
    keys = pd.concat([k for k, _ in built], ignore_index=True)
    return keys, pd.concat([f for _, f in built], ignore_index=True)


def _all_events(tables: contract.ContractTables) -> AccountEvents:
    return AccountEvents.of(tables.payments, tables.attempts)


def _decision_rows(
    tables: contract.ContractTables, accounts: AccountHistory
) -> tuple[pd.DataFrame, pd.DataFrame]:
    return build_decision_rows(tables, accounts=accounts)


@dataclass
class PartitionCollected:
    """What is collected of one partition: counts, channel rows and the later decisions."""

    train_payments: int
    test_payments: int
    train_payment_ids: pd.Series
    train_rows: ChannelRows
    test_data: DecisionData
    test_rows: ChannelRows
    test_tables: contract.ContractTables
    randomized: bool


def _split(tables: contract.ContractTables, cutoff: pd.Timestamp) -> TimeSplit:
    return time_split(tables, cutoff=cutoff)


def _events(split: TimeSplit) -> tuple[AccountEvents, AccountEvents]:
    return (
        AccountEvents.of(split.train.payments, split.train.attempts),
        AccountEvents.of(split.test.payments, split.test.attempts),
    )


def _rows(
    split: TimeSplit,
    train_accounts: AccountHistory,
    all_accounts: AccountHistory,
    rates: tuple[float, float],
    network_code_dropout: float = 0.0,
) -> tuple[SplitRows, PartitionCollected]:
    """One partition's rows: the whole ``SplitRows`` stays on the worker (its retry rows are
    read there), and what the driver collects of it."""
    built = split_rows(split, train_accounts, all_accounts, rates, network_code_dropout)
    collected = PartitionCollected(
        train_payments=len(split.train.payments),
        test_payments=len(split.test.payments),
        train_payment_ids=built.train_payment_ids,
        train_rows=built.train_rows,
        test_data=built.test_data,
        test_rows=built.test_rows,
        test_tables=built.test_tables,
        randomized=randomized(split.train) or randomized(split.test),
    )
    return built, collected


def _counts(split: TimeSplit) -> tuple[int, int]:
    return len(split.train.payments), len(split.test.payments)


def _field(obj: Any, field: str) -> Any:
    return getattr(obj, field)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _times(rows: SplitRows) -> np.ndarray:
    return rows.at


#: The timing effect reads at most about this many training retries (a random share of each
#: partition's): three regression parameters need far fewer, and the rows come to one process.
MAX_TIMING_ROWS = 400_000


def _timing_rows(
    rows: SplitRows, share: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The partition's training retries (a random ``share`` of them) with their times."""
    keep = np.ones(len(rows.y), dtype=bool)
    if share < 1.0:
        keep = np.random.default_rng(seed).random(len(rows.y)) < share
    return rows.x[keep], np.asarray(rows.y)[keep], rows.at[keep]


def _before(rows: SplitRows, threshold: np.datetime64) -> tuple[pd.DataFrame, pd.Series]:
    keep = rows.at < threshold
    return rows.x[keep].reset_index(drop=True), pd.Series(rows.y[keep], name="y")


def _later_losses(rows: SplitRows, threshold: np.datetime64, booster: Any) -> np.ndarray:
    """The summed log-loss of the partition's calibration rows after each round."""
    keep = rows.at >= threshold
    if not keep.any():
        return np.zeros(booster.current_iteration())
    return round_losses(booster, rows.x[keep], rows.y[keep])


def _later_raw(
    rows: SplitRows, threshold: np.datetime64, booster: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The kept booster's raw predictions of the partition's calibration rows, and their
    outcomes."""
    keep = rows.at >= threshold
    if not keep.any():
        return np.zeros(0), np.zeros(0)
    return lgbm.predict(booster, rows.x[keep]), rows.y[keep]


def _continuation(rows: SplitRows, model: RetryTimeModel) -> np.ndarray:
    return continuation_sums(model, rows.x)


def _support(rows: SplitRows) -> pd.DataFrame:
    return support_columns(rows.x)


def _test_predictions(rows: SplitRows, model: RetryTimeModel) -> tuple[np.ndarray, np.ndarray]:
    return rows.y_test, model.predict_proba(rows.x_test)[:, 1]


@dataclass
class DaskRetryRows:
    """Retry rows kept on the workers, partition by partition (``training.prepared.RetryRows``)."""

    client: Any
    parts: list[Any]  # futures of SplitRows
    rows: int

    def __len__(self) -> int:
        return self.rows

    def fit(self, config: TrainConfig, model: RetryTimeModel | None = None) -> RetryTimeModel:
        """Boost on the workers over the rows before the latest ``calibration_share`` (by
        time, as in one process), then choose the trees and calibrate on those latest rows,
        which stay on the workers: only each round's summed log-loss and the kept model's raw
        predictions come back."""
        import dask.dataframe as dd
        import lightgbm as lgb

        model = model or config.retry_model()
        times = np.sort(np.concatenate(self.client.gather(self.client.map(_times, self.parts))))
        n_cal = int(round(len(times) * config.calibration_share))
        n_fit = len(times) - n_cal
        threshold = times[n_fit] if n_cal else np.datetime64("9999-12-31", "us")
        fit = self.client.map(_before, self.parts, threshold=threshold)
        x_meta, y_meta = self.client.submit(_before, self.parts[0], times[0]).result()
        x = dd.from_delayed(self.client.map(_first, fit), meta=x_meta.iloc[:0])
        y = dd.from_delayed(self.client.map(_second, fit), meta=y_meta.iloc[:0])

        params = model.lightgbm_params(n_fit, list(x_meta.columns))
        params["num_threads"] = max(self.client.nthreads().values())
        kwargs = {SKLEARN_NAMES.get(k, k): v for k, v in params.items()}
        booster = (
            lgb.DaskLGBMClassifier(client=self.client, n_estimators=model.num_boost_round, **kwargs)
            .fit(x, y)
            .to_local()
            .booster_
        )
        if n_cal == 0:
            model.early_stopping_rounds = None
        shared = self.client.scatter(booster, broadcast=True, hash=False)
        losses = np.sum(
            self.client.gather(
                self.client.map(_later_losses, self.parts, threshold=threshold, booster=shared)
            ),
            axis=0,
        ) / max(n_cal, 1)

        def predict_later(kept: Any) -> tuple[np.ndarray, np.ndarray]:
            on = self.client.scatter(kept, broadcast=True, hash=False)
            found = self.client.gather(
                self.client.map(_later_raw, self.parts, threshold=threshold, booster=on)
            )
            return np.concatenate([r for r, _ in found]), np.concatenate([t for _, t in found])

        return model.finish(booster, list(x_meta.columns), losses, predict_later)

    def continuation(self, model: RetryTimeModel) -> float:
        shared = self.client.scatter(model, broadcast=True, hash=False)
        sums = self.client.gather(self.client.map(_continuation, self.parts, model=shared))
        return continuation_factor(np.sum(sums, axis=0))

    def support(self) -> pd.DataFrame:
        parts = self.client.gather(self.client.map(_support, self.parts))
        return pd.concat(parts, ignore_index=True)

    def timing_effect(self, config: TrainConfig) -> TimingEffect | None:
        """Measured in this process on the workers' training retries — all of them, or a
        random share of each partition's where there are more than
        :data:`MAX_TIMING_ROWS` — in time order (``training.prepared.timing_effect``)."""
        share = min(1.0, MAX_TIMING_ROWS / max(self.rows, 1))
        found = self.client.gather(
            self.client.map(
                _timing_rows, self.parts, share=share, seed=list(range(len(self.parts)))
            )
        )
        at = np.concatenate([a for _, _, a in found])
        order = np.argsort(at, kind="stable")
        x = pd.concat([x for x, _, _ in found], ignore_index=True).iloc[order]
        y = np.concatenate([y for _, y, _ in found])[order]
        return timing_effect(config, x.reset_index(drop=True), y)

    def test_predictions(self, model: RetryTimeModel) -> tuple[np.ndarray, np.ndarray]:
        shared = self.client.scatter(model, broadcast=True, hash=False)
        found = self.client.gather(self.client.map(_test_predictions, self.parts, model=shared))
        return np.concatenate([y for y, _ in found]), np.concatenate([p for _, p in found])


def prepare(
    client: Any,
    folder: Path,
    config: TrainConfig,
    on_stage: Callable[[str], None] | None = None,
    npartitions: int | None = None,
) -> Prepared:
    """:func:`training.prepared.prepare` on the cluster of ``client``: the same rows, built per
    payment partition; the retry rows stay on the workers."""
    stage = on_stage or (lambda name: log.info(name))
    n = npartitions or partition_count(folder, worker_count(client))
    parts = partitions(client, folder, n)
    failed = client.gather(client.map(lambda t: t.payments["failed_at"], parts))
    cutoff = split_cutoff(pd.concat(failed, ignore_index=True), config.test_share)
    splits = client.map(_split, parts, cutoff=cutoff)
    del parts  # the splits hold every row; the unsplit tables can go

    stage("building decision rows")
    counts = np.sum(client.gather(client.map(_counts, splits)), axis=0)
    rates = sample_rates(config, int(counts[0]), int(counts[1]))
    events = client.gather(client.map(_events, splits))
    train_accounts = AccountHistory.from_events([e[0] for e in events])
    all_accounts = AccountHistory.from_events([e[0] for e in events] + [e[1] for e in events])
    del events  # the driver keeps only the histories (the policy needs every account's)
    built = client.map(
        _rows,
        splits,
        train_accounts=client.scatter(train_accounts, broadcast=True, hash=False),
        all_accounts=client.scatter(all_accounts, broadcast=True, hash=False),
        rates=rates,
        network_code_dropout=config.network_code_dropout,
    )
    del splits, train_accounts
    retry = client.map(_first, built)
    collected = client.map(_second, built)
    del built

    def gathered(field: str) -> list[Any]:
        # one field of every partition at a time: the driver never holds a field twice over
        return client.gather(client.map(_field, collected, field=field))

    rows = sum(client.gather(client.map(len, client.map(_times, retry))))
    counts = {f: gathered(f) for f in ("train_payments", "test_payments", "randomized")}
    train_payment_ids = gathered("train_payment_ids")
    decisions = [len(ids) for ids in train_payment_ids]
    train_rows = ChannelRows.concat(gathered("train_rows"), decisions)
    test_data = gathered("test_data")
    test_decisions = [len(d.keys) for d in test_data]
    test_data_all = DecisionData.concat(test_data)
    del test_data
    return Prepared(
        cutoff=cutoff,
        observational=not any(counts["randomized"]),
        train_payments=sum(counts["train_payments"]),
        test_payments=sum(counts["test_payments"]),
        retry=DaskRetryRows(client, retry, rows),
        train_payment_ids=pd.concat(train_payment_ids, ignore_index=True),
        train_rows=train_rows,
        test_rows=ChannelRows.concat(gathered("test_rows"), test_decisions),
        test_data=test_data_all,
        test_tables=concat_tables(gathered("test_tables")),
        accounts=all_accounts,
    )
