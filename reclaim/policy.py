"""The policy interface shared by the simulator, the reference policies, the learned policy
and the scoring API.

A policy sees what the service would see at a decision point — the payment, its attempts and
messages so far, the current time — and returns the next action: a retry time or none, a
message channel and sender or none, and the probability of that action under the policy.
Everything is batched (one row per payment deciding now); the API decides a batch of one.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd

from reclaim import contract, vocab
from reclaim.timeline import Timeline

#: Columns of :attr:`DecisionBatch.state`, the history summary a decision is made on.
STATE_COLUMNS = (
    "decision_number",  # merchant retries so far: 0 right after the failure
    "last_attempt_at",
    "last_decline_code",
    "last_advice_code",
    "last_network_decline_code",
    "last_network_advice_code",
    "ever_hard",  # any failure so far forbids retrying
    "recovered",  # a succeeded attempt is already recorded
    "n_email",
    "n_sms",
    "n_in_app",
    "last_message_at",
)


def _micros(times: pd.Series) -> np.ndarray:
    """UTC timestamps as datetime64[us] (NaT kept)."""
    return times.to_numpy(dtype="datetime64[us]")


def summarize_history(
    payments: pd.DataFrame,
    attempts: pd.DataFrame,
    messages: pd.DataFrame,
    now: pd.Series,
) -> pd.DataFrame:
    """Summarise each decision's payment history as it stood at the decision's time.

    Parameters
    ----------
    payments
        Contract payment rows, one per decision (n rows); a payment may appear once per
        decision point, as in training data.
    attempts, messages
        Contract rows (rows of other payments are ignored). Attempts count up to and including
        the decision time (the failure that triggered the decision is known); messages count
        strictly before it (a message sent *at* the decision is that decision's own action).
        Nothing later is read, so a summary cannot see the future.
    now
        Decision time per row of ``payments`` (UTC), same index.

    Returns
    -------
    pd.DataFrame with :data:`STATE_COLUMNS`, index of ``payments``.
    """
    # One integer code per payment id, shared by the three timelines below.
    codes, _ = pd.factorize(
        pd.concat(
            [payments["payment_id"], attempts["payment_id"], messages["payment_id"]],
            ignore_index=True,
        )
    )
    pid = codes[: len(payments)]
    a_pid = codes[len(payments) : len(payments) + len(attempts)]
    m_pid = codes[len(payments) + len(attempts) :]
    now_us = _micros(now)

    failed = (attempts["outcome"] == vocab.Outcome.FAILED).to_numpy()
    category = vocab.decline_categories(
        attempts["decline_code"],
        attempts["advice_code"],
        attempts["network_decline_code"],
        attempts["network_advice_code"],
    )
    timeline = Timeline(
        a_pid,
        _micros(attempts["attempted_at"]),
        {
            "retry": (
                (attempts["initiator"] == vocab.Initiator.MERCHANT).to_numpy()
                & (attempts["attempt_number"] > 0).to_numpy()
            ),
            "hard": failed & (category == vocab.DeclineCategory.HARD).to_numpy(),
            "succeeded": ~failed,
        },
    )
    sums, _ = timeline.at(pid, now_us, inclusive=True)
    failures = attempts[failed]
    _, last = Timeline(a_pid[failed], _micros(failures["attempted_at"])).at(
        pid, now_us, inclusive=True
    )
    has_last = last >= 0

    def last_value(col: str) -> pd.Series:
        values = (
            failures[col].iloc[np.maximum(last, 0)]
            if len(failures)
            else pd.Series(np.full(len(pid), None), dtype=attempts[col].dtype)
        )
        return values.set_axis(payments.index).where(has_last)

    state = pd.DataFrame(index=payments.index)
    state["decision_number"] = sums["retry"].astype("int64")
    last_at = last_value("attempted_at")
    state["last_attempt_at"] = contract.utc(
        last_at.where(has_last, payments["failed_at"]), payments.index
    )
    for col in vocab.DECLINE_FIELDS:
        state[f"last_{col}"] = last_value(col)
    state["ever_hard"] = sums["hard"] > 0
    state["recovered"] = sums["succeeded"] > 0

    channel = messages["channel"].astype("object").to_numpy()
    msg_timeline = Timeline(
        m_pid,
        _micros(messages["sent_at"]),
        {ch.value: channel == ch.value for ch in vocab.Channel},
    )
    m_sums, m_last = msg_timeline.at(pid, now_us, inclusive=False)
    for ch in vocab.Channel:
        state[f"n_{ch.value}"] = m_sums[ch.value].astype("int64")
    sent = _micros(messages["sent_at"])
    last_msg = np.where(
        m_last >= 0, sent[np.maximum(m_last, 0)] if len(sent) else now_us, np.datetime64("NaT")
    )
    state["last_message_at"] = contract.utc(last_msg.astype("datetime64[us]"), payments.index)
    return state


def summarize_row(
    payment: Mapping[str, Any],
    attempts: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """:func:`summarize_history` for one decision, from plain rows (contract fields, aware
    datetimes): the API's path for a few decisions, where pandas costs more than the work.
    ``tests/test_single_decision.py`` proves it equal to the batch function.

    Returns a dict of :data:`STATE_COLUMNS` (None where the batch function has a null).
    """
    # stable sorts: among attempts at one moment, the later in the input counts as last
    seen = sorted((a for a in attempts if a["attempted_at"] <= now), key=_at)
    failed = [a for a in seen if a["outcome"] == vocab.Outcome.FAILED.value]
    last = failed[-1] if failed else None
    codes = vocab.DECLINE_FIELDS
    state: dict[str, Any] = {
        "decision_number": sum(
            1
            for a in seen
            if a["initiator"] == vocab.Initiator.MERCHANT.value and a["attempt_number"] > 0
        ),  # fmt: skip
        "last_attempt_at": last["attempted_at"] if last else payment["failed_at"],
        **{f"last_{c}": (last.get(c) if last else None) for c in codes},
        "ever_hard": any(
            vocab.decline_category(*(a.get(c) for c in codes)) == vocab.DeclineCategory.HARD
            for a in failed
        ),
        "recovered": any(a["outcome"] == vocab.Outcome.SUCCEEDED.value for a in seen),
    }
    before = sorted((m for m in messages if m["sent_at"] < now), key=lambda m: m["sent_at"])
    for ch in vocab.Channel:
        state[f"n_{ch.value}"] = sum(1 for m in before if m["channel"] == ch.value)
    state["last_message_at"] = before[-1]["sent_at"] if before else None
    return state


def _at(attempt: Mapping[str, Any]) -> datetime:
    return attempt["attempted_at"]


@dataclass
class DecisionBatch:
    """What a policy sees: n payments, each at its own decision time.

    Attributes
    ----------
    payments
        Contract payment rows (index 0..n-1).
    now
        Decision time per payment, UTC (same index).
    state
        :func:`summarize_history` of the payments' attempts and messages up to ``now``.
    constraints
        What each payment's account allows (:func:`reclaim.account_config.constraints`), or
        None where no account restricts anything.
    """

    payments: pd.DataFrame
    now: pd.Series
    state: pd.DataFrame
    constraints: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.payments)

    @classmethod
    def from_history(
        cls,
        payments: pd.DataFrame,
        attempts: pd.DataFrame,
        messages: pd.DataFrame,
        now: pd.Series,
        constraints: pd.DataFrame | None = None,
    ) -> DecisionBatch:
        """Build a batch from contract tables; only history up to ``now`` is used.
        ``constraints`` has one row per payment, in the same order."""
        payments = payments.reset_index(drop=True)
        now = contract.utc(now, payments.index)
        if constraints is not None:
            constraints = constraints.reset_index(drop=True)
        return cls(payments, now, summarize_history(payments, attempts, messages, now), constraints)

    def subset(self, mask: np.ndarray) -> DecisionBatch:
        """The rows where ``mask`` is true, re-indexed from 0."""
        return self.take(np.flatnonzero(mask))

    def take(self, rows: np.ndarray) -> DecisionBatch:
        """The rows at positions ``rows`` (repeats allowed), re-indexed from 0."""
        return DecisionBatch(
            self.payments.iloc[rows].reset_index(drop=True),
            self.now.iloc[rows].reset_index(drop=True),
            self.state.iloc[rows].reset_index(drop=True),
            None
            if self.constraints is None
            else self.constraints.iloc[rows].reset_index(drop=True),
        )


@dataclass
class ActionBatch:
    """A policy's answer for each row of a :class:`DecisionBatch`.

    Attributes
    ----------
    retry_at
        UTC time of the next retry; ``NaT`` for no retry.
    channel, sender
        Message to send now (``vocab.CHANNEL_DTYPE`` / ``SENDER_DTYPE``); null for none.
    retry_propensity, channel_propensity, sender_propensity
        Probability under the policy of the retry part (this time, or no retry), of the
        message part (this channel, or none), and of the sender given the channel (1 where
        there is no message or the sender is not randomized), each in (0, 1];
        :attr:`propensity` is their product, the probability of the whole action.
    reason
        Why there is no retry (empty where there is one), for people reading decisions.
    """

    retry_at: pd.Series
    channel: pd.Series
    sender: pd.Series
    retry_propensity: np.ndarray
    channel_propensity: np.ndarray
    reason: pd.Series
    sender_propensity: np.ndarray | None = None  # None: the sender is never randomized

    def __len__(self) -> int:
        return len(self.retry_at)

    @property
    def senders_propensity(self) -> np.ndarray:
        """:attr:`sender_propensity`, ones where it is not given."""
        if self.sender_propensity is None:
            return np.ones(len(self))
        return self.sender_propensity

    @property
    def propensity(self) -> np.ndarray:
        return self.retry_propensity * self.channel_propensity * self.senders_propensity

    def where(self, mask: np.ndarray, other: ActionBatch) -> ActionBatch:
        """These actions, with ``other``'s in the rows where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)

        def pick(mine: pd.Series, theirs: pd.Series) -> pd.Series:
            return theirs.where(mask, mine)

        return ActionBatch(
            retry_at=pick(self.retry_at, other.retry_at),
            channel=pick(self.channel, other.channel),
            sender=pick(self.sender, other.sender),
            retry_propensity=np.where(mask, other.retry_propensity, self.retry_propensity),
            channel_propensity=np.where(mask, other.channel_propensity, self.channel_propensity),
            reason=pick(self.reason, other.reason),
            sender_propensity=None
            if self.sender_propensity is None and other.sender_propensity is None
            else np.where(mask, other.senders_propensity, self.senders_propensity),
        )

    @classmethod
    def build(
        cls,
        n: int,
        retry_at: pd.Series | np.ndarray | None = None,
        channel: pd.Series | np.ndarray | None = None,
        sender: pd.Series | np.ndarray | None = None,
        retry_propensity: np.ndarray | float = 1.0,
        channel_propensity: np.ndarray | float = 1.0,
        reason: pd.Series | np.ndarray | None = None,
        sender_propensity: np.ndarray | float | None = None,
    ) -> ActionBatch:
        """Make an action batch of length ``n`` with contract dtypes; omitted parts are none."""
        index = pd.RangeIndex(n)

        def times(v: object) -> pd.Series:
            if v is None:
                return pd.Series(pd.NaT, index=index, dtype=contract.TIMESTAMP_DTYPE)
            return contract.utc(v, index)

        def cat(v: object, dtype: pd.CategoricalDtype) -> pd.Series:
            values = np.full(n, None, dtype=object) if v is None else np.asarray(v, dtype=object)
            return pd.Series(pd.Categorical(values, dtype=dtype), index=index)

        reasons = (
            np.full(n, "", dtype=object) if reason is None else np.asarray(reason, dtype=object)
        )
        return cls(
            retry_at=times(retry_at),
            channel=cat(channel, vocab.CHANNEL_DTYPE),
            sender=cat(sender, vocab.SENDER_DTYPE),
            retry_propensity=np.broadcast_to(
                np.asarray(retry_propensity, dtype=float), (n,)
            ).copy(),
            channel_propensity=np.broadcast_to(
                np.asarray(channel_propensity, dtype=float), (n,)
            ).copy(),
            reason=pd.Series(reasons, index=index, dtype="object"),
            sender_propensity=None
            if sender_propensity is None
            else np.broadcast_to(np.asarray(sender_propensity, dtype=float), (n,)).copy(),
        )


class Uniforms(Protocol):
    """Where a policy draws its randomness: ``random(n)`` gives n uniforms on [0, 1), one
    per row of the batch. :class:`numpy.random.Generator` is one; :class:`DecisionRandom` is
    the serving path's."""

    def random(self, size: int) -> np.ndarray: ...


class DecisionRandom:
    """Uniforms drawn per decision: the j-th call to :meth:`random` gives each row the j-th
    draw of a stream that depends on that row's payment id and decision time only.

    So the same decision asked twice gets the same answer, exploration included, whatever
    else is decided with it (alone, in a scheduler's batch, or merged with other clients'
    requests by the API's batcher). Draws come from SHA-512 of
    ``"{stream}{payment}@{time}#{block}"``, eight 53-bit uniforms per block; ``stream`` (empty
    when serving) gives a simulator's rollout with another seed its own draws.
    """

    _PER_BLOCK = 8

    def __init__(self, payment_ids: Sequence[str], decided_at: Sequence[Any], stream: str = ""):
        if len(payment_ids) != len(decided_at):
            raise ValueError(f"{len(payment_ids)} payment ids but {len(decided_at)} decision times")
        self._keys = [
            f"{stream}{p}@{pd.Timestamp(t).isoformat()}"
            for p, t in zip(payment_ids, decided_at, strict=True)
        ]
        self._drawn = 0
        self._block = np.empty((len(self._keys), 0))

    def random(self, size: int) -> np.ndarray:
        """Each row's next uniform on [0, 1); ``size`` must be the number of rows."""
        if size != len(self._keys):
            raise ValueError(f"draws are per decision: asked {size}, have {len(self._keys)}")
        j = self._drawn % self._PER_BLOCK
        if j == 0:
            block = self._drawn // self._PER_BLOCK
            raw = b"".join(hashlib.sha512(f"{key}#{block}".encode()).digest() for key in self._keys)
            words = np.frombuffer(raw, dtype="<u8").reshape(len(self._keys), self._PER_BLOCK)
            self._block = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
        self._drawn += 1
        return self._block[:, j].copy()


class Policy(ABC):
    """Chooses the next action for each payment in a batch.

    Subclass contract: :meth:`act` must not read anything but the batch (in particular no
    simulator hidden state, except the oracle, which exists to be an upper bound); it uses
    ``rng`` for all its randomness so that rollouts are reproducible; and it returns, for
    every row, the probability of the action it chose.
    """

    name: str = "policy"

    @abstractmethod
    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        """Return one action per row of ``batch``."""


def merchant_of_record_row(payment: Mapping[str, Any]) -> str:
    """:func:`merchant_of_record` for one payment given as plain values."""
    own = payment["charge_model"] == vocab.ChargeModel.DIRECT.value or bool(payment["on_behalf_of"])
    return vocab.Sender.ACCOUNT.value if own else vocab.Sender.PLATFORM.value


def merchant_of_record(payments: pd.DataFrame) -> pd.Series:
    """Who the customer recognises, and so who should message them by default.

    The connected account for direct charges and for ``on_behalf_of``, otherwise the platform
    (docs/sources.md: an inference from Stripe's merchant-of-record guide, overridable
    per account by the service's configuration).
    """
    account = (payments["charge_model"] == vocab.ChargeModel.DIRECT) | payments["on_behalf_of"]
    values = np.where(account, vocab.Sender.ACCOUNT.value, vocab.Sender.PLATFORM.value)
    return pd.Series(pd.Categorical(values, dtype=vocab.SENDER_DTYPE), index=payments.index)
