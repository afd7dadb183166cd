"""Experiment assignments in the store: each payment's arm, decided once.

:func:`assign` returns the stored arm of every payment already assigned and assigns the rest
by :meth:`reclaim.experiment.ExperimentDesign.assign`, sizing each account by its failed
payments stored in the 90 days before ``now``. Inserts skip rows already there, so two API
processes assigning the same payment at once keep the first one's arm.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim import contract
from reclaim.experiment import ExperimentDesign
from reclaim.rules import NetworkRules
from reclaim.serving.store import configs
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t

SIZE_DAYS = 90


def _connected(db: Engine | sa.Connection) -> AbstractContextManager[sa.Connection]:
    """A transaction of ``db``'s own, or ``db`` itself if it is a connection (whose caller
    holds the transaction)."""
    return db.begin() if isinstance(db, Engine) else nullcontext(db)


def account_sizes(
    db: Engine | sa.Connection, account_ids: list[str], now: datetime
) -> dict[str, int]:
    """Failed payments stored per account in the ``SIZE_DAYS`` before ``now``."""
    p = t.payments.c
    with _connected(db) as conn:
        rows = conn.execute(
            sa.select(p.account_id, sa.func.count())
            .where(p.account_id.in_(account_ids))
            .where(p.failed_at >= now - timedelta(days=SIZE_DAYS))
            .where(p.failed_at <= now)
            .group_by(p.account_id)
        ).all()
    return {a: int(n) for a, n in rows}


def assign(
    engine: Engine, design: ExperimentDesign, payments: pd.DataFrame, now: datetime
) -> dict[str, str]:
    """The arm of each of ``payments`` (contract rows, stored), by payment key
    ``(account_id, payment_id)``."""
    columns = ["payment_id", "account_id", "customer_id"]
    rows = payments[columns].astype(object).to_dict(orient="records")
    return assign_rows(engine, design, rows, now)


def assign_rows(
    db: Engine | sa.Connection,
    design: ExperimentDesign,
    payments: list[dict[str, Any]],
    now: datetime,
) -> dict[repo.Ref, str]:
    """:func:`assign` for payments as plain rows (``payment_id``, ``account_id``,
    ``customer_id``): the API's path, with no DataFrame; with a connection, inside its
    transaction."""
    refs = list(dict.fromkeys(repo.ref(p) for p in payments))
    stored = _stored(db, design.name, refs)
    new = list({repo.ref(p): p for p in payments if repo.ref(p) not in stored}.values())
    if new:
        accounts = [str(p["account_id"]) for p in new]
        sizes = account_sizes(db, list(set(accounts)), now)
        units = [
            str(p["customer_id"] if design.unit == "customer" else p["account_id"]) for p in new
        ]
        segments, arms = design.assign(
            units, np.array([sizes.get(a, 0) for a in accounts], dtype=float)
        )
        rows = [
            {
                "experiment": design.name,
                "payment_id": p["payment_id"],
                "unit_id": unit,
                "account_id": account,
                "segment": segment,
                "arm": arm,
                "assigned_at": now,
            }
            for p, unit, account, segment, arm in zip(
                new, units, accounts, segments, arms, strict=True
            )
        ]
        with _connected(db) as conn:
            repo.insert_rows_ignoring(conn, t.experiment_assignments, rows)
        stored |= _stored(db, design.name, [repo.ref(r) for r in rows])
    return {key: stored[key] for key in refs}


def _stored(
    db: Engine | sa.Connection, experiment: str, refs: list[repo.Ref]
) -> dict[repo.Ref, str]:
    e = t.experiment_assignments.c
    with _connected(db) as conn:
        rows = conn.execute(
            sa.select(e.account_id, e.payment_id, e.arm)
            .where(e.experiment == experiment)
            .where(e.account_id.in_(sorted({a for a, _ in refs})))
            .where(e.payment_id.in_(sorted({p for _, p in refs})))
            .where(sa.tuple_(e.account_id, e.payment_id).in_(refs))  # see repo._by_refs
        ).all()
    return {(a, pid): arm for a, pid, arm in rows}


def load_assignments(
    engine: Engine, experiment: str, accounts: Collection[str] | None = None
) -> pd.DataFrame:
    """Every stored assignment of ``experiment`` (on ``accounts`` only, if given):
    ``payment_id``, ``unit_id``, ``account_id``, ``segment``, ``arm``, ``assigned_at``."""
    e = t.experiment_assignments
    query = _assigned(sa.select(e), experiment, accounts).order_by(e.c.payment_id)
    with engine.connect() as conn:
        return pd.read_sql(query, conn).drop(columns="experiment")


def _assigned(query: Any, experiment: str, accounts: Collection[str] | None) -> Any:
    """``query`` restricted to the assignments of ``experiment`` on ``accounts`` (None: all)."""
    e = t.experiment_assignments.c
    query = query.where(e.experiment == experiment)
    return query if accounts is None else query.where(e.account_id.in_(sorted(accounts)))


def experiments(engine: Engine) -> dict[str, int]:
    """Stored experiments and how many payments each has assigned."""
    e = t.experiment_assignments.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(e.experiment, sa.func.count()).group_by(e.experiment)).all()
    return {name: int(n) for name, n in rows}


def arm_policies(engine: Engine, experiment: str) -> dict[str, str]:
    """Each arm of ``experiment`` named by its policy: the one most of the arm's logged
    decisions name (``stripe_like``, ``learned``); arms with no logged decision are absent."""
    e, d = t.experiment_assignments.c, t.decision_log.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(e.arm, d.policy, sa.func.count())
            .select_from(
                t.experiment_assignments.join(
                    t.decision_log,
                    sa.and_(d.account_id == e.account_id, d.payment_id == e.payment_id),
                )
            )
            .where(e.experiment == experiment)
            .group_by(e.arm, d.policy)
        ).all()
    named: dict[str, str] = {}
    for arm, policy, _ in sorted(rows, key=lambda r: (-r[2], str(r[1]))):
        if policy:
            named.setdefault(arm, policy)
    return named


def report_inputs(
    engine: Engine, experiment: str, accounts: Collection[str] | None = None
) -> tuple[contract.ContractTables, pd.DataFrame, set[str], pd.DataFrame]:
    """What :func:`reclaim.training.ab_report.build_report` needs from the store: the contract
    tables of the experiment's payments, its assignments, the accounts whose configuration
    opts out, and the pre-period's counts (:func:`pre_period_counts`, its ``pre``) — not the
    whole store. With ``accounts``, the experiment as it ran on those accounts alone: their
    assignments, payments and pre-period, nothing read of any other account. Raises
    LookupError naming the stored experiments when ``experiment`` has no assignment (there).
    Recovered means within the network rules' window, as the report counts it."""
    assignments = load_assignments(engine, experiment, accounts)
    if assignments.empty:
        if accounts is not None:
            raise LookupError(f"no payments of these accounts are in experiment {experiment!r}")
        known = experiments(engine)
        raise LookupError(
            f"no payments are assigned to experiment {experiment!r}; stored experiments: "
            f"{known or 'none'}"
        )
    e = t.experiment_assignments.c
    tables = repo.load_contract(
        engine, _assigned(sa.select(e.account_id, e.payment_id), experiment, accounts)
    )
    owners = list(set(tables.payments["account_id"].astype("object")))
    opted_out = {a for a, c in configs.effective_configs(engine, owners).items() if c.opted_out}
    pre = pre_period_counts(engine, experiment, NetworkRules().window_days, accounts)
    return tables, assignments, opted_out, pre


def pre_period_counts(
    engine: Engine,
    experiment: str,
    window_days: float,
    accounts: Collection[str] | None = None,
) -> pd.DataFrame:
    """Per connected account (index ``account_id``): its ``payments`` that failed before the
    experiment's first assigned payment and how many were ``recovered`` (a succeeded attempt
    within ``window_days`` of the failure) — in the database, as
    :func:`reclaim.training.ab_report.pre_period_counts` counts them from tables. With
    ``accounts``, those accounts only, before the first of their assigned payments."""
    p, e = t.payments.c, t.experiment_assignments.c
    first = sa.select(sa.func.min(p.failed_at)).select_from(
        t.experiment_assignments.join(
            t.payments, sa.and_(p.account_id == e.account_id, p.payment_id == e.payment_id)
        )
    )
    start = _assigned(first, experiment, accounts).scalar_subquery()
    seconds = round(window_days * 86400)
    if engine.dialect.name == "sqlite":
        # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): whole seconds added to the part before
        # the fraction (SQLite's date functions round a fraction to milliseconds, so .9999995
        # would become the next second), the fraction put back: the bound compares as text
        whole = sa.func.substr(p.failed_at, 1, 19)
        end = sa.func.strftime("%Y-%m-%d %H:%M:%S", whole, f"+{seconds} seconds").op("||")(
            sa.func.substr(p.failed_at, 20)
        )
    else:
        end = p.failed_at + sa.literal(timedelta(seconds=seconds))
    # `recovered_at`: the first succeeded attempt's time, kept by the store's triggers
    won = sa.case((p.recovered_at.is_(None), 0), (p.recovered_at <= end, 1), else_=0)
    # grouped by an expression, not the column: on the column SQLite walks the account index
    # to spare a sort and visits every row of the table; this way it reads the covering index
    # on failed_at alone (a million payments: 1.3 s against 3.4 s)
    account = p.account_id.concat("")
    query = (
        sa.select(account.label("account_id"), sa.func.count().label("payments"),
                  sa.func.sum(won).label("recovered"))
        .where(p.failed_at < start)
        .group_by(account)
    )  # fmt: skip
    if accounts is not None:
        query = query.where(p.account_id.in_(sorted(accounts)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    counts = pd.DataFrame(rows, columns=["account_id", "payments", "recovered"])
    return counts.astype({"payments": "int64", "recovered": "int64"}).set_index("account_id")
