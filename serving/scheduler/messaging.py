"""Messaging: the outbox is sent each tick; just before each message the payment is
confirmed with Stripe as still unpaid and open (a customer who paid is never dunned)."""

from __future__ import annotations

import logging

import sqlalchemy as sa
import stripe

from reclaim.serving import outbox, stripe_actions
from reclaim.serving.channels import ChannelError
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.webhooks import block_account

log = logging.getLogger(__name__)


class Messaging:
    """The :class:`~reclaim.serving.scheduler.core.Scheduler`'s messages."""

    def send(self) -> int:
        """Send what the outbox holds; returns how many messages it handled."""
        sent = outbox.dispatch(
            self.engine,
            self.channels,
            self.clock.now,
            recipient=self._recipient,
            still_open=self._still_open,
        )
        for result, n in sent.items():
            self.metrics.messages.labels(result).inc(n)
        self._send_again = bool(sent.get("retry"))
        return sum(sent.values())

    def _still_open(self, key: repo.Ref) -> str | None:
        """Why a payment needs no message any more, asked of Stripe just before one is sent
        (``already_paid``, ``closed``; ``paid`` when the store already knows), or None. A
        customer who paid, or whose invoice was voided, is never dunned: an event saying so
        may be late or lost."""
        payment = repo.load_payments(self.engine, [key]).get(key)
        if payment is None:
            return "unknown_payment"
        if payment["closed_at"] is not None:
            return "closed"
        if payment["recovered"]:  # kept by the store's triggers as attempts arrive
            return "paid"
        try:
            return stripe_actions.still_collectible(self.stripe, payment)
        except stripe_actions.Transient as exc:
            raise ChannelError(str(exc)) from exc
        except stripe_actions.AccountBlocked as exc:
            with self.engine.begin() as conn:
                block_account(conn, exc.account_id, exc.reason, str(exc))
            return f"account_{exc.reason}"

    def _recipient(self, channel: str, account_id: str, customer_id: str) -> str | None:
        """The customer's email, from Stripe, where the channel needs it."""
        if channel != "email":
            return None
        with self.engine.connect() as conn:
            p = t.payments.c
            model = conn.execute(
                sa.select(p.charge_model)
                .where(p.account_id == account_id, p.customer_id == customer_id)
                .limit(1)
            ).scalar()
        options = {"stripe_account": account_id} if model == "direct" else {}
        try:
            customer = self.stripe.v1.customers.retrieve(customer_id, None, options)
        except stripe.StripeError as exc:
            log.warning("customer %s not read: %s", customer_id, exc)
            return None
        return customer.to_dict().get("email")
