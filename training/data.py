"""Training data: the time split and the rows each model learns from.

The split is by the time of each payment's first failure: every payment, with all its
attempts, messages and decisions, falls on exactly one side, and every training payment failed
before every test payment did. Models never see a test payment; evaluation never scores a
training one (``tests/training/test_data.py`` proves both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from reclaim import contract, vocab
from reclaim.features.accounts import AccountHistory
from reclaim.features.candidates import channel_or_none, retry_features
from reclaim.features.decisions import decision_features, decision_points
from reclaim.policy import DecisionBatch
from reclaim.rules import NetworkRules


@dataclass
class TimeSplit:
    """Tables before and from ``cutoff`` (by first failure)."""

    train: contract.ContractTables
    test: contract.ContractTables
    cutoff: pd.Timestamp


def subset(tables: contract.ContractTables, payment_ids: pd.Index) -> contract.ContractTables:
    """The tables restricted to ``payment_ids``."""

    def keep(df: pd.DataFrame) -> pd.DataFrame:
        return df[df["payment_id"].isin(payment_ids)].reset_index(drop=True)

    return contract.ContractTables(
        keep(tables.payments),
        keep(tables.attempts),
        keep(tables.messages),
        keep(tables.decisions),
    )


def payment_hash(payment_id: pd.Series) -> np.ndarray:
    """A 64-bit hash of each payment id, the same in every process and on every run: Dask
    partitions take its low bits, samples its high ones."""
    return pd.util.hash_array(payment_id.astype("object").to_numpy())


def in_sample(payment_id: pd.Series, rate: float) -> np.ndarray:
    """Whether each payment is in the ``rate`` sample of payments (by :func:`payment_hash`:
    a payment is in or out with all its decisions, in one process as on a cluster)."""
    if rate >= 1.0:
        return np.ones(len(payment_id), dtype=bool)
    return (payment_hash(payment_id) >> np.uint64(32)) < np.uint64(int(rate * 2**32))


def sample_payments(tables: contract.ContractTables, rate: float) -> contract.ContractTables:
    """The tables of the ``rate`` sample of their payments (:func:`in_sample`)."""
    if rate >= 1.0:
        return tables
    p = tables.payments
    return subset(tables, pd.Index(p.loc[in_sample(p["payment_id"], rate), "payment_id"]))


def sample_rate(payments: int, most: int | None) -> float:
    """The share of ``payments`` that keeps about ``most`` of them (1 when they are fewer)."""
    return 1.0 if most is None or payments <= most else most / payments


def split_cutoff(failed_at: pd.Series, test_share: float) -> pd.Timestamp:
    """The first failure time from which payments are tested: the latest ``test_share`` of
    ``failed_at`` (every payment's first failure) are at or after it."""
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must be in (0, 1), got {test_share}")
    return failed_at.sort_values().iloc[int(len(failed_at) * (1 - test_share))]


def time_split(
    tables: contract.ContractTables, test_share: float = 0.2, cutoff: pd.Timestamp | None = None
) -> TimeSplit:
    """Split by first-failure time: the latest ``test_share`` of payments are the test set
    (or, given ``cutoff``, the payments that failed at or after it: a partition of a larger
    history is split at the whole history's cutoff)."""
    failed = tables.payments["failed_at"]
    if cutoff is None:
        cutoff = split_cutoff(failed, test_share)
    train_ids = pd.Index(tables.payments.loc[failed < cutoff, "payment_id"])
    test_ids = pd.Index(tables.payments.loc[failed >= cutoff, "payment_id"])
    return TimeSplit(subset(tables, train_ids), subset(tables, test_ids), cutoff)


def concat_tables(parts: list[contract.ContractTables]) -> contract.ContractTables:
    """One set of tables from several sets holding different payments (a Dask run's
    partitions), in their order."""
    return contract.ContractTables(
        **{
            t.name: contract.concat([getattr(p, t.name) for p in parts], t) for t in contract.TABLES
        },
        warnings=sorted({w for p in parts for w in p.warnings}),
    )


@dataclass
class DecisionData:
    """Every decision of some tables with its features."""

    batch: DecisionBatch
    keys: pd.DataFrame
    features: pd.DataFrame

    @classmethod
    def concat(cls, parts: list[DecisionData]) -> DecisionData:
        """The decisions of several sets of payments, in order, indexed from 0."""

        def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
            return pd.concat(frames, ignore_index=True)

        batch = DecisionBatch(
            cat([p.batch.payments for p in parts]),
            pd.concat([p.batch.now for p in parts], ignore_index=True),
            cat([p.batch.state for p in parts]),
        )
        return cls(batch, cat([p.keys for p in parts]), cat([p.features for p in parts]))

    @classmethod
    def build(
        cls,
        tables: contract.ContractTables,
        accounts: AccountHistory,
        network_rules: NetworkRules | None = None,
    ) -> DecisionData:
        batch, keys = decision_points(tables)
        return cls(batch, keys, decision_features(batch, accounts, network_rules))


def recovered_in_window(tables: contract.ContractTables, window_days: float = 30.0) -> pd.Series:
    """Whether each payment (by id) was recovered within its window."""
    ok = tables.attempts[tables.attempts["outcome"] == vocab.Outcome.SUCCEEDED]
    first = ok.groupby("payment_id")["attempted_at"].min()
    pay = tables.payments.set_index("payment_id")
    end = pay["failed_at"] + pd.Timedelta(days=window_days)
    return (first.reindex(pay.index) <= end).fillna(False).astype(bool)


def retry_rows(
    tables: contract.ContractTables, data: DecisionData
) -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    """One row per logged merchant retry: the features of the decision that chose it plus the
    retry time's, whether it succeeded, and when it happened — sorted by that time."""
    a = tables.attempts
    retries = a[(a["initiator"] == vocab.Initiator.MERCHANT) & (a["attempt_number"] > 0)]
    index = pd.MultiIndex.from_frame(
        data.keys[["payment_id", "decision_number"]].astype({"payment_id": "object"})
    )
    wanted = pd.MultiIndex.from_arrays(
        [retries["payment_id"].astype("object"), retries["attempt_number"] - 1]
    )
    pos = index.get_indexer(wanted)
    keep = pos >= 0
    retries, pos = retries[keep], pos[keep]
    order = np.argsort(retries["attempted_at"].to_numpy(dtype="datetime64[us]"), kind="stable")
    retries, pos = retries.iloc[order], pos[order]
    x = retry_features(
        data.batch.take(pos),
        data.features.iloc[pos].reset_index(drop=True),
        contract.utc(retries["attempted_at"], pd.RangeIndex(len(retries))),
    )
    y = (retries["outcome"] == vocab.Outcome.SUCCEEDED).to_numpy().astype(int)
    return x, y, contract.utc(retries["attempted_at"], x.index)


class ChannelRows(NamedTuple):
    """The channel model's rows: one per logged decision."""

    features: pd.DataFrame
    arm: pd.Series  # the channel taken, or "none"
    recovered: np.ndarray  # 0/1: recovered within the window
    propensity: np.ndarray  # probability of the logged arm (NaN: not known yet)
    decision: np.ndarray  # position of each row among ``DecisionData``'s decisions
    sender: pd.Series  # who sent the message (None where there was none)
    sender_propensity: np.ndarray  # probability of that sender given the arm (1: not random)
    #: per row, whether the customer could receive each channel (``reachable_<channel>``
    #: columns of the payment); None where not known
    reachable: pd.DataFrame | None = None

    def with_propensity(self, propensity: np.ndarray) -> ChannelRows:
        return self._replace(propensity=np.asarray(propensity, dtype=float))

    @classmethod
    def concat(cls, parts: list[ChannelRows], decisions: list[int]) -> ChannelRows:
        """The rows of several sets of decisions, in order, each part's ``decision`` moved past
        the ``decisions`` (counts) of the parts before it, as :meth:`DecisionData.concat`
        numbers them."""
        offsets = np.concatenate([[0], np.cumsum(decisions)[:-1]]).astype(int)

        def cat(frames: list[pd.Series] | list[pd.DataFrame]) -> pd.Series | pd.DataFrame:
            return pd.concat(frames, ignore_index=True)

        return cls(
            cat([p.features for p in parts]),
            cat([p.arm for p in parts]),
            np.concatenate([p.recovered for p in parts]),
            np.concatenate([p.propensity for p in parts]),
            np.concatenate([p.decision + o for p, o in zip(parts, offsets, strict=True)]),
            cat([p.sender for p in parts]),
            np.concatenate([p.sender_propensity for p in parts]),
            None if any(p.reachable is None for p in parts) else cat([p.reachable for p in parts]),  # type: ignore[misc]
        )

    def take(self, rows: np.ndarray) -> ChannelRows:
        return ChannelRows(
            self.features.iloc[rows].reset_index(drop=True),
            self.arm.iloc[rows].reset_index(drop=True),
            self.recovered[rows],
            self.propensity[rows],
            self.decision[rows],
            self.sender.iloc[rows].reset_index(drop=True),
            self.sender_propensity[rows],
            None if self.reachable is None else self.reachable.iloc[rows].reset_index(drop=True),
        )


def randomized(tables: contract.ContractTables) -> bool:
    """Whether the tables hold a randomized log (a ``decisions`` table with propensities)."""
    return not tables.decisions.empty


def channel_rows(tables: contract.ContractTables, data: DecisionData) -> ChannelRows:
    """One row per decision: its features, the arm taken, whether the payment was recovered
    within its window, and the arm's probability.

    From a randomized log (the ``decisions`` table) the arm and its logged probability are
    read. Without one — a platform's own export — every decision point of ``data`` is a row,
    its arm is the first message sent at or after it and before the next decision point (or
    ``none``), and the probability is NaN: the caller estimates it
    (``models.propensity.ArmPropensityModel``) from earlier data.
    """
    d = tables.decisions
    recovered = recovered_in_window(tables)
    columns = [f"reachable_{ch.value}" for ch in vocab.Channel]
    reachable = data.batch.payments.reindex(columns=columns).fillna(True).astype(bool)
    if d.empty:
        arm, sender = _observed_arms(tables.messages, data.keys)
        ids = data.keys["payment_id"].astype("object")
        return ChannelRows(
            data.features.reset_index(drop=True),
            arm,
            recovered.reindex(ids).fillna(False).to_numpy().astype(int),
            np.full(len(arm), np.nan),
            np.arange(len(arm)),
            sender,
            np.ones(len(arm)),  # without a log, the sender is taken as chosen by rule
            reachable.reset_index(drop=True),
        )
    key = pd.MultiIndex.from_frame(
        data.keys[["payment_id", "decision_number"]].astype({"payment_id": "object"})
    )
    pos = key.get_indexer(
        pd.MultiIndex.from_arrays([d["payment_id"].astype("object"), d["decision_number"]])
    )
    keep = pos >= 0
    d, pos = d[keep], pos[keep]
    return ChannelRows(
        data.features.iloc[pos].reset_index(drop=True),
        channel_or_none(d["channel"]).reset_index(drop=True),
        recovered.reindex(d["payment_id"].astype("object")).to_numpy().astype(int),
        d["channel_propensity"].to_numpy(dtype=float),
        pos,
        d["sender"].astype("object").where(d["sender"].notna(), None).reset_index(drop=True),
        d["sender_propensity"].to_numpy(dtype=float),
        reachable.iloc[pos].reset_index(drop=True),
    )


def _observed_arms(messages: pd.DataFrame, keys: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per decision point (row of ``keys``): the channel and sender of the first message sent
    at or after it and before the payment's next decision point, else ``none`` and None."""
    arm = pd.Series("none", index=pd.RangeIndex(len(keys)), dtype="object")
    sender = pd.Series(None, index=arm.index, dtype="object")
    if messages.empty or keys.empty:
        return arm, sender
    points = pd.DataFrame(
        {
            "payment_id": keys["payment_id"].astype("object").to_numpy(),
            "at": keys["decided_at"].to_numpy(dtype="datetime64[us]"),
            "pos": np.arange(len(keys)),
        }
    ).sort_values("at", kind="stable")
    sent = pd.DataFrame(
        {
            "payment_id": messages["payment_id"].astype("object").to_numpy(),
            "at": messages["sent_at"].to_numpy(dtype="datetime64[us]"),
            "channel": messages["channel"].astype("object").to_numpy(),
            "sender": messages["sender"].astype("object").to_numpy(),
        }
    ).sort_values("at", kind="stable")
    owner = pd.merge_asof(sent, points, on="at", by="payment_id", direction="backward")
    owner = owner.dropna(subset=["pos"])
    first = owner.groupby("pos", sort=False)[["channel", "sender"]].first()
    rows = first.index.to_numpy(dtype=int)
    arm.iloc[rows] = first["channel"].to_numpy()
    sender.iloc[rows] = first["sender"].to_numpy()
    return arm, sender
