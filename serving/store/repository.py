"""Reading and writing the store.

Contract rows go in validated and come out validated, with the contract's dtypes. Writes are
idempotent: a row whose key is already stored is left as it is (the first failure of a payment
stays its first failure; a redelivered event is counted, not stored twice).
"""

from __future__ import annotations

import sqlite3
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
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: a crash of the process loses nothing committed and
            # a power cut can lose only the last commits, never corrupt (docs/decisions.md)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
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


def save_contract(engine: Engine, tables: contract.ContractTables | dict) -> dict[str, int]:
    """Validate and store payments, attempts and messages in one transaction.

    Returns the number of new rows per table. Nothing is written if validation fails.
    """
    valid = contract.validate(tables)
    with engine.begin() as conn:
        return {
            name: insert_rows(conn, table, getattr(valid, name))
            for name, table in _CONTRACT.items()
        }


def load_contract(
    engine: Engine, payment_ids: list[str] | sa.Select | None = None
) -> contract.ContractTables:
    """The stored payments (all, or ``payment_ids``: a list, or a select of one column of
    them, which any number of ids may come from) with their attempts and messages."""
    frames = {}
    with engine.connect() as conn:
        for name, table in _CONTRACT.items():
            query = sa.select(table)
            if payment_ids is not None:
                query = query.where(table.c.payment_id.in_(payment_ids))
            spec = contract.TABLES_BY_NAME[name]
            rows = conn.execute(query).all()
            if not rows:
                frames[name] = contract.empty(spec)
                continue
            # column by column: twice as fast as a frame from row records
            columns = zip(*rows, strict=True)
            df = pd.DataFrame(dict(zip([c.name for c in table.columns], columns, strict=True)))
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


def load_payments(engine: Engine, payment_ids: list[str]) -> dict[str, dict]:
    """The stored payments among ``payment_ids`` as plain rows, with the store's own columns
    (``recovered``, ``closed_at``, …), datetimes aware: :func:`load_rows` without the
    attempts and messages, for who needs the payment alone."""
    if not payment_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(_payments_by_id(), {"ids": list(payment_ids)}).mappings()
        return {r["payment_id"]: {k: aware(v) for k, v in r.items()} for r in rows}


def load_rows(
    engine: Engine, payment_ids: list[str]
) -> dict[str, tuple[dict, list[dict], list[dict]]]:
    """The stored payments among ``payment_ids`` as plain rows, with their attempts and
    messages: ``{payment_id: (payment, attempts, messages)}``, datetimes aware (UTC). The
    API's path for a few decisions, with no DataFrame; :func:`load_contract` is the same
    data as contract tables."""
    if not payment_ids:
        return {}
    out: dict[str, tuple[dict, list[dict], list[dict]]] = {}
    with engine.connect() as conn:
        for name, table in _CONTRACT.items():
            query = sa.select(table).where(table.c.payment_id.in_(payment_ids))
            if name == "attempts":
                query = query.order_by(table.c.payment_id, table.c.attempt_number)
            for row in conn.execute(query).mappings():
                values = {k: aware(v) for k, v in row.items()}
                if name == "payments":
                    out[values["payment_id"]] = (values, [], [])
                elif values["payment_id"] in out:
                    out[values["payment_id"]][1 if name == "attempts" else 2].append(values)
    return out


@cache
def _payments_by_id() -> sa.Select:
    """Payments by a list of ids (bound as ``ids``), the statement built once."""
    return sa.select(t.payments).where(
        t.payments.c.payment_id.in_(sa.bindparam("ids", expanding=True))
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
