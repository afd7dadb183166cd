"""Reading and writing the store.

Contract rows go in validated and come out validated, with the contract's dtypes. Writes are
idempotent: a row whose key is already stored is left as it is (the first failure of a payment
stays its first failure; a redelivered event is counted, not stored twice).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from datetime import UTC, datetime
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from reclaim import contract
from reclaim.serving.store import tables as t

_CONTRACT = {"payments": t.payments, "attempts": t.attempts, "messages": t.messages}


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so readers never block.

    Its errors never carry the statement's values (``hide_parameters``): an error is logged
    and kept with a failed event, and the values are customers' data."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # pragma: no cover - trivial
            cur = conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            # WAL is the database's own setting, kept once set: switching needs the database
            # to itself, so a connection opened while another writes asks only if it must
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: a crash of the process loses nothing committed and
            # a power cut can lose only the last commits, never corrupt (docs/decisions.md)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)


def describe_error(exc: BaseException) -> str:
    """An error as it may be kept and shown: a database error by its kind and statement
    (never its values, nor the database's detail, which quotes them), anything else by its
    message, cut to 500 characters."""
    if isinstance(exc, sa.exc.StatementError):
        orig = type(exc.orig).__name__ if exc.orig is not None else "error"
        statement = " ".join(str(exc.statement or "").split())[:300]
        return f"{type(exc).__name__} ({orig}) in: {statement}"
    return f"{type(exc).__name__}: {exc}"[:500]


def writes_blocked(engine: Engine, wait_seconds: float = 1.0) -> str | None:
    """Why the store would not take a write now, or None: a probe that takes the write
    lock a webhook's or a decision's insert needs, waits at most ``wait_seconds``, and
    writes nothing. SQLite: another connection holds the database's write lock. PostgreSQL:
    the server is read-only, or a lock on the events table keeps inserts out."""
    ms = max(int(wait_seconds * 1000), 1)
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(f"PRAGMA busy_timeout={ms}")
            try:
                cur.execute("BEGIN IMMEDIATE")
                cur.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                return f"writes blocked: {exc}"
            finally:
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
        finally:
            raw.close()
        return None
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{ms}ms'")
            if conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
                return "writes blocked: the database is read-only"
            conn.exec_driver_sql("LOCK TABLE stripe_events IN ROW EXCLUSIVE MODE")
            conn.rollback()
    except sa.exc.DBAPIError as exc:
        return f"writes blocked: {type(exc.orig).__name__}"
    return None


def hold_writes(conn: sa.Connection) -> None:
    """Make ``conn``'s transaction the store's writer from now until it ends, so that what
    it reads elsewhere and then writes is not overtaken: on SQLite it takes the database's
    one write lock (waiting for it, up to the busy timeout) with a write that changes
    nothing; PostgreSQL locks row by row, and nothing is needed there."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("UPDATE scheduler_leader SET name = name WHERE 0")


def insert_rows_ignoring(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> int:
    """Insert rows; keys already stored are skipped. Returns how many were new."""
    if not rows:
        return 0
    return len(conn.execute(_insert_ignoring(conn.dialect.name, table), rows).all())


@cache
def _insert_ignoring(dialect: str, table: sa.Table) -> sa.Insert:
    """The statement of :func:`insert_rows_ignoring`, built once per dialect and table (the
    API writes a few rows per call, where building it costs as much as running it)."""
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise ValueError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
    # rowcount is unreliable for executemany (psycopg reports -1); RETURNING lists exactly
    # the rows inserted, on SQLite and PostgreSQL alike.
    return stmt.returning(list(table.primary_key.columns)[0])


def _records(df: pd.DataFrame) -> list[dict]:
    """The frame's rows as dicts of plain Python values, missing values as None."""
    columns = {}
    for name in df.columns:
        s = df[name]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            values = np.array(s.dt.to_pydatetime(), dtype=object)
        else:
            values = s.to_numpy(dtype=object, copy=True)
        values[pd.isna(values)] = None
        columns[name] = values
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def insert_rows(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> int:
    """Insert a frame's rows inside ``conn``'s transaction, skipping keys already stored;
    returns how many were new."""
    return insert_rows_ignoring(conn, table, _records(frame))


#: A stored payment's key: its connected account and its id (Stripe ids are unique within an
#: account, not across accounts).
Ref = tuple[str, str]


def ref(row: Any) -> Ref:
    """The key of a payment, or of a row about one (a mapping or a named row with
    ``account_id`` and ``payment_id``)."""
    return (str(row["account_id"]), str(row["payment_id"]))


def save_contract(engine: Engine, tables: contract.ContractTables | dict) -> dict[str, int]:
    """Validate and store payments, attempts and messages in one transaction.

    Attempts and messages take their payment's account: of a payment in ``tables``, else of
    the one stored payment with that id. Returns the number of new rows per table. Nothing
    is written if validation fails, or if a row's payment is in neither place (ValueError
    naming it) or is held by several accounts.
    """
    valid = contract.validate(tables)
    with engine.begin() as conn:
        owners = dict(zip(valid.payments["payment_id"], valid.payments["account_id"], strict=True))
        frames = {"payments": valid.payments}
        for name in ("attempts", "messages"):
            frame = getattr(valid, name)
            frames[name] = frame.assign(account_id=_owners(conn, owners, frame["payment_id"]))
        return {name: insert_rows(conn, table, frames[name]) for name, table in _CONTRACT.items()}


def _owners(conn: sa.Connection, owners: dict[str, str], ids: pd.Series) -> list[str]:
    """The account of each payment id: from ``owners``, else the store's (held by one
    account only)."""
    missing = sorted(set(ids) - set(owners))
    if missing:
        p = t.payments.c
        found: dict[str, set[str]] = {}
        for start in range(0, len(missing), 500):
            rows = conn.execute(
                sa.select(p.payment_id, p.account_id).where(
                    p.payment_id.in_(missing[start : start + 500])
                )
            )
            for pid, account in rows:
                found.setdefault(pid, set()).add(account)
        for pid in missing:
            accounts = found.get(pid, set())
            if len(accounts) != 1:
                what = "not stored nor given" if not accounts else "held by several accounts"
                raise ValueError(f"payment_id {pid!r}: its payment is {what}")
            owners[pid] = accounts.pop()
    return [owners[pid] for pid in ids]


def _by_refs(table: sa.Table, refs: list[Ref] | sa.Select) -> Any:
    """A condition: ``table``'s rows about the payments ``refs`` (a list of keys, or a
    select of ``account_id`` and ``payment_id``).

    SQLite answers a row value ``IN`` list by scanning the table: the accounts and the ids
    are also asked for on their own, which its index on (account, id) looks up, and the pairs
    then only filter what the index found."""
    pair = sa.tuple_(table.c.account_id, table.c.payment_id)
    if isinstance(refs, sa.Select):
        return pair.in_(refs)
    pairs = [tuple(r) for r in refs]
    return sa.and_(
        table.c.account_id.in_(sorted({a for a, _ in pairs})),
        table.c.payment_id.in_(sorted({p for _, p in pairs})),
        pair.in_(pairs),
    )


def load_contract(
    engine: Engine, refs: list[Ref] | sa.Select | None = None
) -> contract.ContractTables:
    """The stored payments (all, or ``refs``: a list of keys, or a select of
    ``account_id`` and ``payment_id``, which any number may come from) with their attempts
    and messages, as contract tables (two accounts' payments of the same id cannot be
    loaded together: the contract keys payments by id)."""
    frames = {}
    with engine.connect() as conn:
        for name, table in _CONTRACT.items():
            spec = contract.TABLES_BY_NAME[name]
            query = sa.select(*(table.c[c] for c in spec.column_names))
            if refs is not None:
                query = query.where(_by_refs(table, refs))
            rows = conn.execute(query).all()
            if not rows:
                frames[name] = contract.empty(spec)
                continue
            # column by column: twice as fast as a frame from row records
            columns = zip(*rows, strict=True)
            df = pd.DataFrame(dict(zip(spec.column_names, columns, strict=True)))
            for column in spec.columns:
                if column.kind == "timestamp":
                    # SQLite hands back naive datetimes: they were stored as UTC.
                    df[column.name] = contract.utc(pd.to_datetime(df[column.name]), df.index)
            frames[name] = df
    return contract.validate(frames)


def aware(value: Any) -> Any:
    """A datetime read from the store, made aware: SQLite hands back naive datetimes, stored
    as UTC. Anything else passes unchanged."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def load_payments(engine: Engine, refs: list[Ref]) -> dict[Ref, dict]:
    """The stored payments among ``refs`` as plain rows, with the store's own columns
    (``recovered``, ``closed_at``, …), datetimes aware: :func:`load_rows` without the
    attempts and messages, for who needs the payment alone."""
    if not refs:
        return {}
    pairs = [tuple(r) for r in refs]
    params = {
        "refs": pairs,
        "accounts": sorted({a for a, _ in pairs}),
        "ids": sorted({p for _, p in pairs}),
    }
    with engine.connect() as conn:
        rows = conn.execute(_payments_by_ref(), params).mappings()
        return {ref(r): {k: aware(v) for k, v in r.items()} for r in rows}


def load_rows(engine: Engine, refs: list[Ref]) -> dict[Ref, tuple[dict, list[dict], list[dict]]]:
    """The stored payments among ``refs`` as plain rows, with their attempts and messages:
    ``{(account_id, payment_id): (payment, attempts, messages)}``, datetimes aware (UTC). The
    API's path for a few decisions, with no DataFrame; :func:`load_contract` is the same
    data as contract tables."""
    if not refs:
        return {}
    out: dict[Ref, tuple[dict, list[dict], list[dict]]] = {}
    with engine.connect() as conn:
        for name, table in _CONTRACT.items():
            query = sa.select(table).where(_by_refs(table, refs))
            if name == "attempts":
                query = query.order_by(table.c.payment_id, table.c.attempt_number)
            for row in conn.execute(query).mappings():
                values = {k: aware(v) for k, v in row.items()}
                key = ref(values)
                if name == "payments":
                    out[key] = (values, [], [])
                elif key in out:
                    out[key][1 if name == "attempts" else 2].append(values)
    return out


def accounts_holding(
    engine: Engine, payment_ids: list[str], accounts: Collection[str] | None = None
) -> dict[str, list[str]]:
    """The accounts that hold each of ``payment_ids`` (an id may be held by several); with
    ``accounts``, among those only: the store is searched by its key, (account, id), so an
    id another account holds costs the lookup exactly what an id nobody holds does."""
    if not payment_ids:
        return {}
    out: dict[str, list[str]] = {}
    p = t.payments.c
    query = sa.select(p.payment_id, p.account_id).order_by(p.account_id)
    if accounts is None:
        query = query.where(p.payment_id.in_(list(payment_ids)))
    else:  # every pair of an account and an id: the index on (account, id) finds them
        if not accounts:
            return {}
        query = query.where(p.account_id.in_(sorted(accounts)), p.payment_id.in_(list(payment_ids)))
    with engine.connect() as conn:
        rows = conn.execute(query)
        for pid, account in rows:
            out.setdefault(pid, []).append(account)
    return out


@cache
def _payments_by_ref() -> sa.Select:
    """Payments by a list of keys (bound as ``refs``, with their ``accounts`` and ``ids``
    for the index: see :func:`_by_refs`), the statement built once."""
    p = t.payments.c
    return sa.select(t.payments).where(
        p.account_id.in_(sa.bindparam("accounts", expanding=True)),
        p.payment_id.in_(sa.bindparam("ids", expanding=True)),
        sa.tuple_(p.account_id, p.payment_id).in_(sa.bindparam("refs", expanding=True)),
    )


def record_event(
    engine: Engine,
    *,
    event_id: str,
    endpoint: str,
    event_type: str,
    account_id: str | None,
    livemode: bool,
    payload: str,
    received_at: datetime | None = None,
) -> bool:
    """Store a received Stripe event once. Returns True the first time; a redelivery only
    increments ``deliveries``."""
    row = {
        "event_id": event_id,
        "endpoint": endpoint,
        "type": event_type,
        "account_id": account_id,
        "livemode": livemode,
        "payload": payload,
        "received_at": received_at or datetime.now(UTC),
        "deliveries": 1,
        "status": "received",
    }
    with engine.begin() as conn:
        if insert_rows_ignoring(conn, t.stripe_events, [row]):
            return True
        conn.execute(
            sa.update(t.stripe_events)
            .where(t.stripe_events.c.event_id == event_id)
            .values(deliveries=t.stripe_events.c.deliveries + 1)
        )
        return False
