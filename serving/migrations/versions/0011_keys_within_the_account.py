"""tenancy in the keys: every row about a payment is keyed by its connected account and id

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 04:30:00

Stripe ids are unique within a connected account, and two accounts' integrations may send the
same id: a payment was one row per id, so the first account to store an id owned it, and the
other account's events and retries landed on its row. Now payments, attempts, messages,
decisions, aliases and experiment assignments are keyed by ``(account_id, …)``; attempts,
messages and decisions gain the account (their payment's); a scheduled action's and an outbox
message's key gain the account as their first part. Attempts or messages whose payment is not
stored (none are written so) keep an empty account, never dropped.

The triggers that keep the rollups and the payments' recovery columns match a payment by both
columns too (``serving.store.triggers``); they are dropped before the tables are rebuilt
(SQLite's batch mode copies a table, which would drop them) and created again after.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from reclaim.serving.store import triggers

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: table -> its key now
KEYS = {
    "payments": ["account_id", "payment_id"],
    "attempts": ["account_id", "payment_id", "attempt_number"],
    "messages": ["account_id", "message_id"],
    "payment_aliases": ["account_id", "object_id"],
    "experiment_assignments": ["experiment", "account_id", "payment_id"],
}

#: index -> (table, columns now, columns before)
INDEXES = {
    "ix_attempts_payment_time": (
        "attempts",
        ["account_id", "payment_id", "attempted_at"],
        ["payment_id", "attempted_at"],
    ),
    "ix_messages_payment": ("messages", ["account_id", "payment_id"], ["payment_id"]),
    "ix_decision_log_payment": (
        "decision_log",
        ["account_id", "payment_id", "decided_at"],
        ["payment_id", "decided_at"],
    ),
    "ix_scheduled_actions_payment": (
        "scheduled_actions",
        ["account_id", "payment_id"],
        ["payment_id"],
    ),
}

_OWNER = (
    "coalesce((SELECT p.account_id FROM payments p WHERE p.payment_id = {table}.payment_id), '')"
)


def _rekey(table: str, columns: list[str]) -> None:
    """Give ``table`` the primary key ``columns`` (its ``account_id`` made not null)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.alter_column(table, "account_id", existing_type=sa.String(255), nullable=False)
        op.drop_constraint(sa.inspect(bind).get_pk_constraint(table)["name"], table, "primary")
        op.create_primary_key(f"pk_{table}", table, columns)
        return
    # SQLite cannot alter a key: the table is copied to one that has it
    shape = sa.Table(table, sa.MetaData(), autoload_with=bind)
    for column in shape.columns:
        column.primary_key = False
    shape.c.account_id.nullable = False
    shape.append_constraint(sa.PrimaryKeyConstraint(*columns, name=f"pk_{table}"))
    with op.batch_alter_table(table, recreate="always", copy_from=shape):
        pass


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in triggers.drop(dialect, functions=("stats_contribute(text, bigint)",)):
        op.execute(statement)
    for name, (table, _, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
    # the account of each row about a payment: its payment's (ids were unique until now)
    for table in ("attempts", "messages", "decision_log"):
        op.add_column(table, sa.Column("account_id", sa.String(255)))
        op.execute(f"UPDATE {table} SET account_id = " + _OWNER.format(table=table))
    for table in ("scheduled_actions", "outbox"):
        key = "action_id" if table == "scheduled_actions" else "message_key"
        op.execute(f"UPDATE {table} SET {key} = account_id || ':' || {key}")
    with op.batch_alter_table("decision_log") as batch:
        batch.alter_column("account_id", existing_type=sa.String(255), nullable=False)
    for table, columns in KEYS.items():
        _rekey(table, columns)
    for name, (table, columns, _) in INDEXES.items():
        op.create_index(name, table, columns)
    op.create_index("ix_payments_payment_id", "payments", ["payment_id"])
    op.create_index("ix_payment_aliases_object", "payment_aliases", ["object_id"])
    for statement in triggers.create(dialect):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError(
        "0011 cannot be undone: two accounts may now hold the same payment id, which the "
        "earlier keys cannot store; restore a backup taken before the upgrade"
    )
