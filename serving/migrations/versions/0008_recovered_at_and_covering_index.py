"""each payment's first recovery time, kept by triggers, and a covering index for a period's
failed payments: the accounts table and an experiment's pre-period read the index alone

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 21:10:00

``payments.recovered_at`` is the time of the payment's first succeeded attempt (NULL while it
has none), kept by triggers as attempts arrive, in any order, like ``recovered`` (0007).
"Recovered within the window" is then a comparison within the row, not a search of the
attempts: an experiment's pre-period over a year of payments is one index scan.

A period's partial days are read from the payments themselves (``serving.store.stats``); for
the accounts table that means every payment of those days grouped by account and currency.
With the columns those queries read in the index on ``failed_at``, the database scans the
index and never visits the table's rows (a million payments, SQLite: the accounts table over
30 days ending mid-day 243 ms before, 80 ms after). It replaces the plain index on
``failed_at``, which it serves for every range on that column. An index on an experiment's
assignments by account serves a key scoped to accounts: its experiment page reads those
accounts' assignments alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = [
    "failed_at", "account_id", "currency", "amount", "application_fee_amount", "recovered",
    "recovered_at",
]  # fmt: skip

_FIRST = (
    "(SELECT min(a.attempted_at) FROM attempts a WHERE a.payment_id = {pid} "
    "AND a.outcome = 'succeeded')"
)
_STORED = (
    "UPDATE payments SET recovered_at = " + _FIRST.format(pid="NEW.payment_id") + " "
    "WHERE payment_id = NEW.payment_id"
)
_SUCCEEDED = (
    "UPDATE payments SET recovered_at = NEW.attempted_at WHERE payment_id = NEW.payment_id "
    "AND (recovered_at IS NULL OR recovered_at > NEW.attempted_at)"
)
_HAS_SUCCESS = (
    "EXISTS (SELECT 1 FROM attempts a WHERE a.payment_id = NEW.payment_id "
    "AND a.outcome = 'succeeded')"
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # outside batch mode: SQLite's batch mode may copy the table, which would drop its triggers
    op.add_column("payments", sa.Column("recovered_at", sa.DateTime(timezone=True)))
    op.execute(
        "UPDATE payments SET recovered_at = "
        + _FIRST.format(pid="payments.payment_id")
        + " WHERE recovered = 1"
    )
    if dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER recovered_at_attempt AFTER INSERT ON attempts "
            f"WHEN NEW.outcome = 'succeeded' BEGIN {_SUCCEEDED}; END"
        )
        op.execute(
            "CREATE TRIGGER recovered_at_payment AFTER INSERT ON payments "
            f"WHEN {_HAS_SUCCESS} BEGIN {_STORED}; END"
        )
    else:
        op.execute(
            "CREATE FUNCTION recovered_at_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF NEW.outcome = 'succeeded' THEN {_SUCCEEDED}; END IF; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE FUNCTION recovered_at_payment() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF {_HAS_SUCCESS} THEN {_STORED}; END IF; RETURN NULL; END $$"
        )
        for table, name in (
            ("attempts", "recovered_at_attempt"),
            ("payments", "recovered_at_payment"),
        ):
            op.execute(
                f"CREATE TRIGGER {name} AFTER INSERT ON {table} FOR EACH ROW "
                f"EXECUTE FUNCTION {name}()"
            )
    op.create_index("ix_payments_failed_cover", "payments", COLUMNS, unique=False)
    op.drop_index("ix_payments_failed_at", table_name="payments")
    op.create_index(
        "ix_experiment_assignments_account", "experiment_assignments", ["experiment", "account_id"]
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_index("ix_payments_failed_at", "payments", ["failed_at"], unique=False)
    op.drop_index("ix_payments_failed_cover", table_name="payments")
    op.drop_index("ix_experiment_assignments_account", table_name="experiment_assignments")
    for table, name in (("attempts", "recovered_at_attempt"), ("payments", "recovered_at_payment")):
        on = "" if dialect == "sqlite" else f" ON {table}"
        op.execute(f"DROP TRIGGER IF EXISTS {name}{on}")
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("recovered_at")
