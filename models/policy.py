"""The learned recovery policy: the retry-time and channel models combined into the next action.

For each decision it

1. builds the decision's features (``features.decisions.decision_features``) and scores every
   candidate retry time the network rules allow with the retry-time model;
2. values each candidate over the rest of the window, not just the next step: a retry at
   delay *d* is worth ``p(d)·A − c + (1 − p(d))·V(d)``, where ``V(d)`` is what the best
   later candidate is still worth after a failure at *d* (its success chance times
   ``continuation``, the model-estimated effect of one more failed attempt, times *A*, less
   its cost) — so a long-shot early retry is taken only when it leaves a good later slot;
3. retries at the best candidate if it is worth more than nothing, otherwise not at all;
4. messages through the channel whose uplift times the amount beats its cost, among the
   channels the customer can receive and whose uplift measured in training at this stage
   (first decision or later) is above zero with 95% confidence — the uplift being the
   model's, read through what was measured of it (``channel_calibration``,
   ``models.channel.ChannelCalibration``) — from the merchant of record (the connected
   account for direct charges and ``on_behalf_of``, else the platform);
5. with probability ``exploration`` replaces each part by a uniformly random allowed option,
   and returns the probability of what it chose, so its own logs stay usable for off-policy
   evaluation.

Hard limits are the rules' (``reclaim.rules``): candidates outside them are never scored, and
the environment, the API and the scheduler still pass every action through
``rules.enforce``. Money is compared in the payment's own major units; costs are given in
USD and taken at par (they are cents, and only matter when a recovery is nearly hopeless).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from reclaim import vocab
from reclaim.features import schema
from reclaim.features.accounts import AccountHistory
from reclaim.features.candidates import expand_retry_times, retry_features
from reclaim.features.decisions import decision_features, log_amount
from reclaim.features.drift import FeatureReference
from reclaim.features.single import Decisions
from reclaim.models.channel import DEFAULT_CHANNEL, ChannelCalibration, ChannelUpliftModel
from reclaim.models.retry import RetryTimeModel
from reclaim.models.timing import TimingEffect
from reclaim.policy import (
    ActionBatch,
    DecisionBatch,
    Policy,
    Uniforms,
    merchant_of_record,
    merchant_of_record_row,
)
from reclaim.rules import NetworkRules, limits

#: Candidate delays the learned policy scores: every 3 hours for a week.
POLICY_DELAYS_HOURS = np.arange(3, 169, 3)
CHANNELS = [c.value for c in vocab.Channel]


@dataclass
class Costs:
    """Cost of each action, USD."""

    retry: float = 0.01
    message: dict[str, float] = field(
        default_factory=lambda: {"email": 0.001, "sms": 0.008, "in_app": 0.0001}
    )


class LearnedPolicy(Policy):
    """Retry-time model + channel model → the next action, with its probability.

    Parameters
    ----------
    retry_model, channel_model
        Fitted models.
    accounts
        Account timelines for the account features (the history known at deployment).
    exploration
        Probability of replacing each part of the action by a uniform random allowed option.
    continuation
        The retry model's estimate of how much one more failed attempt scales the next
        retry's success chance (learned in training; used by the look-ahead).
    sender_overrides
        Connected account id → ``"platform"`` or ``"account"``: who messages that account's
        customers instead of the merchant of record.
    max_messages
        At most this many messages per payment (a product limit: a dunning sequence is a few
        messages, not one per retry). Per-account configuration may lower it.
    channel_calibration
        Channel → its :class:`ChannelCalibration` (a channel left out is never used); None
        acts on the model's uplift as predicted. Training sets it from measured uplift.
    network_rules, costs, delays_hours
        Hard limits, action costs, and the candidate delay grid.
    last_retry
        Decline category → the last decision number (0: the first failure) at which the
        policy may retry; ``"*"`` covers categories not named. None: up to the rules' limits.
        Training sets it to what the history shows (``training.support``): the retry model
        has not seen what retries beyond it do.
    timing
        The local-time effect the retry model left out (``models.timing``), measured in
        training across all retries; its chances are shifted by it. None: as predicted.
    """

    name = "learned"

    def __init__(
        self,
        retry_model: RetryTimeModel,
        channel_model: ChannelUpliftModel,
        accounts: AccountHistory,
        exploration: float = 0.0,
        continuation: float = 0.8,
        max_messages: int = 3,
        sender_overrides: dict[str, str] | None = None,
        network_rules: NetworkRules | None = None,
        costs: Costs | None = None,
        delays_hours: np.ndarray = POLICY_DELAYS_HOURS,
        channel_calibration: dict[str, ChannelCalibration] | None = None,
        feature_reference: FeatureReference | None = None,
        last_retry: dict[str, int] | None = None,
        timing: TimingEffect | None = None,
    ):
        self.retry_model = retry_model
        self.channel_model = channel_model
        self.accounts = accounts
        self.exploration = exploration
        self.continuation = continuation
        self.max_messages = max_messages
        self.sender_overrides = sender_overrides
        self.network_rules = network_rules
        self.costs = costs
        self.delays_hours = delays_hours
        self.channel_calibration = channel_calibration
        self.last_retry = last_retry
        self.timing = timing
        # the training rows' feature distribution: what serving compares its decisions with
        self.feature_reference = feature_reference

    def __setstate__(self, state: dict) -> None:
        # A policy pickled by an older Reclaim lacks parameters added since: give them their
        # defaults so registered models keep loading.
        defaults = {
            "max_messages": 3,
            "sender_overrides": None,
            "exploration": 0.0,
            "continuation": 0.8,
            "network_rules": None,
            "costs": None,
            "delays_hours": POLICY_DELAYS_HOURS,
            "channel_calibration": None,
            "last_retry": None,
            "timing": None,
        }
        self.__dict__.update({**defaults, **state})

    def decides_on_rows(self) -> bool:
        """Whether :meth:`act_rows` applies: both models were trained on the feature schema's
        fixed categories, so their codes are what ``features.single`` computes. Checked once
        per loaded policy."""
        known = self.__dict__.get("_decides_on_rows")
        if known is None:
            known = self.__dict__["_decides_on_rows"] = self._trained_on_schema()
        return known

    def _trained_on_schema(self) -> bool:
        boosters = [self.retry_model.booster_, *self.channel_model.boosters_.values()]
        names = [list(self.retry_model.feature_names_in_)] + [
            list(self.channel_model.feature_names_in_)
        ] * len(self.channel_model.boosters_)
        for booster, columns in zip(boosters, names, strict=True):
            expected = [
                [str(c) for c in schema.CATEGORICAL[c].categories]
                for c in columns
                if c in schema.CATEGORICAL
            ]
            trained = [[str(c) for c in cats] for cats in (booster.pandas_categorical or [])]
            if trained != expected:
                return False
        return True

    # --- scoring ------------------------------------------------------------------------
    def _timed(self, chance: np.ndarray, hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
        """The retry model's chances shifted by :attr:`timing` (as they are without one)."""
        if self.timing is None:
            return chance
        return self.timing.apply(chance, hour, weekend)

    def _timed_matrix(self, chance: np.ndarray, matrix: np.ndarray, names: list[str]) -> np.ndarray:
        """:meth:`_timed` for rows of the retry model's float matrix (columns ``names``)."""
        if self.timing is None:
            return chance
        hour = matrix[:, names.index("retry_local_hour")]
        return self.timing.apply(chance, hour, matrix[:, names.index("retry_is_weekend")])

    def _allowed(
        self,
        blocked: np.ndarray,
        first: np.ndarray,
        last: np.ndarray,
        category: np.ndarray,
        number: np.ndarray,
    ) -> np.ndarray:
        """(n, k): which candidate delays the rules allow (not blocked, from the earliest
        allowed retry to the end of the window) at decisions where the policy retries at all
        (:attr:`last_retry`, by the decision's decline ``category`` and ``number``)."""
        d = self.delays_hours[None, :]
        open_ = (np.asarray(blocked) == "") & self._within_retry_count(category, number)
        return open_[:, None] & (
            (d >= np.asarray(first)[:, None] - 1e-9) & (d <= np.asarray(last)[:, None])
        )

    def _last_retry_at(self, category: np.ndarray) -> np.ndarray:
        """Each decision's category's :attr:`last_retry` (inf: none)."""
        caps = self.last_retry or {}
        default = caps.get("*", np.inf)
        return np.array([caps.get(str(c), default) for c in category], dtype=float)

    def _within_retry_count(self, category: np.ndarray, number: np.ndarray) -> np.ndarray:
        """Whether each decision is at most its category's :attr:`last_retry`."""
        return np.asarray(number, dtype=float) <= self._last_retry_at(category)

    def _values(
        self, p: np.ndarray, allowed: np.ndarray, amount: np.ndarray, final: np.ndarray
    ) -> np.ndarray:
        """Each candidate's value over the rest of the window (see the module); -inf where
        not allowed. At a ``final`` decision (the last the policy retries at) no later
        retry follows a failure, so nothing is looked ahead to."""
        costs = self.costs or Costs()
        amount = amount[:, None]
        later = np.where(np.asarray(final, dtype=bool)[:, None], 0.0, self._later_chances(p))
        then = np.maximum(self.continuation * later * amount - costs.retry, 0.0)
        value = p * amount - costs.retry + (1.0 - p) * then
        return np.where(allowed, value, -np.inf)

    def _later_chances(self, p: np.ndarray) -> np.ndarray:
        """(n, k): the chance the look-ahead gives a retry after a failure at each candidate
        slot — the best strictly later slot's (0 after the last)."""
        later = np.maximum.accumulate(p[:, ::-1], axis=1)[:, ::-1]
        return np.concatenate([later[:, 1:], np.zeros((len(p), 1))], axis=1)

    def _gains(
        self,
        uplift: dict[str, np.ndarray],
        amount: np.ndarray,
        sent: np.ndarray,
        c: dict[str, np.ndarray] | None,
        reachable: dict[str, np.ndarray],
        first: np.ndarray,
    ) -> np.ndarray:
        """(n, 4): expected gain of none, email, sms, in_app (uplift × amount − cost; -inf
        where the channel is closed: the customer cannot receive it, the account does not
        allow it, the message cap is reached, or its measured uplift is not above zero)."""
        costs = self.costs or Costs()
        capped = sent >= self.max_messages
        if c is not None:  # the account's limits: opted out, fewer messages, some channels
            capped = capped | c["opted_out"] | (sent >= c["max_messages"])
        calibration = self.channel_calibration
        gain = np.zeros((len(amount), 1 + len(CHANNELS)))
        for j, ch in enumerate(CHANNELS, start=1):
            closed = capped | ~reachable[ch]
            closed = closed if c is None else closed | ~c[f"allow_{ch}"]
            if ch not in uplift or (calibration is not None and ch not in calibration):
                gain[:, j] = -np.inf
                continue
            u = uplift[ch] if calibration is None else calibration[ch].apply(uplift[ch], first)
            closed = closed | np.isnan(u)
            gain[:, j] = np.where(closed, -np.inf, np.nan_to_num(u) * amount - costs.message[ch])
        if calibration is not None and DEFAULT_CHANNEL in CHANNELS:
            # a channel not measured ahead of the default never beats it where the default is
            # open (ties go to the default, which comes first)
            d = CHANNELS.index(DEFAULT_CHANNEL) + 1
            for j, ch in enumerate(CHANNELS, start=1):
                if ch == DEFAULT_CHANNEL or ch not in calibration:
                    continue
                behind = ~calibration[ch].ahead(first) & np.isfinite(gain[:, d])
                gain[:, j] = np.where(behind, np.minimum(gain[:, j], gain[:, d]), gain[:, j])
        return gain

    def _choose(
        self, value: np.ndarray, gains: np.ndarray, rng: Uniforms
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The option per decision (a delay index, or k for no retry; a message option index)
        and their propensities: greedy, or with probability ``exploration`` a uniformly
        random allowed option."""
        n, k = value.shape
        allowed = np.isfinite(value)
        best = np.argmax(value, axis=1)
        greedy_retry = allowed.any(axis=1) & (value[np.arange(n), best] > 0)
        greedy_option = np.where(greedy_retry, best, k)
        # retry options: each allowed delay, then "no retry" (always open) at index k
        open_retry = np.concatenate([allowed, np.ones((n, 1), dtype=bool)], axis=1)
        option, retry_prop = _epsilon_greedy(open_retry, greedy_option, self.exploration, rng)
        open_channel = np.isfinite(gains)  # "none" is always open
        chosen, channel_prop = _epsilon_greedy(
            open_channel, _greedy_channel(gains), self.exploration, rng
        )
        return option, retry_prop, chosen, channel_prop

    def retry_scores(
        self, batch: DecisionBatch, features: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Success chance and value of every candidate delay: two (n, k) arrays.

        Candidates the rules do not allow have chance 0 and value -inf.
        """
        n, k = len(batch), len(self.delays_hours)
        lim = limits(batch, self.network_rules or NetworkRules())
        allowed = self._allowed(
            lim["blocked"].to_numpy(),
            features["hours_to_earliest_retry"].to_numpy(),
            features["hours_to_window_end"].to_numpy(),
            features["decline_category"].astype("object").to_numpy(),
            features["decision_number"].to_numpy(),
        )
        p = np.zeros((n, k))
        rows = np.flatnonzero(allowed.any(axis=1))
        if len(rows):
            sub = batch.take(rows)
            grid = expand_retry_times(
                sub, features.iloc[rows].reset_index(drop=True), self.delays_hours
            )
            columns = list(self.retry_model.feature_names_in_)
            chance = self.retry_model.predict_proba(grid[columns])[:, 1]
            p[rows] = self._timed(
                chance, grid["retry_local_hour"].to_numpy(), grid["retry_is_weekend"].to_numpy()
            ).reshape(len(rows), k)
        p = np.where(allowed, p, 0.0)
        final = features["decision_number"].to_numpy() >= self._last_retry_at(
            features["decline_category"].astype("object").to_numpy()
        )
        return p, self._values(p, allowed, np.expm1(log_amount(batch.payments)), final)

    def channel_values(self, batch: DecisionBatch, features: pd.DataFrame) -> pd.DataFrame:
        """Expected gain of each channel (uplift × amount − cost); the ``none`` column is 0."""
        uplift = self.channel_model.predict(features[list(self.channel_model.feature_names_in_)])
        c = batch.constraints
        arrays = None if c is None else {name: c[name].to_numpy() for name in c.columns}
        gains = self._gains(
            {ch: uplift[ch].to_numpy() for ch in uplift.columns},
            np.expm1(log_amount(batch.payments)),
            features["n_messages"].to_numpy(),
            arrays,
            {ch: batch.payments[f"reachable_{ch}"].to_numpy(dtype=bool) for ch in CHANNELS},
            features["decision_number"].to_numpy() == 0,
        )
        return pd.DataFrame(gains, index=features.index, columns=["none", *CHANNELS])

    def channel_probabilities(self, batch: DecisionBatch, features: pd.DataFrame) -> np.ndarray:
        """Probability of each message option (none, email, sms, in_app): shape (n, 4)."""
        gains = self.channel_values(batch, features).to_numpy()
        greedy = _greedy_channel(gains)
        open_options = np.isfinite(gains)
        probs = self.exploration * open_options / open_options.sum(axis=1, keepdims=True)
        probs[np.arange(len(batch)), greedy] += 1 - self.exploration
        return probs

    def senders(self, batch: DecisionBatch) -> np.ndarray:
        """Who messages each payment's customer: the account's configured sender, else the
        policy's override for the account, else the merchant of record."""
        payments = batch.payments
        sender = merchant_of_record(payments).astype("object").to_numpy()
        if self.sender_overrides:
            override = payments["account_id"].map(self.sender_overrides).to_numpy(dtype=object)
            sender = np.where(pd.notna(override), override, sender)
        if batch.constraints is not None:
            own = batch.constraints["sender"].to_numpy(dtype=object)
            sender = np.where(pd.notna(own), own, sender)
        return sender

    # --- acting -------------------------------------------------------------------------
    def act(self, batch: DecisionBatch, rng: Uniforms) -> ActionBatch:
        n = len(batch)
        if n == 0:
            return ActionBatch.build(0)
        features = decision_features(batch, self.accounts, self.network_rules)
        _, value = self.retry_scores(batch, features)
        gains = self.channel_values(batch, features)
        option, retry_prop, chosen, channel_prop = self._choose(value, gains.to_numpy(), rng)
        k = value.shape[1]
        delay = self.delays_hours[np.minimum(option, k - 1)]
        retry_at = (batch.now + pd.to_timedelta(delay, unit="h")).where(option < k)
        options = gains.columns.to_numpy()
        channel = np.where(chosen > 0, options[chosen], None)
        sender = np.where(chosen > 0, self.senders(batch), None)
        return ActionBatch.build(
            n,
            retry_at=retry_at,
            channel=channel,
            sender=sender,
            retry_propensity=retry_prop,
            channel_propensity=channel_prop,
        )

    def act_rows(self, decisions: Decisions, rng: Uniforms) -> list[dict[str, Any]]:
        """:meth:`act` for decisions given as plain rows (``features.single``), with no
        pandas: the same scores, rules and choices (``tests/test_single_decision.py``).

        Returns per decision a dict with ``retry_at`` (aware datetime or None), ``channel``,
        ``sender`` (str or None), ``retry_propensity`` and ``channel_propensity``.
        """
        n, k = len(decisions), len(self.delays_hours)
        if n == 0:
            return []
        f = decisions.features
        # the rows hold each category as its code in the schema's fixed categories
        names = schema.CATEGORICAL["decline_category"].categories
        category = np.array(
            [None if np.isnan(x["decline_category"]) else names[int(x["decline_category"])]
             for x in f],
            dtype=object,
        )  # fmt: skip
        allowed = self._allowed(
            np.array([lim["blocked"] for lim in decisions.limits], dtype=object),
            np.array([x["hours_to_earliest_retry"] for x in f]),
            np.array([x["hours_to_window_end"] for x in f]),
            category,
            np.array([x["decision_number"] for x in f]),
        )
        p = np.zeros((n, k))
        rows = np.flatnonzero(allowed.any(axis=1))
        if len(rows):
            names = list(self.retry_model.feature_names_in_)
            grid = decisions.retry_grid(rows, self.delays_hours, names)
            chance = self.retry_model.predict_proba_matrix(grid)[:, 1]
            p[rows] = self._timed_matrix(chance, grid, names).reshape(len(rows), k)
        p = np.where(allowed, p, 0.0)
        amount = np.expm1(np.array([x["log_amount"] for x in f]))
        final = np.array([x["decision_number"] for x in f]) >= self._last_retry_at(category)
        value = self._values(p, allowed, amount, final)
        uplift = self.channel_model.predict_matrix(
            decisions.matrix(list(self.channel_model.feature_names_in_))
        )
        c = _constraint_arrays(decisions.constraints)
        reachable = {
            ch: np.array([bool(p.get(f"reachable_{ch}", True)) for p in decisions.payments])
            for ch in CHANNELS
        }
        first = np.array([x["decision_number"] == 0 for x in f], dtype=bool)
        sent = np.array([x["n_messages"] for x in f])
        gains = self._gains(uplift, amount, sent, c, reachable, first)
        option, retry_prop, chosen, channel_prop = self._choose(value, gains, rng)
        options = ["none", *CHANNELS]
        out = []
        for i in range(n):
            retry_at = None
            if option[i] < k:
                retry_at = decisions.now[i] + timedelta(hours=float(self.delays_hours[option[i]]))
            channel = options[chosen[i]] if chosen[i] > 0 else None
            out.append(
                {
                    "retry_at": retry_at,
                    "channel": channel,
                    "sender": self._sender_row(decisions, i) if channel else None,
                    "retry_propensity": float(retry_prop[i]),
                    "channel_propensity": float(channel_prop[i]),
                    "reason": "",
                }
            )
        return out

    def _sender_row(self, decisions: Decisions, i: int) -> str:
        """:meth:`senders` for one decision."""
        p, c = decisions.payments[i], decisions.constraints[i]
        if c is not None and c["sender"] is not None:
            return str(c["sender"])
        if self.sender_overrides and p["account_id"] in self.sender_overrides:
            return str(self.sender_overrides[p["account_id"]])
        return merchant_of_record_row(p)

    def describe(
        self, batch: DecisionBatch, actions: ActionBatch, top: int = 3
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Each chosen retry's calibrated success chance and the features that moved it most.

        Returns ``(probability, reasons)``: per decision, the retry-time model's probability
        (0 where there is no retry) and ``top`` strings like ``"days_to_payday=0 (+0.41)"``
        (each feature's share of the log-odds along the trees' paths; empty where there is no
        retry). The features are computed once, for the decisions that retry.
        """
        probability = np.zeros(len(batch))
        reasons: list[list[str]] = [[] for _ in range(len(batch))]
        rows = np.flatnonzero(actions.retry_at.notna().to_numpy())
        if len(rows) == 0:
            return probability, reasons
        sub = batch.take(rows)
        x = retry_features(
            sub,
            decision_features(sub, self.accounts, self.network_rules),
            actions.retry_at.iloc[rows].reset_index(drop=True),
        )[list(self.retry_model.feature_names_in_)]
        probability[rows] = self._timed(
            self.retry_model.predict_proba(x)[:, 1],
            x["retry_local_hour"].to_numpy(),
            x["retry_is_weekend"].to_numpy(),
        )
        contrib = self.retry_model.contributions(x).to_numpy()
        shown = x.astype(object).to_numpy()
        names = list(x.columns)
        if self.timing is not None:
            hour, weekend = x["retry_local_hour"].to_numpy(), x["retry_is_weekend"].to_numpy()
            contrib, shown, names = _with_timing(self.timing, contrib, shown, names, hour, weekend)
        for j, i in enumerate(rows):
            reasons[i] = _reasons(contrib[j], names, shown[j], top)
        return probability, reasons

    def describe_rows(
        self, decisions: Decisions, retry_at: list[datetime | None], top: int = 3
    ) -> tuple[np.ndarray, list[list[str]]]:
        """:meth:`describe` for decisions given as plain rows."""
        probability = np.zeros(len(decisions))
        reasons: list[list[str]] = [[] for _ in range(len(decisions))]
        rows = [i for i, t in enumerate(retry_at) if t is not None]
        if not rows:
            return probability, reasons
        names = list(self.retry_model.feature_names_in_)
        built = decisions.retry_rows(rows, [retry_at[i] for i in rows])
        x = np.array([[codes[nm] for nm in names] for codes, _ in built], dtype=np.float64)
        probability[rows] = self._timed_matrix(
            self.retry_model.predict_proba_matrix(x)[:, 1], x, names
        )
        contrib = self.retry_model.contributions_matrix(x)
        shown = np.array([[built[j][1][nm] for nm in names] for j in range(len(rows))], object)
        if self.timing is not None:
            hour = x[:, names.index("retry_local_hour")]
            weekend = x[:, names.index("retry_is_weekend")]
            contrib, shown, names = _with_timing(self.timing, contrib, shown, names, hour, weekend)
        for j, i in enumerate(rows):
            reasons[i] = _reasons(contrib[j], names, shown[j], top)
        return probability, reasons

    def explain(self, batch: DecisionBatch, actions: ActionBatch, top: int = 3) -> list[list[str]]:
        """The reasons half of :meth:`describe`."""
        return self.describe(batch, actions, top)[1]


def _show(value: Any) -> str:
    """A feature value as a reason shows it: numbers to 3 significant digits (a missing
    value, numeric or categorical, as ``nan``), category names as they are."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "nan"
    return f"{value:.3g}" if isinstance(value, float | np.floating) else str(value)


def _reasons(contrib: np.ndarray, names: list[str], shown: Any, top: int) -> list[str]:
    """The ``top`` features by the size of their contribution, as ``name=value (+c.cc)``;
    ties keep the model's column order."""
    order = np.argsort(-np.abs(contrib), kind="stable")[:top]
    return [f"{names[j]}={_show(shown[j])} ({contrib[j]:+.2f})" for j in order]


def _with_timing(
    timing: TimingEffect,
    contrib: np.ndarray,
    shown: np.ndarray,
    names: list[str],
    hour: np.ndarray,
    weekend: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Contributions, shown values and names with the timing effect's shift of the log-odds
    added as one more reason, ``local_time`` (its bands in words)."""
    label = np.array(timing.labels(hour, weekend), dtype=object)[:, None]
    return (
        np.column_stack([contrib, timing.shift(hour, weekend)]),
        np.concatenate([np.asarray(shown, dtype=object), label], axis=1),
        [*names, "local_time"],
    )


def _constraint_arrays(rows: list[Any]) -> dict[str, np.ndarray] | None:
    """Per-decision constraint dicts as the arrays :meth:`LearnedPolicy._gains` reads; None
    when no decision has any."""
    if all(r is None for r in rows):
        return None
    if any(r is None for r in rows):
        raise ValueError("give constraints for every decision or for none")
    return {
        "opted_out": np.array([r["opted_out"] for r in rows], dtype=bool),
        "max_messages": np.array([r["max_messages"] for r in rows], dtype=float),
        **{
            f"allow_{ch}": np.array([r[f"allow_{ch}"] for r in rows], dtype=bool) for ch in CHANNELS
        },
    }


def _greedy_channel(gains: np.ndarray) -> np.ndarray:
    """Index (into ``["none", *CHANNELS]``) of the best option per row; none unless a channel
    gains more than nothing."""
    return np.where(gains.max(axis=1) > 0, np.argmax(gains, axis=1), 0)


def _epsilon_greedy(
    open_options: np.ndarray, greedy: np.ndarray, eps: float, rng: Uniforms
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the greedy option, or with probability ``eps`` a uniformly random open one.

    ``open_options`` is an (n, m) boolean mask; returns the chosen option index and its exact
    probability under this rule.
    """
    n = len(open_options)
    n_open = open_options.sum(axis=1)
    explore = rng.random(n) < eps
    pick = np.floor(rng.random(n) * n_open).astype(int)
    random_option = np.argmax(np.cumsum(open_options, axis=1) > pick[:, None], axis=1)
    chosen = np.where(explore, random_option, greedy)
    return chosen, eps / n_open + (1 - eps) * (chosen == greedy)
