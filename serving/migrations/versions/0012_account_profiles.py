"""connected accounts' display names

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 10:00:00

``account_profiles`` keeps each connected account's display name as Stripe last said it
(Connect's ``account.updated`` events, ``reclaim accounts names``), so the dashboard can show a
name beside the id.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_profiles",
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("display_name", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_profiles")),
    )


def downgrade() -> None:
    op.drop_table("account_profiles")
