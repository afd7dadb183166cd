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
4. messages through the channel whose predicted uplift times the amount beats its cost, from
   the merchant of record (the connected account for direct charges and ``on_behalf_of``,
   else the platform);
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

import numpy as np
import pandas as pd

from reclaim import vocab
from reclaim.features.accounts import AccountHistory
from reclaim.features.candidates import expand_retry_times, retry_features
from reclaim.features.decisions import decision_features, log_amount
from reclaim.models.channel import ChannelUpliftModel
from reclaim.models.retry import RetryTimeModel
from reclaim.policy import ActionBatch, DecisionBatch, Policy, merchant_of_record
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
    network_rules, costs, delays_hours
        Hard limits, action costs, and the candidate delay grid.
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
        }
        self.__dict__.update({**defaults, **state})

    # --- scoring ------------------------------------------------------------------------
    def retry_scores(
        self, batch: DecisionBatch, features: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Success chance and value of every candidate delay: two (n, k) arrays.

        Candidates the rules do not allow have chance 0 and value -inf.
        """
        rules = self.network_rules or NetworkRules()
        costs = self.costs or Costs()
        n, k = len(batch), len(self.delays_hours)
        lim = limits(batch, rules)
        first = features["hours_to_earliest_retry"].to_numpy()
        last = features["hours_to_window_end"].to_numpy()
        allowed = (lim["blocked"].to_numpy() == "")[:, None] & (
            (self.delays_hours[None, :] >= first[:, None] - 1e-9)
            & (self.delays_hours[None, :] <= last[:, None])
        )
        p = np.zeros((n, k))
        rows = np.flatnonzero(allowed.any(axis=1))
        if len(rows):
            sub = batch.take(rows)
            grid = expand_retry_times(
                sub, features.iloc[rows].reset_index(drop=True), self.delays_hours
            )
            columns = list(self.retry_model.feature_names_in_)
            p[rows] = self.retry_model.predict_proba(grid[columns])[:, 1].reshape(len(rows), k)
        p = np.where(allowed, p, 0.0)
        amount = np.expm1(log_amount(batch.payments))[:, None]
        # Best later candidate (strictly later slot) for the look-ahead.
        later = np.maximum.accumulate(p[:, ::-1], axis=1)[:, ::-1]
        later = np.concatenate([later[:, 1:], np.zeros((n, 1))], axis=1)
        then = np.maximum(self.continuation * later * amount - costs.retry, 0.0)
        value = p * amount - costs.retry + (1.0 - p) * then
        return p, np.where(allowed, value, -np.inf)

    def channel_values(self, batch: DecisionBatch, features: pd.DataFrame) -> pd.DataFrame:
        """Expected gain of each channel (uplift × amount − cost); the ``none`` column is 0."""
        costs = self.costs or Costs()
        uplift = self.channel_model.predict(features[list(self.channel_model.feature_names_in_)])
        amount = np.expm1(log_amount(batch.payments))
        sent = features["n_messages"].to_numpy()
        capped = sent >= self.max_messages
        c = batch.constraints
        if c is not None:  # the account's limits: opted out, fewer messages, some channels
            capped |= c["opted_out"].to_numpy() | (sent >= c["max_messages"].to_numpy())
        gain = pd.DataFrame(0.0, index=features.index, columns=["none", *CHANNELS])
        for ch in CHANNELS:
            closed = capped if c is None else capped | ~c[f"allow_{ch}"].to_numpy()
            if ch in uplift.columns:
                gain[ch] = np.where(
                    closed, -np.inf, uplift[ch].to_numpy() * amount - costs.message[ch]
                )
            else:
                gain[ch] = -np.inf
        return gain

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
    def act(self, batch: DecisionBatch, rng: np.random.Generator) -> ActionBatch:
        n = len(batch)
        if n == 0:
            return ActionBatch.build(0)
        features = decision_features(batch, self.accounts, self.network_rules)
        _, value = self.retry_scores(batch, features)
        allowed = np.isfinite(value)
        k = value.shape[1]
        # option index: 0..k-1 a delay, k = no retry
        best = np.argmax(np.where(allowed, value, -np.inf), axis=1)
        greedy_retry = allowed.any(axis=1) & (value[np.arange(n), best] > 0)
        greedy_option = np.where(greedy_retry, best, k)
        gains = self.channel_values(batch, features)
        options = gains.columns.to_numpy()
        greedy_channel = _greedy_channel(gains.to_numpy())

        # retry options: each allowed delay, then "no retry" (always open) at index k
        open_retry = np.concatenate([allowed, np.ones((n, 1), dtype=bool)], axis=1)
        option, retry_prop = _epsilon_greedy(open_retry, greedy_option, self.exploration, rng)
        open_channel = np.isfinite(gains.to_numpy())  # "none" is always open
        chosen, channel_prop = _epsilon_greedy(open_channel, greedy_channel, self.exploration, rng)

        delay = self.delays_hours[np.minimum(option, k - 1)]
        retry_at = (batch.now + pd.to_timedelta(delay, unit="h")).where(option < k)
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

    def describe(
        self, batch: DecisionBatch, actions: ActionBatch, top: int = 3
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Each chosen retry's calibrated success chance and the features that moved it most.

        Returns ``(probability, reasons)``: per decision, the retry-time model's probability
        (0 where there is no retry) and ``top`` strings like ``"days_to_payday=0 (+0.41)"``
        (SHAP contributions to the log-odds; empty where there is no retry). The features are
        computed once, for the decisions that retry.
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
        probability[rows] = self.retry_model.predict_proba(x)[:, 1]
        contrib = self.retry_model.contributions(x)
        for i, row in zip(rows, range(len(rows)), strict=True):
            c = contrib.iloc[row]
            for name in c.abs().sort_values(ascending=False).index[:top]:
                value = x.iloc[row][name]
                shown = f"{value:.3g}" if isinstance(value, float) else str(value)
                reasons[i].append(f"{name}={shown} ({c[name]:+.2f})")
        return probability, reasons

    def explain(self, batch: DecisionBatch, actions: ActionBatch, top: int = 3) -> list[list[str]]:
        """The reasons half of :meth:`describe`."""
        return self.describe(batch, actions, top)[1]


def _greedy_channel(gains: np.ndarray) -> np.ndarray:
    """Index (into ``["none", *CHANNELS]``) of the best option per row; none unless a channel
    gains more than nothing."""
    return np.where(gains.max(axis=1) > 0, np.argmax(gains, axis=1), 0)


def _epsilon_greedy(
    open_options: np.ndarray, greedy: np.ndarray, eps: float, rng: np.random.Generator
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
