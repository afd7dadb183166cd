"""customer reachability: whether each payment's customer can get email, SMS and in-app

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ("reachable_email", "reachable_sms", "reachable_in_app")


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        for name in COLUMNS:  # stored payments predate the columns: taken as reachable
            batch.add_column(
                sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.true())
            )


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
