"""experiment assignments

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment_assignments",
        sa.Column("experiment", sa.String(length=100), nullable=False),
        sa.Column("payment_id", sa.String(length=255), nullable=False),
        sa.Column("unit_id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("segment", sa.String(length=40), nullable=False),
        sa.Column("arm", sa.String(length=20), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("experiment", "payment_id", name=op.f("pk_experiment_assignments")),
    )


def downgrade() -> None:
    op.drop_table("experiment_assignments")
