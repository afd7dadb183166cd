"""The store's tables.

Payments, attempts and messages are generated from the data contract's own column definitions
(``reclaim.contract``), so the store holds exactly the contract's shape. The other tables are
the service's own: received Stripe events, decisions with their model version and propensity,
account configuration, and API keys.

Tenancy is in the keys (migration 0011): Stripe ids are unique within a connected account, so
every row about a payment is keyed by its account and its id. Two accounts may hold the same
id; no write of one can reach the other's rows, since no statement names a payment without
its account.
"""

from __future__ import annotations

import sqlalchemy as sa

from reclaim import contract, timeutil

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

_TYPES = {
    "str": sa.String(255),
    "category": sa.String(40),
    "int": sa.BigInteger(),
    "float": sa.Float(),
    "bool": sa.Boolean(),
    "timestamp": sa.DateTime(timezone=True),
}


def _contract_table(table: contract.Table) -> sa.Table:
    """The contract's table keyed within its connected account: ``account_id`` leads the
    key, added (not null) where the contract's rows do not carry it (attempts, messages:
    their payment's account)."""
    names = table.column_names
    columns = [] if "account_id" in names else [sa.Column("account_id", sa.String(255))]
    columns += [sa.Column(c.name, _TYPES[c.kind], nullable=c.nullable) for c in table.columns]
    return sa.Table(
        table.name,
        metadata,
        *columns,
        sa.PrimaryKeyConstraint("account_id", *table.key),
    )


def _failed_local_hour(context: sa.engine.interfaces.ExecutionContext) -> int | None:
    row = context.get_current_parameters()
    return timeutil.local_hour(row.get("failed_at"), row.get("customer_timezone"))


payments = _contract_table(contract.PAYMENTS)
# the store's own: the customer's local hour of the first failure, set on every insert (the
# dashboard groups by it; SQLite has no timezone database to compute it in a query)
payments.append_column(
    sa.Column("failed_local_hour", sa.SmallInteger(), default=_failed_local_hour)
)
# kept by the database's triggers (migration 0007) as attempts arrive: whether the payment
# was recovered (a succeeded attempt) and how many merchant retries it got
payments.append_column(
    sa.Column("recovered", sa.SmallInteger(), nullable=False, server_default="0")
)
payments.append_column(
    sa.Column("merchant_retries", sa.Integer(), nullable=False, server_default="0")
)
# the time of its first succeeded attempt, kept by triggers too (migration 0008)
payments.append_column(sa.Column("recovered_at", sa.DateTime(timezone=True)))
# when Stripe said it can no longer be collected: voided, uncollectible, canceled (0009)
payments.append_column(sa.Column("closed_at", sa.DateTime(timezone=True)))
attempts = _contract_table(contract.ATTEMPTS)
messages = _contract_table(contract.MESSAGES)
sa.Index(
    "ix_attempts_payment_time",
    attempts.c.account_id,
    attempts.c.payment_id,
    attempts.c.attempted_at,
)
# the attempts of a moment: what a scheduler driven in simulated time plans from (0009)
sa.Index("ix_attempts_time", attempts.c.attempted_at)
sa.Index("ix_messages_payment", messages.c.account_id, messages.c.payment_id)
# a payment found by its id alone, in whichever accounts a key sees
sa.Index("ix_payments_payment_id", payments.c.payment_id)
sa.Index("ix_payments_account", payments.c.account_id)
# a period's failed payments by time, with what the accounts table and an experiment's
# pre-period read: from the index alone (migration 0008)
sa.Index(
    "ix_payments_failed_cover",
    payments.c.failed_at,
    payments.c.account_id,
    payments.c.currency,
    payments.c.amount,
    payments.c.application_fee_amount,
    payments.c.recovered,
    payments.c.recovered_at,
)


def _counts(money: bool) -> list[sa.Column]:
    names = ("failed", "recovered", "amount", "fee") if money else ("failed", "recovered")
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in names]


# Rollups of the payments, kept by the database's triggers as payments and attempts are
# inserted (migration 0007; serving.store.stats reads them): by the UTC day (or month) of the
# first failure, money in minor units per currency.
stats_days = sa.Table(
    "stats_days",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),  # YYYY-MM-DD
    sa.Column("currency", sa.String(40), primary_key=True),
    *_counts(money=True),
)
stats_account_months = sa.Table(
    "stats_account_months",
    metadata,
    sa.Column("month", sa.String(7), primary_key=True),  # YYYY-MM
    sa.Column("account_id", sa.String(255), primary_key=True),
    sa.Column("currency", sa.String(40), primary_key=True),
    *_counts(money=True),
)
stats_groups = sa.Table(
    "stats_groups",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("dimension", sa.String(20), primary_key=True),  # a breakdown: decline_code, …
    sa.Column("key", sa.String(255), primary_key=True),  # its value as text, '' if unknown
    *_counts(money=False),
)

stripe_events = sa.Table(
    "stripe_events",
    metadata,
    sa.Column("event_id", sa.String(255), primary_key=True),
    sa.Column("endpoint", sa.String(20), nullable=False),  # platform | connect
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("account_id", sa.String(255)),
    sa.Column("livemode", sa.Boolean, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the raw body, stored before answering 2xx
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deliveries", sa.Integer, nullable=False, server_default="1"),
    # received | processed | ignored | failed | waiting (for its payment's first failure)
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Column("tries", sa.Integer, nullable=False, server_default="0"),  # processing attempts
    sa.Column("next_try_at", sa.DateTime(timezone=True)),  # when a failed one is tried again
    # what a waiting event is about: the payment (or an object standing for it) (0010)
    sa.Column("object_id", sa.String(255)),
)
sa.Index("ix_stripe_events_object_id", stripe_events.c.object_id)
sa.Index("ix_stripe_events_status", stripe_events.c.status)

decision_log = sa.Table(
    "decision_log",
    metadata,
    sa.Column(
        "decision_id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("account_id", sa.String(255), nullable=False),
    sa.Column("payment_id", sa.String(255), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(100), nullable=False),
    sa.Column("policy", sa.String(100), nullable=False),
    sa.Column("retry_at", sa.DateTime(timezone=True)),
    sa.Column("channel", sa.String(20)),
    sa.Column("sender", sa.String(20)),
    sa.Column("propensity", sa.Float, nullable=False),
    sa.Column("reason", sa.String(40), nullable=False, server_default=""),
    sa.Column("explanation", sa.Text),
    sa.Column("features", sa.Text),  # JSON: the feature row the decision was made on
)
sa.Index(
    "ix_decision_log_payment",
    decision_log.c.account_id,
    decision_log.c.payment_id,
    decision_log.c.decided_at,
)

account_config = sa.Table(
    "account_config",
    metadata,
    sa.Column("account_id", sa.String(255), primary_key=True),  # "*" holds platform defaults
    sa.Column("config", sa.Text, nullable=False),  # JSON of the overridden fields only
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(40), primary_key=True),
    sa.Column("key_hash", sa.String(128), nullable=False, unique=True),
    sa.Column("role", sa.String(20), nullable=False),  # scheduler | analyst | admin
    sa.Column("accounts", sa.Text),  # JSON list of account ids, or null for all
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

# --- the scheduler's tables (issue 6) -------------------------------------------------------

scheduled_actions = sa.Table(
    "scheduled_actions",
    metadata,
    # "<account>:<payment>:<after_attempt>:<n>": one planned action per decision point, so a
    # decision point planned twice (two planners, a crash between deciding and scheduling) is
    # one row.
    sa.Column("action_id", sa.String(300), primary_key=True),
    sa.Column("payment_id", sa.String(255), nullable=False),
    sa.Column("account_id", sa.String(255), nullable=False),
    sa.Column("after_attempt", sa.Integer, nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(100)),
    sa.Column("propensity", sa.Float),
    sa.Column("retry_at", sa.DateTime(timezone=True)),
    # scheduled | in_flight | done | cancelled | replan
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt_number", sa.Integer),
    sa.Column("idempotency_key", sa.String(300)),
    sa.Column("outcome", sa.String(60)),
    sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index(
    "ix_scheduled_actions_status_due", scheduled_actions.c.status, scheduled_actions.c.retry_at
)
sa.Index(
    "ix_scheduled_actions_payment",
    scheduled_actions.c.account_id,
    scheduled_actions.c.payment_id,
)

outbox = sa.Table(
    "outbox",
    metadata,
    # one message per decision point: the same key as the action that asked for it
    sa.Column("message_key", sa.String(300), primary_key=True),
    sa.Column("payment_id", sa.String(255), nullable=False),
    sa.Column("account_id", sa.String(255), nullable=False),
    sa.Column("channel", sa.String(20), nullable=False),
    sa.Column("sender", sa.String(20), nullable=False),
    sa.Column("propensity", sa.Float),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending | sent | failed
    sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
)
sa.Index("ix_outbox_status", outbox.c.status)

card_updates = sa.Table(
    "card_updates",
    metadata,
    sa.Column("event_id", sa.String(255), primary_key=True),
    sa.Column("customer_id", sa.String(255), nullable=False),
    sa.Column("account_id", sa.String(255)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_card_updates_customer", card_updates.c.customer_id)

# A Stripe object (an invoice's payment intent) that stands for a stored payment (the invoice).
payment_aliases = sa.Table(
    "payment_aliases",
    metadata,
    sa.Column("account_id", sa.String(255), primary_key=True),
    sa.Column("object_id", sa.String(255), primary_key=True),
    sa.Column("payment_id", sa.String(255), nullable=False),
)
sa.Index("ix_payment_aliases_object", payment_aliases.c.object_id)

account_status = sa.Table(
    "account_status",
    metadata,
    sa.Column("account_id", sa.String(255), primary_key=True),
    sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.String(100), nullable=False),  # deauthorized | authentication_error
)

# A connected account's name, as Stripe last said it (serving.store.profiles).
account_profiles = sa.Table(
    "account_profiles",
    metadata,
    sa.Column("account_id", sa.String(255), primary_key=True),
    sa.Column("display_name", sa.String(255)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

scheduler_leader = sa.Table(
    "scheduler_leader",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("holder", sa.String(100), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

# --- experiments (issue 7) -------------------------------------------------------------------

experiment_assignments = sa.Table(
    "experiment_assignments",
    metadata,
    # A payment's arm, written the first time the API decides for it and never changed.
    sa.Column("experiment", sa.String(100), primary_key=True),
    sa.Column("account_id", sa.String(255), primary_key=True),
    sa.Column("payment_id", sa.String(255), primary_key=True),
    sa.Column("unit_id", sa.String(255), nullable=False),
    sa.Column("segment", sa.String(40), nullable=False),
    sa.Column("arm", sa.String(20), nullable=False),
    sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
)
# a scoped key's experiment page reads its accounts' assignments alone (migration 0008)
sa.Index(
    "ix_experiment_assignments_account",
    experiment_assignments.c.experiment,
    experiment_assignments.c.account_id,
)
