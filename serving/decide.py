"""Turn decision requests into actions: the domain code behind ``POST /v1/decisions``.

Builds the decision batch from the request (or from the store, for a payment given by id),
asks the served policy within what each account's configuration allows, applies the network
rules (which no model output overrides), explains the chosen retries, logs every decision,
and returns the API's answers.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim import contract, timeutil, vocab
from reclaim.account_config import AccountConfig, constraint_row, constraints
from reclaim.experiment import ExperimentDesign
from reclaim.features import single
from reclaim.models.policy import LearnedPolicy
from reclaim.policy import DecisionBatch, DecisionRandom, Policy
from reclaim.reference import REFERENCE_POLICIES, ScheduledRows
from reclaim.rules import NetworkRules, enforce, enforce_row, other_processor_allowed
from reclaim.serving.policy_holder import Loaded
from reclaim.serving.schemas import DecisionOut, DecisionRequest, RetryOut
from reclaim.serving.store import configs, experiments
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.settings import Settings


@dataclass(frozen=True)
class Experiment:
    """An A/B test: ``control`` decides for the units ``design`` puts in the control arm."""

    control: Policy
    design: ExperimentDesign

    @classmethod
    def from_settings(cls, settings: Settings) -> Experiment | None:
        """The experiment the settings ask for, or None; ValueError names an unknown policy."""
        name = settings.experiment_control
        if not name:
            return None
        if name not in REFERENCE_POLICIES:
            raise ValueError(
                f"RECLAIM_EXPERIMENT_CONTROL={name!r} is not a reference policy; "
                f"choose one of {sorted(REFERENCE_POLICIES)}"
            )
        return cls(REFERENCE_POLICIES[name](), settings.experiment_design())


class NoPolicy(RuntimeError):
    """The API has not loaded a policy yet."""

    def __init__(self, uri: str):
        super().__init__(f"no policy loaded yet from {uri}")


class UnknownPayment(LookupError):
    """A request names a payment the store does not hold."""

    def __init__(self, payment_id: str):
        self.payment_id = payment_id
        super().__init__(f"no payment {payment_id!r} is stored; send its context instead")


class AmbiguousPayment(LookupError):
    """A request names a payment by id alone, and more than one of the key's accounts holds
    that id."""

    def __init__(self, payment_id: str):
        self.payment_id = payment_id
        super().__init__(
            f"account_id: payment {payment_id!r} is held by more than one of this key's "
            "connected accounts; name the account"
        )


class ContextConflict(ValueError):
    """An inline context says otherwise than the store about a stored payment or attempt."""

    def __init__(self, payment_id: str, field: str):
        self.payment_id, self.field = payment_id, field
        super().__init__(
            f"{field}: payment {payment_id!r} is stored with another value; a stored payment "
            "and its attempts cannot change (ask by id, or send what was sent before)"
        )


#: The attempt fields a re-sent inline context must repeat as stored.
_ATTEMPT_FIELDS = ("attempted_at", "initiator", "outcome", *vocab.DECLINE_FIELDS)


def check_unchanged(requests: list[DecisionRequest], engine: Engine) -> None:
    """Every inline context whose payment is stored must agree with the store: the payment's
    contract fields, and each attempt it repeats (by number); otherwise
    :class:`ContextConflict` naming the first field that differs. New attempts are welcome."""
    inline = [r for r in requests if r.payment is not None]
    if not inline:
        return
    stored = repo.load_rows(engine, [r.ref for r in inline])
    for r in inline:
        pid = r.payment.payment_id
        if r.ref not in stored:
            continue
        payment, attempts, _ = stored[r.ref]
        sent = contract.conform_row(contract.PAYMENTS, _plain(r.payment.model_dump(mode="python")))
        for column in contract.PAYMENTS.column_names:
            if not _same(sent[column], payment.get(column)):
                raise ContextConflict(pid, f"payment.{column}")
        by_number = {a["attempt_number"]: a for a in attempts}
        for i, a in enumerate(r.attempts):
            row = contract.conform_row(
                contract.ATTEMPTS, {**_plain(a.model_dump(mode="python")), "payment_id": pid}
            )
            old = by_number.get(row["attempt_number"])
            for column in _ATTEMPT_FIELDS if old is not None else ():
                if not _same(row[column], old.get(column)):
                    raise ContextConflict(pid, f"attempts[{i}].{column}")


def _same(a: Any, b: Any) -> bool:
    """Equal as stored values: missing alike, timestamps as instants, numbers by value."""
    if contract.is_null(a) or contract.is_null(b):
        return contract.is_null(a) and contract.is_null(b)
    if isinstance(a, datetime) and isinstance(b, datetime):
        return repo.aware(a) == repo.aware(b)
    return bool(a == b)


def resolve(
    requests: list[DecisionRequest], held: dict[str, list[str]], sees: Callable[[str], bool]
) -> list[DecisionRequest]:
    """``requests`` with the account of every payment named, for a key that ``sees`` some
    accounts; ``held``: the accounts holding each id (:func:`repo.accounts_holding`).

    An inline context names its account (which the key must see); a request by id gets the
    one account among those the key sees that holds it, or the account it names, which must
    hold it. Otherwise :class:`UnknownPayment`, worded as for an id nobody holds, so a key
    cannot learn which ids other accounts hold, or :class:`AmbiguousPayment` when several of
    the key's own accounts hold the id."""
    out = []
    for r in requests:
        if r.payment is not None:
            if not sees(r.payment.account_id):
                raise UnknownPayment(r.id)
            out.append(r)
            continue
        mine = [a for a in held.get(r.id, ()) if sees(a)]
        if r.account_id is not None:
            if r.account_id not in mine:
                raise UnknownPayment(r.id)
            out.append(r)
        elif len(mine) == 1:
            out.append(r.model_copy(update={"account_id": mine[0]}))
        elif mine:
            raise AmbiguousPayment(r.id)
        else:
            raise UnknownPayment(r.id)
    return out


def _context(
    requests: list[DecisionRequest], engine: Engine, now: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.Series]:
    """Payments (one row per request), their attempts and messages, and decision times."""
    inline = [r for r in requests if r.payment is not None]
    by_id = [r.ref for r in requests if r.payment is None]
    stored = repo.load_contract(engine, by_id) if by_id else None
    if stored is not None:
        missing = {pid for _, pid in by_id} - set(stored.payments["payment_id"])
        if missing:
            raise UnknownPayment(sorted(missing)[0])
    frames = {"payments": [], "attempts": [], "messages": []}
    if inline:
        pays = contract.conform(
            contract.PAYMENTS, pd.DataFrame([r.payment.model_dump(mode="python") for r in inline])
        )
        frames["payments"].append(pays)
        frames["attempts"].append(contract.first_failures(pays))
        for name, table, field in (
            ("attempts", contract.ATTEMPTS, "attempts"),
            ("messages", contract.MESSAGES, "messages"),
        ):
            rows = [
                {
                    **item.model_dump(mode="python"),
                    "payment_id": r.payment.payment_id,
                    "policy": None,
                    "propensity": np.nan,
                }
                for r in inline
                for item in getattr(r, field)
            ]
            if rows:  # logged by no policy of Reclaim's: no propensity
                frames[name].append(contract.conform(table, pd.DataFrame(rows)))
    if stored is not None:
        frames["payments"].append(stored.payments)
        frames["attempts"].append(stored.attempts)
        frames["messages"].append(stored.messages)
    tables = {
        name: contract.concat(parts, contract.TABLES_BY_NAME[name])
        for name, parts in frames.items()
    }
    index = pd.Index(tables["payments"]["payment_id"])
    ids = [r.payment.payment_id if r.payment is not None else r.payment_id for r in requests]
    payments = tables["payments"].iloc[index.get_indexer(ids)].reset_index(drop=True)
    times = pd.Series([pd.Timestamp(r.now) if r.now else now for r in requests])
    return payments, tables["attempts"], tables["messages"], contract.utc(times)


def decide_frames(
    requests: list[DecisionRequest],
    engine: Engine,
    loaded: Loaded,
    now: pd.Timestamp | None = None,
    rules: NetworkRules | None = None,
    experiment: Experiment | None = None,
    config_cache: configs.ConfigCache | None = None,
) -> list[DecisionOut]:
    """:func:`decide` through the batch path (pandas), for a policy that cannot decide on
    plain rows (a reference policy served as the champion, or a model whose categories are
    not the feature schema's). Two accounts' payments of the same id are decided in separate
    rounds: the contract's tables key a payment by its id."""
    now = now or pd.Timestamp.now(tz="UTC")
    seen: Counter[str] = Counter(r.id for r in requests)
    if max(seen.values(), default=0) > 1:
        rounds: dict[int, list[int]] = {}
        nth: Counter[str] = Counter()
        for i, r in enumerate(requests):
            rounds.setdefault(nth[r.id], []).append(i)
            nth[r.id] += 1
        answers: dict[int, DecisionOut] = {}
        for members in rounds.values():
            part = [requests[i] for i in members]
            decided = decide_frames(part, engine, loaded, now, rules, experiment, config_cache)
            answers.update(zip(members, decided, strict=True))
        return [answers[i] for i in range(len(requests))]
    rules = rules or NetworkRules()
    check_unchanged(requests, engine)
    payments, attempts, messages, decided_at = _context(requests, engine, now)
    inline = [r for r in requests if r.payment is not None]
    if inline:  # the service now holds what it was told (first write wins)
        repo.save_contract(
            engine,
            {
                "payments": payments[
                    payments["payment_id"].isin([r.payment.payment_id for r in inline])
                ].drop_duplicates("payment_id"),
                "attempts": attempts,
                "messages": messages,
            },
        )
    configured = _configs(engine, config_cache, payments["account_id"].unique())
    batch = DecisionBatch.from_history(
        payments, attempts, messages, decided_at, constraints(payments["account_id"], configured)
    )
    policy = loaded.policy
    rng = DecisionRandom(payments["payment_id"].tolist(), batch.now.tolist())
    chosen = policy.act(batch, rng)
    names = np.full(len(batch), getattr(policy, "name", "policy"), dtype=object)
    if experiment is not None:
        at = batch.now.max().to_pydatetime()
        arms = experiments.assign(engine, experiment.design, payments, at)
        keys = zip(payments["account_id"], payments["payment_id"], strict=True)
        control = np.array([arms.get(k) == "control" for k in keys], dtype=bool)
        if control.any():
            chosen = chosen.where(control, experiment.control.act(batch, rng))
            names[control] = experiment.control.name
    actions = enforce(batch, chosen, rules)

    probability, reasons = policy.describe(batch, actions)
    has_retry = actions.retry_at.notna().to_numpy()
    declines = attempts.groupby("payment_id", observed=True)["decline_code"].agg(list).to_dict()
    tz = payments["customer_timezone"].fillna(timeutil.DEFAULT_TIMEZONE)
    local = timeutil.local_times(actions.retry_at.fillna(batch.now), tz)

    out = []
    for i in range(len(batch)):
        retry = None
        if has_retry[i]:
            pid = payments["payment_id"].iloc[i]
            retry = RetryOut(
                at_utc=actions.retry_at.iloc[i].to_pydatetime(),
                at_local=local.iloc[i].to_pydatetime(),
                local_timezone=tz.iloc[i],
                other_processor_allowed=other_processor_allowed(
                    payments.iloc[i],
                    [payments["decline_code"].iloc[i], *declines.get(pid, [])],
                    configured[payments["account_id"].iloc[i]].orchestration
                    if payments["account_id"].iloc[i] in configured
                    else False,
                ),
            )
        channel = actions.channel.iloc[i]
        out.append(
            DecisionOut(
                payment_id=payments["payment_id"].iloc[i],
                account_id=payments["account_id"].iloc[i],
                decided_at=batch.now.iloc[i].to_pydatetime(),
                retry=retry,
                no_retry_reason=None if has_retry[i] else (actions.reason.iloc[i] or "policy"),
                channel=None if pd.isna(channel) else channel,
                sender=None if pd.isna(channel) else actions.sender.iloc[i],
                expected_recovery_probability=float(probability[i]),
                propensity=float(actions.propensity[i]),
                model_version=loaded.version,
                policy=names[i],
                reasons=reasons[i],
            )
        )
    _log(engine, out)
    return out


def _configs(
    engine: Engine, cache: configs.ConfigCache | None, account_ids: Iterable[str]
) -> dict[str, AccountConfig]:
    if cache is None:
        return configs.effective_configs(engine, account_ids)
    return cache.effective(engine, account_ids)


def _features_json(row: dict[str, Any] | None) -> str | None:
    """A decision's feature row as JSON (categories by name, numbers as floats, unknown as
    null)."""
    if row is None:
        return None
    return json.dumps(
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
    )


def _log_rows(
    decisions: list[DecisionOut], features: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    rows = features or [None] * len(decisions)
    return [
        {
            "account_id": d.account_id,
            "payment_id": d.payment_id,
            "decided_at": d.decided_at,
            "model_version": d.model_version,
            "policy": d.policy,
            "retry_at": d.retry.at_utc if d.retry else None,
            "channel": d.channel.value if d.channel else None,
            "sender": d.sender.value if d.sender else None,
            "propensity": d.propensity,
            "reason": d.no_retry_reason or "",
            "explanation": json.dumps(d.reasons),
            "features": _features_json(row),
        }
        for d, row in zip(decisions, rows, strict=True)
    ]


def _log(engine: Engine, decisions: list[DecisionOut]) -> None:
    with engine.begin() as conn:
        conn.execute(t.decision_log.insert(), _log_rows(decisions))


# --- the path for a few decisions: plain rows, no pandas ------------------------------------


def decide(
    requests: list[DecisionRequest],
    engine: Engine,
    loaded: Loaded,
    now: datetime | pd.Timestamp | None = None,
    rules: NetworkRules | None = None,
    experiment: Experiment | None = None,
    config_cache: configs.ConfigCache | None = None,
    observe: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[DecisionOut]:
    """The next action for each request, logged to the store. With an ``experiment``, the
    control arm's customers get the control policy's action instead of the served one's;
    with a ``config_cache``, the accounts' configurations come from it; ``observe`` is given
    the feature rows decided on (the skew monitor).

    The served learned policy decides on plain rows (``features.single``): the same
    features, rules and model as the batch path (proven equal by
    ``tests/test_single_decision.py``) at a small fraction of its cost per call. Any other
    policy goes through :func:`decide_frames`.
    """
    policy = loaded.policy
    if not (isinstance(policy, LearnedPolicy) and policy.decides_on_rows()):
        at = None if now is None else pd.Timestamp(now)
        return decide_frames(requests, engine, loaded, at, rules, experiment, config_cache)
    rules = rules or policy.network_rules or NetworkRules()
    made = _decide_rows(engine, requests, engine, loaded, policy, now, rules, experiment,
                        config_cache)  # fmt: skip
    with engine.begin() as conn:
        waiting = time.monotonic()
        repo.hold_writes(conn)  # the store's writer from here until the decisions are stored
        if time.monotonic() - waiting > STALE_SECONDS:
            # it waited for another writer: what that writer stored, and the time, may change
            # the decisions: made again now that nothing can be written before them
            made = _decide_rows(conn, requests, engine, loaded, policy, now, rules, experiment,
                                config_cache)  # fmt: skip
        out, contexts, shown = made
        _save_and_log(conn, requests, contexts, out, shown)
    if observe is not None:
        observe(shown)
    return out


#: A decision that waited longer than this for the store's write is made again before it is
#: stored: its ``decided_at`` is the time it was made, never seconds before it was stored.
STALE_SECONDS = 0.25

Contexts = list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]


def _decide_rows(
    db: Engine | sa.Connection,
    requests: list[DecisionRequest],
    engine: Engine,
    loaded: Loaded,
    policy: LearnedPolicy,
    now: datetime | pd.Timestamp | None,
    rules: NetworkRules,
    experiment: Experiment | None,
    config_cache: configs.ConfigCache | None,
) -> tuple[list[DecisionOut], Contexts, list[dict[str, Any]]]:
    """The decisions of :func:`decide` on plain rows, with each request's context and the
    feature rows decided on; experiment arms are stored through ``db`` (a connection holding
    the store's write, or the engine)."""
    default_now = datetime.now(UTC) if now is None else pd.Timestamp(now).to_pydatetime()
    check_unchanged(requests, engine)
    contexts = _row_contexts(requests, engine)
    decided_at = [(r.now.astimezone(UTC) if r.now else default_now) for r in requests]
    payments = [c[0] for c in contexts]
    configured = _configs(engine, config_cache, {p["account_id"] for p in payments})
    limits_of = {a: constraint_row(c) for a, c in configured.items()}
    own = [limits_of[p["account_id"]] for p in payments]
    decisions = single.build(
        payments, [c[1] for c in contexts], [c[2] for c in contexts], decided_at, own,
        policy.accounts, rules,
    )  # fmt: skip
    ids = [p["payment_id"] for p in payments]
    rng = DecisionRandom(ids, decided_at)
    actions = policy.act_rows(decisions, rng)
    names = [getattr(policy, "name", "policy")] * len(actions)
    if experiment is not None:
        actions, names = _control_arm(
            db, experiment, contexts, decisions.states, decided_at, own, actions, names
        )
    enforced = [
        enforce_row(s, lim, t, a, c, p)
        for s, lim, t, a, c, p in zip(
            decisions.states, decisions.limits, decided_at, actions, own, payments, strict=True
        )
    ]
    retry_at = [a["retry_at"] for a in enforced]
    probability, reasons = policy.describe_rows(decisions, retry_at)
    out = []
    for i, a in enumerate(enforced):
        tz = payments[i]["customer_timezone"] or timeutil.DEFAULT_TIMEZONE
        retry = None
        if a["retry_at"] is not None:
            retry = RetryOut(
                at_utc=a["retry_at"],
                at_local=a["retry_at"].astimezone(ZoneInfo(tz)).replace(tzinfo=None),
                local_timezone=tz,
                other_processor_allowed=other_processor_allowed(
                    payments[i],
                    [payments[i]["decline_code"], *(x["decline_code"] for x in contexts[i][1])],
                    configured[payments[i]["account_id"]].orchestration,
                ),
            )
        out.append(
            DecisionOut(
                payment_id=ids[i],
                account_id=payments[i]["account_id"],
                decided_at=decided_at[i],
                retry=retry,
                no_retry_reason=None if retry else (a["reason"] or "policy"),
                channel=a["channel"],
                sender=a["sender"],
                expected_recovery_probability=float(probability[i]),
                propensity=float(a["retry_propensity"] * a["channel_propensity"]),
                model_version=loaded.version,
                policy=names[i],
                reasons=reasons[i],
            )
        )
    return out, contexts, decisions.shown


def _row_contexts(
    requests: list[DecisionRequest], engine: Engine
) -> list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each request's payment, attempts (with attempt 0) and messages as plain rows: from
    the request where it is inline, else from the store (:class:`UnknownPayment` if absent)."""
    by_id = [r.ref for r in requests if r.payment is None]
    stored = repo.load_rows(engine, by_id) if by_id else {}
    out = []
    for r in requests:
        if r.payment is None:
            if r.ref not in stored:
                raise UnknownPayment(str(r.payment_id))
            out.append(stored[r.ref])
            continue
        payment = _plain(r.payment.model_dump(mode="python"))
        pid, account = payment["payment_id"], payment["account_id"]
        codes = vocab.DECLINE_FIELDS
        first = {"account_id": account, "payment_id": pid, "attempt_number": 0,
                 "attempted_at": payment["failed_at"], "initiator": "merchant",
                 "outcome": "failed", **{c: payment[c] for c in codes},
                 "policy": None, "propensity": None}  # fmt: skip
        attempts = [first] + [
            {
                **_plain(a.model_dump(mode="python")),
                "account_id": account,
                "payment_id": pid,
                "policy": None,
                "propensity": None,
            }  # fmt: skip
            for a in r.attempts
        ]
        messages = [
            {
                **_plain(m.model_dump(mode="python")),
                "account_id": account,
                "payment_id": pid,
                "policy": None,
                "propensity": None,
            }  # fmt: skip
            for m in r.messages
        ]
        out.append((payment, attempts, messages))
    return out


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Enum members as their string values, datetimes in UTC: rows as the store holds them."""
    out = {}
    for k, v in values.items():
        if isinstance(v, Enum):
            v = v.value
        elif isinstance(v, datetime):
            v = v.astimezone(UTC)
        out[k] = v
    return out


def _control_arm(
    db: Engine | sa.Connection,
    experiment: Experiment,
    contexts: list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]],
    states: list[dict[str, Any]],
    decided_at: list[datetime],
    own: list[dict[str, Any]],
    actions: list[dict[str, Any]],
    names: list[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The experiment's arms (stored at first decision); the control arm's decisions get
    the control policy's actions, decided on the batch path for those rows."""
    arms = experiments.assign_rows(db, experiment.design, [c[0] for c in contexts], max(decided_at))
    control = [i for i, c in enumerate(contexts) if arms.get(repo.ref(c[0])) == "control"]
    if not control:
        return actions, names
    sub = [contexts[i] for i in control]
    if isinstance(experiment.control, ScheduledRows):  # a schedule decides on plain rows
        rows = experiment.control.act_rows(
            [c[0] for c in sub],
            [states[i] for i in control],
            [decided_at[i] for i in control],
            [own[i] for i in control],
        )
        actions, names = list(actions), list(names)
        for j, i in enumerate(control):
            actions[i], names[i] = rows[j], experiment.control.name
        return actions, names
    frame = contract.conform(contract.PAYMENTS, pd.DataFrame([c[0] for c in sub]))
    attempts = contract.conform(contract.ATTEMPTS, pd.DataFrame([a for c in sub for a in c[1]]))
    rows = [m for c in sub for m in c[2]]
    messages = (
        contract.conform(contract.MESSAGES, pd.DataFrame(rows))
        if rows
        else contract.empty(contract.MESSAGES)
    )
    times = pd.Series([decided_at[i] for i in control])
    limits = pd.DataFrame([own[i] for i in control])
    batch = DecisionBatch.from_history(frame, attempts, messages, times, limits)
    rng = DecisionRandom(frame["payment_id"].tolist(), batch.now.tolist())
    chosen = experiment.control.act(batch, rng)
    actions, names = list(actions), list(names)
    for j, i in enumerate(control):
        at = chosen.retry_at.iloc[j]
        channel, sender = chosen.channel.iloc[j], chosen.sender.iloc[j]
        actions[i] = {
            "retry_at": None if pd.isna(at) else at.to_pydatetime(),
            "channel": None if pd.isna(channel) else str(channel),
            "sender": None if pd.isna(sender) else str(sender),
            "retry_propensity": float(chosen.retry_propensity[j]),
            "channel_propensity": float(chosen.channel_propensity[j]),
            "reason": chosen.reason.iloc[j] or "",
        }
        names[i] = experiment.control.name
    return actions, names


def _save_and_log(
    conn: sa.Connection,
    requests: list[DecisionRequest],
    contexts: list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]],
    decisions: list[DecisionOut],
    features: list[dict[str, Any]],
) -> None:
    """Store what inline requests told (first write wins) and log the decisions with the
    feature rows they were made on, in ``conn``'s transaction."""
    inline = [c for r, c in zip(requests, contexts, strict=True) if r.payment is not None]
    if inline:
        repo.insert_rows_ignoring(conn, t.payments, [c[0] for c in inline])
        repo.insert_rows_ignoring(conn, t.attempts, [a for c in inline for a in c[1]])
        repo.insert_rows_ignoring(conn, t.messages, [m for c in inline for m in c[2]])
    conn.execute(t.decision_log.insert(), _log_rows(decisions, features))
