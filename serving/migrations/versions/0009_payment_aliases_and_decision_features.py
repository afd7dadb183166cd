"""payment aliases (the Stripe objects that stand for a stored payment), each decision's
features, and when a payment was closed

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 23:30:00

Stripe reports an invoice's attempts through its payment intent and charges too
(``payment_intent.payment_failed``, ``charge.failed``), and since 2025-03-31.basil an intent
no longer names its invoice. ``payment_aliases`` maps such an object, on its account, to the
payment it belongs to, so a charge event updates the invoice's payment whatever order events
arrive in. ``decision_log.features`` keeps the feature row each decision was made on (JSON):
the record an explanation, an audit or a train/serve comparison reads. ``payments.closed_at``
is when Stripe said the payment can no longer be collected (the invoice voided or marked
uncollectible, the intent canceled): nothing is tried for it after that. An index on the
attempts' time finds a moment's attempts: what a scheduler driven in simulated time plans from.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_aliases",
        sa.Column("object_id", sa.String(255), primary_key=True),
        sa.Column("payment_id", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(255), nullable=False),
    )
    op.add_column("decision_log", sa.Column("features", sa.Text))
    # outside batch mode: SQLite's batch mode may copy the table, which would drop its triggers
    op.add_column("payments", sa.Column("closed_at", sa.DateTime(timezone=True)))
    op.create_index("ix_attempts_time", "attempts", ["attempted_at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_time", "attempts")
    op.drop_column("payments", "closed_at")
    op.drop_column("decision_log", "features")
    op.drop_table("payment_aliases")
