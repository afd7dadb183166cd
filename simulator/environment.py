"""Roll a policy out over a simulated marketplace.

Each payment moves through decision points: right after its failure and after each failed
retry. At each, the policy sees a :class:`~reclaim.policy.DecisionBatch` built from the
contract rows logged so far, its action passes through :func:`reclaim.rules.enforce`, a
message (if any) goes out at once, and the retry (if any) is tried at its time unless the
customer paid or cancelled first. A payment with no retry left to try waits for the
customer until the recovery window closes.

Randomness: the world draws from the marketplace's fixed noise (per payment and per decision
number), so two policies meet identical luck; the policy draws per decision
(:class:`~reclaim.policy.DecisionRandom` with the rollout's seed as its stream), so a payment's
rollout does not depend on which other payments are rolled out with it and the payments can be
split across processes (``simulator.distributed``) with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reclaim import account_config, contract, rules, vocab
from reclaim.policy import ActionBatch, DecisionBatch, DecisionRandom, Policy
from reclaim.simulator import truth
from reclaim.simulator.marketplace import Marketplace

OUTCOME_COLUMNS = (
    "payment_id",
    "account_id",
    "recovered",
    "recovered_by",
    "recovered_at",
    "amount_usd",
    "recovered_usd",
    "retries",
    "messages",
    "cost_usd",
)


@dataclass
class Rollout:
    """What a rollout produced.

    Attributes
    ----------
    policy
        The policy's name.
    tables
        The contract tables it logged: payments, attempts, messages and decisions.
    outcomes
        One row per payment: :data:`OUTCOME_COLUMNS` (money in USD).
    """

    policy: str
    tables: contract.ContractTables
    outcomes: pd.DataFrame

    @classmethod
    def concat(cls, parts: Sequence[Rollout]) -> Rollout:
        """One rollout from the rollouts of consecutive slices of a marketplace's payments
        (``Marketplace.subset`` of consecutive positions, in order): the same rows in the
        same order as one rollout of the whole marketplace gives."""
        if not parts:
            raise ValueError("no rollouts to join")
        tables = [p.tables for p in parts]
        decisions = contract.concat([t.decisions for t in tables], contract.DECISIONS)
        # one rollout logs its decisions step by step, each step in payment order
        step = decisions["decision_number"].to_numpy()
        decisions = decisions.iloc[np.argsort(step, kind="stable")].reset_index(drop=True)
        return cls(
            parts[0].policy,
            contract.ContractTables(
                payments=pd.concat([t.payments for t in tables], ignore_index=True),
                attempts=contract.concat([t.attempts for t in tables], contract.ATTEMPTS),
                messages=contract.concat([t.messages for t in tables], contract.MESSAGES),
                decisions=decisions,
            ),
            pd.concat([p.outcomes for p in parts], ignore_index=True),
        )


def _attempt_rows(
    payments: pd.DataFrame,
    number: np.ndarray,
    at: pd.Series,
    initiator: str,
    outcome: str,
    policy: str | None,
    propensity: np.ndarray | None,
    with_codes: bool,
) -> pd.DataFrame:
    n = len(payments)
    none = np.full(n, None, dtype=object)
    return pd.DataFrame(
        {
            "payment_id": payments["payment_id"].to_numpy(),
            "attempt_number": np.asarray(number, dtype="int64"),
            "attempted_at": at.to_numpy(),
            "initiator": np.full(n, initiator, dtype=object),
            "outcome": np.full(n, outcome, dtype=object),
            "decline_code": payments["decline_code"].to_numpy() if with_codes else none,
            "advice_code": payments["advice_code"].astype("object").to_numpy()
            if with_codes
            else none,
            "network_decline_code": payments["network_decline_code"].to_numpy()
            if with_codes
            else none,
            "network_advice_code": payments["network_advice_code"].to_numpy()
            if with_codes
            else none,
            "policy": np.full(n, policy, dtype=object),
            "propensity": np.full(n, np.nan) if propensity is None else propensity,
        }
    )


def _conform_all(frames: list[pd.DataFrame], table: contract.Table) -> pd.DataFrame:
    return (
        contract.conform(table, contract.concat(frames, table)) if frames else contract.empty(table)
    )


def platform_export(tables: contract.ContractTables) -> contract.ContractTables:
    """``tables`` as a platform's own export holds its history: no decisions table, and no
    policy or propensity on attempts and messages (a platform that never randomized its
    retries and messages records neither)."""
    plain = {"policy": None, "propensity": float("nan")}
    return contract.validate(
        {
            "payments": tables.payments,
            "attempts": tables.attempts.assign(**plain),
            "messages": tables.messages.assign(**plain),
        }
    )


def rollout(
    market: Marketplace,
    policy: Policy,
    seed: int = 0,
    network_rules: rules.NetworkRules | None = None,
    on_step: Callable[[int, int], None] | None = None,
    stream: str | None = None,
    account_configs: Mapping[str, account_config.AccountConfig] | None = None,
) -> Rollout:
    """Roll ``policy`` out over every payment of ``market``.

    Parameters
    ----------
    seed
        Seeds the policy's own randomness (exploration), not the world's: each decision's
        draws depend on the seed, its payment and its time only.
    network_rules
        Hard limits; the marketplace config's by default.
    on_step
        Called as ``on_step(decision_number, active_payments)`` for progress display.
    stream
        The policy's draw stream (default ``"rollout {seed}/"``); ``""`` draws as the scoring
        API does, so a rollout and a replay of the same payments meet the same draws.
    account_configs
        Accounts' own settings; every other account has the platform defaults (at most
        three messages a payment, every channel), as the scoring API applies them.
    """
    cfg = market.config
    limits = network_rules or cfg.rules
    pay = market.payments
    n = len(pay)
    failed_ns = pay["failed_at"].to_numpy(dtype="datetime64[us]")
    window_end = failed_ns + np.timedelta64(int(limits.window_days * 86400e6), "us")
    never = np.datetime64("NaT", "us")

    now = failed_ns.copy()
    cure = market.hidden["self_cure_hours"].to_numpy()
    customer_at = np.where(
        np.isfinite(cure),
        failed_ns + (np.where(np.isfinite(cure), cure, 0.0) * 3600e6).astype("timedelta64[us]"),
        never,
    )
    cancel_at = np.full(n, never)
    recovered_at = np.full(n, never)
    recovered_by = np.full(n, None, dtype=object)
    retries = np.zeros(n, dtype=int)
    sent = np.zeros(n, dtype=int)
    cost_cents = np.zeros(n)
    active = np.ones(n, dtype=bool)

    attempts: list[pd.DataFrame] = [contract.first_failures(pay)]
    messages: list[pd.DataFrame] = []
    decisions: list[pd.DataFrame] = []
    attempts_so_far = _conform_all(attempts, contract.ATTEMPTS)
    messages_so_far = contract.empty(contract.MESSAGES)
    attempts = []
    settled_attempts: list[pd.DataFrame] = []
    settled_messages: list[pd.DataFrame] = []
    position = pd.Index(pay["payment_id"].astype("object"))
    allowed = account_config.constraints(pay["account_id"], account_configs or {})

    def first(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Element-wise earliest of two time arrays, NaT meaning never."""
        return np.where(np.isnat(a), b, np.where(np.isnat(b), a, np.minimum(a, b)))

    for step in range(cfg.max_decisions):
        rows = np.flatnonzero(active)
        if on_step is not None:
            on_step(step, len(rows))
        if len(rows) == 0:
            break
        batch = DecisionBatch.from_history(
            pay.iloc[rows],
            attempts_so_far,
            messages_so_far,
            pd.Series(pd.DatetimeIndex(now[rows]).tz_localize("UTC")),
            allowed.iloc[rows],
        )
        draws = DecisionRandom(
            batch.payments["payment_id"],
            batch.now,
            stream=f"rollout {seed}/" if stream is None else stream,
        )
        raw: ActionBatch = policy.act(batch, draws)
        if len(raw) != len(rows):
            raise ValueError(
                f"policy {policy.name!r} returned {len(raw)} actions for {len(rows)} rows"
            )
        action = rules.enforce(batch, raw, limits)
        t_now = batch.now

        decisions.append(
            pd.DataFrame(
                {
                    "payment_id": batch.payments["payment_id"].to_numpy(),
                    "decision_number": np.full(len(rows), step, dtype="int64"),
                    "decided_at": t_now,
                    "policy": np.full(len(rows), policy.name, dtype=object),
                    "retry_at": action.retry_at,
                    "channel": action.channel.astype("object").to_numpy(),
                    "sender": action.sender.astype("object").to_numpy(),
                    "propensity": action.propensity,
                    "retry_propensity": action.retry_propensity,
                    "channel_propensity": action.channel_propensity,
                    "sender_propensity": action.senders_propensity,
                }
            )
        )

        # Messages go out now.
        msg = action.channel.notna().to_numpy()
        if msg.any():
            m_rows = rows[msg]
            channel = action.channel.astype("object").to_numpy()[msg]
            sender = action.sender.astype("object").to_numpy()[msg]
            respond, cancel = truth.message_effect(
                market, m_rows, t_now[msg], channel, sender, sent[m_rows]
            )
            u = market.noise
            # the k-th message a customer gets meets the k-th draw, however many decisions
            # came before it: the replay's simulated customer draws the same way
            k = np.minimum(sent[m_rows], u["respond"].shape[1] - 1)
            responds = u["respond"][m_rows, k] < respond
            delay_h = -cfg.response_delay_mean_hours * np.log1p(-u["delay"][m_rows, k])
            t_msg = now[m_rows]
            reply = t_msg + (delay_h * 3600e6).astype("timedelta64[us]")
            customer_at[m_rows] = first(customer_at[m_rows], np.where(responds, reply, never))
            cancels = u["cancel"][m_rows, k] < cancel
            cancel_at[m_rows] = first(cancel_at[m_rows], np.where(cancels, t_msg, never))
            cost_cents[m_rows] += np.array([cfg.message_cost_cents[c] for c in channel])
            messages.append(
                pd.DataFrame(
                    {
                        "message_id": [
                            f"msg_{pid}_{step}" for pid in pay["payment_id"].to_numpy()[m_rows]
                        ],
                        "payment_id": pay["payment_id"].to_numpy()[m_rows],
                        "sent_at": t_now[msg].reset_index(drop=True),
                        "channel": channel,
                        "sender": sender,
                        "policy": np.full(len(m_rows), policy.name, dtype=object),
                        "propensity": action.channel_propensity[msg],
                    }
                )
            )
            sent[m_rows] += 1

        # The retry, unless the customer paid or cancelled first.
        retry_at = action.retry_at.to_numpy(dtype="datetime64[us]")
        has_retry = ~np.isnat(retry_at)
        cust = customer_at[rows]
        canc = cancel_at[rows]
        paid_first = (
            ~np.isnat(cust)
            & (np.isnat(canc) | (cust < canc))
            & (~has_retry | (cust <= retry_at))
            & (cust <= window_end[rows])
        )
        lost_first = ~paid_first & ~np.isnat(canc) & (~has_retry | (canc <= retry_at))
        try_now = has_retry & ~paid_first & ~lost_first

        done = ~try_now
        if paid_first.any():
            idx = rows[paid_first]
            recovered_at[idx] = cust[paid_first]
            recovered_by[idx] = vocab.Initiator.CUSTOMER.value
            attempts.append(
                _attempt_rows(
                    pay.iloc[idx],
                    retries[idx] + 1,
                    pd.Series(pd.DatetimeIndex(cust[paid_first]).tz_localize("UTC")),
                    vocab.Initiator.CUSTOMER.value,
                    vocab.Outcome.SUCCEEDED.value,
                    None,
                    None,
                    with_codes=False,
                )
            )

        if try_now.any():
            idx = rows[try_now]
            at = pd.Series(pd.DatetimeIndex(retry_at[try_now]).tz_localize("UTC"))
            number = retries[idx] + 1
            p_success = truth.retry_success_probability(market, idx, at, number)
            success = market.noise["retry"][idx, retries[idx]] < p_success
            retries[idx] += 1
            cost_cents[idx] += cfg.retry_cost_cents
            prop = action.retry_propensity[try_now]
            for ok, outcome in (
                (success, vocab.Outcome.SUCCEEDED),
                (~success, vocab.Outcome.FAILED),
            ):
                if ok.any():
                    attempts.append(
                        _attempt_rows(
                            pay.iloc[idx[ok]],
                            number[ok],
                            at[ok].reset_index(drop=True),
                            vocab.Initiator.MERCHANT.value,
                            outcome.value,
                            policy.name,
                            prop[ok],
                            with_codes=outcome is vocab.Outcome.FAILED,
                        )
                    )
            recovered_at[idx[success]] = retry_at[try_now][success]
            recovered_by[idx[success]] = vocab.Initiator.MERCHANT.value
            now[idx[~success]] = retry_at[try_now][~success]
            done[np.flatnonzero(try_now)[success]] = True

        active[rows[done]] = False
        # Only this step's new rows are conformed; the history already is. Rows of settled
        # payments move to the archive so later steps summarise live histories only.
        attempts_so_far = contract.concat(
            [attempts_so_far, _conform_all(attempts, contract.ATTEMPTS)], contract.ATTEMPTS
        )
        messages_so_far = contract.concat(
            [messages_so_far, _conform_all(messages, contract.MESSAGES)], contract.MESSAGES
        )
        attempts, messages = [], []
        for live, archive in (
            (attempts_so_far, settled_attempts),
            (messages_so_far, settled_messages),
        ):
            still = active[position.get_indexer(live["payment_id"])]
            archive.append(live[~still])
        attempts_so_far = attempts_so_far[
            active[position.get_indexer(attempts_so_far["payment_id"])]
        ]
        messages_so_far = messages_so_far[
            active[position.get_indexer(messages_so_far["payment_id"])]
        ]

    usd = pay["amount"].to_numpy() * market.hidden["usd_per_minor"].to_numpy()
    recovered = ~np.isnat(recovered_at)
    outcomes = pd.DataFrame(
        {
            "payment_id": pay["payment_id"].to_numpy(),
            "account_id": pay["account_id"].to_numpy(),
            "recovered": recovered,
            "recovered_by": recovered_by,
            "recovered_at": pd.DatetimeIndex(recovered_at).tz_localize("UTC"),
            "amount_usd": usd,
            "recovered_usd": np.where(recovered, usd, 0.0),
            "retries": retries,
            "messages": sent,
            "cost_usd": cost_cents / 100.0,
        }
    )

    def logged(parts: list[pd.DataFrame], table: contract.Table) -> pd.DataFrame:
        """All rows of a table, in the payments' order then time order."""
        df = contract.concat(parts, table)
        key = position.get_indexer(df["payment_id"])
        time_col = "attempted_at" if table is contract.ATTEMPTS else "sent_at"
        order = np.lexsort((df[time_col].to_numpy(dtype="datetime64[us]"), key))
        return df.iloc[order].reset_index(drop=True)

    tables = contract.ContractTables(
        payments=pay,
        attempts=logged([*settled_attempts, attempts_so_far], contract.ATTEMPTS),
        messages=logged([*settled_messages, messages_so_far], contract.MESSAGES),
        decisions=_conform_all(decisions, contract.DECISIONS),
    )
    return Rollout(policy.name, tables, outcomes)
