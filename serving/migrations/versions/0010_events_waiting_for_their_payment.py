"""events waiting for their payment: the object an event is about

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 02:10:00

Stripe does not promise to deliver events in order: a customer's ``invoice.paid`` can arrive
before the ``invoice.payment_failed`` that made the payment Reclaim's. Such an event is kept
``waiting`` with the id of the object it is about (``object_id``); when that payment's first
failure is stored, the events waiting for it are applied. An index finds them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stripe_events", sa.Column("object_id", sa.String(255)))
    op.create_index("ix_stripe_events_object_id", "stripe_events", ["object_id"])


def downgrade() -> None:
    op.drop_index("ix_stripe_events_object_id", "stripe_events")
    with op.batch_alter_table("stripe_events") as batch:
        batch.drop_column("object_id")
