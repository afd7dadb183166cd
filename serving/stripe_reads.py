"""What a webhook event lacks, read from Stripe before Reclaim acts on it.

Stripe never expands the objects in an event. An ``invoice.payment_failed`` names its payment
intent by id only, so the decline (code, advice, the network's codes) and the card are not in
it; and since 2025-03-31.basil a payment intent or charge no longer names the invoice it pays.
Production integrations read the missing parts through the API, on the connected account for
direct charges; so does Reclaim, here, before the event is applied (never inside the store's
transaction). A read that fails leaves the event unprocessed, to be retried: a decision is
never made on a guess.

:func:`complete` returns the event to apply and the stored payment it belongs to:

- an invoice failure whose intent is not expanded with its error gets the intent (with its
  latest charge) read and put in place;
- a payment intent's or charge's event is attributed to the invoice that intent pays (the
  store's alias, else ``GET /v1/invoice_payments?payment[payment_intent]=…``); when that
  invoice is not stored yet, the event becomes the invoice's own failure, read from Stripe;
- a payment's first failure gets its customer read (address, email, and the metadata where
  the platform records SMS consent and app use).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import stripe

from reclaim.features import stripe_normalize as sn
from reclaim.features.stripe_backfill import Backoff
from reclaim.serving.stripe_actions import own_retry


class StripeUnavailable(RuntimeError):
    """An event needs a read from Stripe that could not be made (no key, or Stripe failed);
    the event stays unprocessed and is retried."""


@dataclass
class StripeReader:
    """Reads through the official SDK, with backoff; ``account`` None is the platform."""

    client: stripe.StripeClient
    backoff: Backoff | None = None

    def _call(self, fn: Callable[[], Any], what: str) -> dict[str, Any]:
        backoff = self.backoff or Backoff(base_seconds=0.2, max_seconds=5.0, max_tries=4)
        try:
            return backoff.call(fn, what).to_dict()
        except stripe.StripeError as exc:
            raise StripeUnavailable(f"{what}: {type(exc).__name__}: {exc.user_message}") from exc

    @staticmethod
    def _options(account: str | None) -> dict[str, Any]:
        return {"stripe_account": account} if account else {}

    def intent(self, intent_id: str, account: str | None) -> dict[str, Any]:
        """A payment intent with its latest charge expanded."""
        return self._call(
            lambda: self.client.v1.payment_intents.retrieve(
                intent_id, {"expand": ["latest_charge"]}, self._options(account)
            ),
            f"read payment intent {intent_id}",
        )

    def failed_charge(
        self, intent_id: str, account: str | None, before: int
    ) -> dict[str, Any] | None:
        """The intent's newest failed charge created at or before ``before`` (Unix time), or
        None: the decline of a failure whose intent has moved on (Stripe clears
        ``last_payment_error`` when an intent changes again)."""
        page = self._call(
            lambda: self.client.v1.charges.list(
                {"payment_intent": intent_id, "created": {"lte": before}, "limit": 100},
                self._options(account),
            ),
            f"list the charges of {intent_id}",
        )
        failed = [c for c in page.get("data", []) if c.get("status") == "failed"]
        return max(failed, key=lambda c: (c.get("created", 0), c["id"]), default=None)

    def invoice(self, invoice_id: str, account: str | None) -> dict[str, Any]:
        """An invoice (its payment intents by id)."""
        return self._call(
            lambda: self.client.v1.invoices.retrieve(invoice_id, None, self._options(account)),
            f"read invoice {invoice_id}",
        )

    def customer(self, customer_id: str, account: str | None) -> dict[str, Any] | None:
        """A customer (its address and email); None when Stripe has no such customer (it was
        deleted): a definite answer, so the payment is placed by its card instead."""
        try:
            return self._call(
                lambda: self.client.v1.customers.retrieve(
                    customer_id, None, self._options(account)
                ),
                f"read customer {customer_id}",
            )
        except StripeUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, stripe.InvalidRequestError) and cause.code == "resource_missing":
                return None
            raise

    def invoice_of_intent(self, intent_id: str, account: str | None) -> str | None:
        """The invoice a payment intent pays, or None for a standalone intent."""
        page = self._call(
            lambda: self.client.v1.invoice_payments.list(
                {"payment": {"type": "payment_intent", "payment_intent": intent_id}, "limit": 1},
                self._options(account),
            ),
            f"find the invoice of payment intent {intent_id}",
        )
        for item in page.get("data") or []:
            invoice = sn.object_id(item.get("invoice"))
            if invoice:
                return invoice
        return None


@dataclass(frozen=True)
class Completed:
    """The event to apply; the connected account whose payment it is about (None: the event
    does not say, and no read could tell); and the stored payment of that account its attempt
    belongs to (None: the id the event's own object gives)."""

    event: dict[str, Any]
    payment_id: str | None = None
    account: str | None = None


#: ``owner(account, object_id)``: the stored payment of ``account`` that an object id stands
#: for (the payment itself, or an invoice whose intent it is), or None. With ``account`` None,
#: only what Stripe's own events stored is trusted (an intent's invoice), never an id alone.
Owner = Callable[[str | None, str], "str | None"]


def complete(event: Mapping[str, Any], reader: StripeReader | None, owner: Owner) -> Completed:
    """The event with what Reclaim needs read from Stripe (see the module). Raises
    :class:`StripeUnavailable` when a read is needed and cannot be made."""
    etype = event.get("type")
    obj = sn.get_path(event, "data", "object")
    if not isinstance(obj, Mapping) or not isinstance(etype, str):
        return Completed(dict(event))
    # ``account``: the account the object lives on (reads go there); ``payer``: the
    # connected account whose payment it is (also a destination or separate charge's)
    account = event.get("account") if isinstance(event.get("account"), str) else None
    payer = sn.object_account(obj, account)
    failure = etype in sn.FAILURE_EVENTS
    if obj.get("object") == "invoice":
        oid = str(obj.get("id"))
        if failure and (payer is None or owner(payer, oid) is None):  # a first failure
            out = (
                _with_intent(event, _need(reader, event), account) if _needs_intent(obj) else event
            )
            out = _with_customer(out, reader, account)
            return Completed(out, account=sn.object_account(out["data"]["object"], account))
        # a failure of Reclaim's own retry: the scheduler records Stripe's answer to the call
        # itself (the card error, with the network's codes), which outranks this event's
        if failure and _needs_intent(obj) and own_retry(event) is None:
            return Completed(_with_intent(event, _need(reader, event), account), account=payer)
        if payer is None and etype in sn.RECOVERY_EVENTS | sn.CLOSED_EVENTS:
            # whose invoice it is is on its intent: read it, never attach by the id alone
            out = _with_intent(event, _need(reader, event), account)
            return Completed(out, account=sn.object_account(out["data"]["object"], account))
        return Completed(dict(event), account=payer)
    if obj.get("object") not in ("payment_intent", "charge"):
        return Completed(dict(event), account=payer)
    if etype not in sn.FAILURE_EVENTS | sn.RECOVERY_EVENTS:
        return Completed(dict(event), owner(payer, str(obj.get("id"))), payer)
    intent_id = obj.get("id") if obj.get("object") == "payment_intent" else None
    intent_id = intent_id or sn.object_id(obj.get("payment_intent"))
    if not isinstance(intent_id, str):
        return Completed(dict(event), account=payer)
    known = owner(payer, intent_id)
    if known is not None:
        return Completed(dict(event), known, payer)
    invoice_id = _need(reader, event).invoice_of_intent(intent_id, account)
    if invoice_id is None:  # a standalone intent, not stored yet
        if failure and obj.get("object") == "payment_intent":
            return Completed(_with_customer(event, _need(reader, event), account), account=payer)
        return Completed(dict(event), account=payer)
    if (payer is not None and owner(payer, invoice_id) is not None) or not failure:
        return Completed(dict(event), invoice_id, payer)
    # the invoice's own failure, not stored yet: read it, as invoice.payment_failed would say
    invoice = _need(reader, event).invoice(invoice_id, account)
    as_invoice = {**event, "type": "invoice.payment_failed", "data": {"object": invoice}}
    out = _with_customer(_with_intent(as_invoice, _need(reader, event), account), reader, account)
    return Completed(out, invoice_id, sn.object_account(out["data"]["object"], account))


def _need(reader: StripeReader | None, event: Mapping[str, Any]) -> StripeReader:
    if reader is None:
        raise StripeUnavailable(
            f"event {event.get('id')} ({event.get('type')}) needs a read from Stripe and "
            "RECLAIM_STRIPE_API_KEY is not set"
        )
    return reader


def _with_customer(
    event: Mapping[str, Any], reader: StripeReader | None, account: str | None
) -> dict[str, Any]:
    """A copy of an invoice's or payment intent's event with its customer read and put in
    place: where the customer lives (their local time), whether they have an email, and how
    the platform may reach them (metadata) are on the customer."""
    reader = _need(reader, event)
    out = copy.deepcopy(dict(event))
    obj = out["data"]["object"]
    customer = sn.object_id(obj.get("customer"))
    if customer and not isinstance(obj.get("customer"), Mapping):
        found = reader.customer(customer, account)
        if found is not None:
            obj["customer"] = found
    return out


def _needs_intent(invoice: Mapping[str, Any]) -> bool:
    """True when the invoice's latest payment intent is not expanded with its error."""
    intents = sn.invoice_payment_intents(invoice)
    if not intents:
        return False
    last = intents[-1]
    return not (isinstance(last, Mapping) and last.get("last_payment_error"))


def _with_intent(
    event: Mapping[str, Any], reader: StripeReader, account: str | None
) -> dict[str, Any]:
    """A copy of an invoice event whose latest payment intent is read and put in place. An
    intent that has moved on since a failure (paid, canceled: its error cleared) is put as
    it was then: its latest charge the failed charge of that moment."""
    out = copy.deepcopy(dict(event))
    invoice = out["data"]["object"]
    payments = sn.get_path(invoice, "payments", "data") or []
    holder: dict[str, Any] | None = None
    for item in reversed(payments):
        payment = item.get("payment") if isinstance(item, dict) else None
        if isinstance(payment, dict) and payment.get("payment_intent"):
            holder = payment
            break
    if holder is None and invoice.get("payment_intent"):
        holder = invoice  # before basil the invoice names one intent itself
    intent_id = sn.object_id(holder["payment_intent"]) if holder else None
    if holder is None or not intent_id:
        return out
    intent = reader.intent(intent_id, account)
    if event.get("type") in sn.FAILURE_EVENTS and not intent.get("last_payment_error"):
        created = event.get("created")
        before = int(created) if isinstance(created, int | float) else int(time.time())
        failed = reader.failed_charge(intent_id, account, before)
        if failed is not None:
            intent = {**intent, "latest_charge": failed}
    holder["payment_intent"] = intent
    return out
