"""the customer's local hour of each payment's first failure, for recovery by local hour

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from reclaim.timeutil import local_hour

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHUNK = 10_000


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("failed_local_hour", sa.SmallInteger(), nullable=True))
    # stored payments get theirs now; new ones get it on insert (serving.store.tables)
    payments = sa.table(
        "payments",
        sa.column("payment_id", sa.String()),
        sa.column("failed_at", sa.DateTime(timezone=True)),
        sa.column("customer_timezone", sa.String()),
        sa.column("failed_local_hour", sa.SmallInteger()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(payments.c.payment_id, payments.c.failed_at, payments.c.customer_timezone).where(
            payments.c.customer_timezone.is_not(None)
        )
    ).all()
    update = (
        sa.update(payments)
        .where(payments.c.payment_id == sa.bindparam("pid"))
        .values(failed_local_hour=sa.bindparam("hour"))
    )
    for lo in range(0, len(rows), CHUNK):
        values = [{"pid": pid, "hour": local_hour(at, tz)} for pid, at, tz in rows[lo : lo + CHUNK]]
        conn.execute(update, values)


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("failed_local_hour")
