"""recovery rollups kept by triggers: per day and currency, per month, account and currency,
and per day and breakdown group; each payment's recovered flag and merchant retries

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 21:00:00

Database triggers keep the rollups, so every writer (the API, the scheduler, webhooks, a bulk
load) keeps them exact in its own transaction. A payment counts in the rollups from its
insert, by the UTC day (and month) of its first failure; an attempt that recovers it or is a
merchant retry takes the payment's contribution out, updates the payment's ``recovered`` and
``merchant_retries``, and puts it back. Payments and attempts are only ever inserted (an
attempt's later update touches its policy and propensity only), so inserts are all the
triggers watch.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The breakdowns kept per day: dimension -> its key as text ('' where unknown).
GROUPS = {
    "decline_code": "coalesce(p.decline_code, '')",
    "charge_model": "coalesce(p.charge_model, '')",
    "card_brand": "coalesce(p.card_brand, '')",
    "local_hour": "coalesce(cast(p.failed_local_hour AS TEXT), '')",
    "retries": "cast(p.merchant_retries AS TEXT)",
}

_DAY = {
    "sqlite": "strftime('%Y-%m-%d', p.failed_at)",
    "postgresql": "to_char(p.failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
_MONTH = {
    "sqlite": "strftime('%Y-%m', p.failed_at)",
    "postgresql": "to_char(p.failed_at AT TIME ZONE 'UTC', 'YYYY-MM')",
}

_SUCCEEDED = (
    "CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.payment_id = {pid} "
    "AND a.outcome = 'succeeded') THEN 1 ELSE 0 END"
)
_RETRIES = (
    "(SELECT count(*) FROM attempts a WHERE a.payment_id = {pid} "
    "AND a.initiator = 'merchant' AND a.attempt_number > 0)"
)


def _money(table: str) -> str:
    return ", ".join(
        f"{c} = {table}.{c} + excluded.{c}" for c in ("failed", "recovered", "amount", "fee")
    )


def _contribute(
    dialect: str, pid: str, sign: str, where: str = "p.payment_id = {pid}"
) -> list[str]:
    """Statements adding ``sign`` (1 or -1) times the payments matched by ``where`` to every
    rollup (with ``sign`` '1' and ``where`` 'true' and GROUP BY: the backfill)."""
    day, month = _DAY[dialect], _MONTH[dialect]
    cond = where.format(pid=pid)
    groups = " UNION ALL ".join(f"SELECT '{name}' AS dimension" for name in GROUPS)
    key = (
        "CASE g.dimension "
        + " ".join(f"WHEN '{name}' THEN {expr}" for name, expr in GROUPS.items())
        + " END"
    )
    sums = (
        f"sum({sign}), sum({sign} * p.recovered), sum({sign} * p.recovered * p.amount), "
        f"sum({sign} * p.recovered * coalesce(p.application_fee_amount, 0))"
    )
    return [
        f"INSERT INTO stats_days (day, currency, failed, recovered, amount, fee) "
        f"SELECT {day}, p.currency, {sums} FROM payments p WHERE {cond} "
        f"GROUP BY {day}, p.currency "
        f"ON CONFLICT (day, currency) DO UPDATE SET {_money('stats_days')}",
        f"INSERT INTO stats_account_months (month, account_id, currency, failed, recovered, "
        f"amount, fee) SELECT {month}, p.account_id, p.currency, {sums} FROM payments p "
        f"WHERE {cond} GROUP BY {month}, p.account_id, p.currency "
        f"ON CONFLICT (month, account_id, currency) DO UPDATE SET "
        f"{_money('stats_account_months')}",
        f"INSERT INTO stats_groups (day, dimension, key, failed, recovered) "
        f"SELECT {day}, g.dimension, {key}, sum({sign}), sum({sign} * p.recovered) "
        f"FROM payments p CROSS JOIN ({groups}) g WHERE {cond} "
        f"GROUP BY {day}, g.dimension, {key} "
        f"ON CONFLICT (day, dimension, key) DO UPDATE SET "
        f"failed = stats_groups.failed + excluded.failed, "
        f"recovered = stats_groups.recovered + excluded.recovered",
    ]


def _payment_state(pid: str) -> str:
    """Sets a payment's ``recovered`` and ``merchant_retries`` from its stored attempts
    (attempts stored before their payment, as a bulk load may)."""
    return (
        f"UPDATE payments SET recovered = {_SUCCEEDED.format(pid=pid)}, "
        f"merchant_retries = {_RETRIES.format(pid=pid)} "
        f"WHERE payment_id = {pid} AND EXISTS (SELECT 1 FROM attempts a WHERE a.payment_id = {pid})"
    )


_ATTEMPT_COUNTS = (
    "NEW.outcome = 'succeeded' OR (NEW.initiator = 'merchant' AND NEW.attempt_number > 0)"
)
_ATTEMPT_UPDATE = (
    "UPDATE payments SET "
    "recovered = CASE WHEN NEW.outcome = 'succeeded' THEN 1 ELSE recovered END, "
    "merchant_retries = merchant_retries + "
    "CASE WHEN NEW.initiator = 'merchant' AND NEW.attempt_number > 0 THEN 1 ELSE 0 END "
    "WHERE payment_id = NEW.payment_id"
)


def _sqlite() -> list[str]:
    added = ";\n".join(
        [_payment_state("NEW.payment_id"), *_contribute("sqlite", "NEW.payment_id", "1")]
    )
    moved = ";\n".join(
        [
            *_contribute("sqlite", "NEW.payment_id", "-1"),
            _ATTEMPT_UPDATE,
            *_contribute("sqlite", "NEW.payment_id", "1"),
        ]
    )
    return [
        f"CREATE TRIGGER stats_payment_added AFTER INSERT ON payments BEGIN {added}; END",
        f"CREATE TRIGGER stats_attempt_added AFTER INSERT ON attempts "
        f"WHEN {_ATTEMPT_COUNTS} BEGIN {moved}; END",
    ]


def _postgresql() -> list[str]:
    contribute = ";\n".join(_contribute("postgresql", "pid", "s"))
    return [
        f"CREATE FUNCTION stats_contribute(pid text, s bigint) RETURNS void LANGUAGE plpgsql "
        f"AS $$ BEGIN {contribute}; END $$",
        f"CREATE FUNCTION stats_payment_added() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"{_payment_state('NEW.payment_id')}; PERFORM stats_contribute(NEW.payment_id, 1); "
        f"RETURN NULL; END $$",
        f"CREATE FUNCTION stats_attempt_added() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF {_ATTEMPT_COUNTS} THEN PERFORM stats_contribute(NEW.payment_id, -1); "
        f"{_ATTEMPT_UPDATE}; PERFORM stats_contribute(NEW.payment_id, 1); END IF; "
        f"RETURN NULL; END $$",
        "CREATE TRIGGER stats_payment_added AFTER INSERT ON payments FOR EACH ROW "
        "EXECUTE FUNCTION stats_payment_added()",
        "CREATE TRIGGER stats_attempt_added AFTER INSERT ON attempts FOR EACH ROW "
        "EXECUTE FUNCTION stats_attempt_added()",
    ]


def _counts(money: bool) -> list[sa.Column]:
    names = ("failed", "recovered", "amount", "fee") if money else ("failed", "recovered")
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in names]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("payments") as batch:
        batch.add_column(
            sa.Column("recovered", sa.SmallInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("merchant_retries", sa.Integer(), nullable=False, server_default="0")
        )
        batch.create_index("ix_payments_failed_at", ["failed_at"], unique=False)
    op.create_table(
        "stats_days",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("currency", sa.String(40), primary_key=True),
        *_counts(money=True),
    )
    op.create_table(
        "stats_account_months",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("account_id", sa.String(255), primary_key=True),
        sa.Column("currency", sa.String(40), primary_key=True),
        *_counts(money=True),
    )
    op.create_table(
        "stats_groups",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("dimension", sa.String(20), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        *_counts(money=False),
    )
    # the payments stored so far: their state from their attempts, then the rollups at once
    op.execute(_payment_state("payments.payment_id"))
    for statement in _contribute(dialect, "", "1", where="true"):
        op.execute(statement)
    for statement in _sqlite() if dialect == "sqlite" else _postgresql():
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(
        "DROP TRIGGER IF EXISTS stats_attempt_added"
        + ("" if dialect == "sqlite" else " ON attempts")
    )
    op.execute(
        "DROP TRIGGER IF EXISTS stats_payment_added"
        + ("" if dialect == "sqlite" else " ON payments")
    )
    if dialect == "postgresql":
        for name in (
            "stats_attempt_added()",
            "stats_payment_added()",
            "stats_contribute(text, bigint)",
        ):
            op.execute(f"DROP FUNCTION IF EXISTS {name}")
    for table in ("stats_groups", "stats_account_months", "stats_days"):
        op.drop_table(table)
    with op.batch_alter_table("payments") as batch:
        batch.drop_index("ix_payments_failed_at")
        batch.drop_column("merchant_retries")
        batch.drop_column("recovered")
