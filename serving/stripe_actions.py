"""Retries through the official ``stripe`` SDK, on the right account, exactly once.

A retry pays an invoice (``invoices.pay``) or confirms a standalone payment intent
(``payment_intents.confirm``), off-session, on the connected account for direct charges
(``stripe_account``) and on the platform otherwise. Every call that moves money carries an
idempotency key derived from the account, the payment and the attempt number, so a call
repeated after a timeout, a crash or a second scheduler is answered by Stripe from its record
of the first, never charged again.

Before any charge, the object is read: one already paid (the customer paid, or an event said
so first) is ``already_paid``, one Stripe can no longer collect (an invoice voided or marked
uncollectible, an intent canceled) is ``closed``; neither is charged.

Outcomes: a ``CardError`` is a decline, recorded like any other; rate limits, connection
errors and 5xx are retried with backoff under the same key and, if they persist, surface as
:class:`Transient` for the scheduler to try again later (same key again); an authentication or
permission error means the platform may no longer act for the account (:class:`AccountBlocked`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import stripe

from reclaim import vocab
from reclaim.features.stripe_backfill import Backoff
from reclaim.features.stripe_normalize import UNKNOWN_DECLINE

#: Results of a retry that charged nothing.
NOT_CHARGED = ("already_paid", "closed")
#: Per resource, the status of a paid object and those of one Stripe will no longer collect.
PAID_STATUS = {"invoices": "paid", "payment_intents": "succeeded"}
CLOSED_STATUSES = {"invoices": ("void", "uncollectible"), "payment_intents": ("canceled",)}


@dataclass(frozen=True)
class ChargeResult:
    """What one retry did: ``succeeded``, ``declined`` (with Stripe's codes), ``already_paid``
    (the object was paid by other means before the retry reached it) or ``closed`` (it can no
    longer be collected)."""

    outcome: str
    decline_code: str | None = None
    advice_code: str | None = None
    network_decline_code: str | None = None
    network_advice_code: str | None = None


class Transient(RuntimeError):
    """Stripe did not answer after every backoff try; try again later under the same key."""


class AccountBlocked(RuntimeError):
    """The platform may not act for this account (deauthorized, or its key was rejected)."""

    def __init__(self, account_id: str, reason: str, detail: str):
        self.account_id, self.reason = account_id, reason
        super().__init__(f"account {account_id}: {reason} ({detail})")


def _settled(obj: Mapping[str, Any], resource: str) -> ChargeResult | None:
    """What a retry of ``obj`` would be pointless as (paid or closed), or None."""
    if obj.get("status") == PAID_STATUS[resource]:
        return ChargeResult("already_paid")
    if obj.get("status") in CLOSED_STATUSES[resource]:
        return ChargeResult("closed")
    return None


def idempotency_key(account_id: str, payment_id: str, attempt_number: int) -> str:
    """The one key for the ``attempt_number``-th attempt at a payment."""
    return f"reclaim-retry-{account_id}-{payment_id}-{attempt_number}"


#: The idempotency key of Reclaim's own retries, as :func:`idempotency_key` makes it.
OWN_RETRY = re.compile(r"^reclaim-retry-.+-(\d+)$")


def own_retry(event: Mapping[str, Any]) -> int | None:
    """The attempt number of the Reclaim retry that caused a Stripe event (its request's
    idempotency key), or None if Reclaim's retries did not cause it."""
    request = event.get("request")
    key = request.get("idempotency_key") if isinstance(request, Mapping) else None
    found = OWN_RETRY.match(key) if isinstance(key, str) else None
    return int(found.group(1)) if found else None


def scope(payment: Mapping[str, Any]) -> str | None:
    """The account a payment's objects live on: the connected account for direct charges."""
    if payment["charge_model"] == vocab.ChargeModel.DIRECT.value:
        return str(payment["account_id"])
    return None


def _decline(error: Mapping[str, Any]) -> ChargeResult:
    return ChargeResult(
        "declined",
        # a decline Stripe did not name is recorded as unknown, which no merchant retry follows
        decline_code=error.get("decline_code") or error.get("code") or UNKNOWN_DECLINE,
        advice_code=error.get("advice_code"),
        network_decline_code=error.get("network_decline_code"),
        network_advice_code=error.get("network_advice_code"),
    )


def _payment_method(intent: Any) -> str | None:
    """The card the intent last tried, to confirm it again off-session."""
    error = intent.get("last_payment_error") or {}
    method = error.get("payment_method") or intent.get("payment_method")
    return method.get("id") if isinstance(method, Mapping) else method


@contextmanager
def _stripe_errors(account: str, what: str) -> Iterator[None]:
    """Stripe's errors as the scheduler acts on them: the platform may not act for the
    account (:class:`AccountBlocked`), or try again later (:class:`Transient`)."""
    try:
        yield
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        raise AccountBlocked(account, "authentication_error", str(exc)) from exc
    except stripe.InvalidRequestError as exc:
        if exc.code == "account_invalid":
            raise AccountBlocked(account, "deauthorized", str(exc)) from exc
        raise
    except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError) as exc:
        raise Transient(f"{what}: {type(exc).__name__}: {exc}") from exc


def _read(
    client: stripe.StripeClient, payment: Mapping[str, Any], backoff: Backoff, what: str
) -> dict[str, Any]:
    """The payment's invoice or payment intent as Stripe has it now."""
    on = scope(payment)
    service = client.v1.invoices if _resource(payment) == "invoices" else client.v1.payment_intents
    options: dict[str, Any] = {"stripe_account": on} if on else {}
    pid = str(payment["payment_id"])
    return backoff.call(lambda: service.retrieve(pid, None, options), what).to_dict()


def _resource(payment: Mapping[str, Any]) -> str:
    """The Stripe resource a payment is: ``invoices`` or ``payment_intents``."""
    invoice = payment["object"] == vocab.PaymentObject.INVOICE.value
    return "invoices" if invoice else "payment_intents"


def still_collectible(
    client: stripe.StripeClient, payment: Mapping[str, Any], backoff: Backoff | None = None
) -> str | None:
    """Read ``payment``'s invoice or payment intent from Stripe: None if it is still unpaid
    and collectible, else why not (``already_paid``, ``closed``): what the scheduler asks
    before a message, as :func:`retry_payment` does before a charge. Raises
    :class:`Transient` or :class:`AccountBlocked`."""
    backoff = backoff or Backoff(base_seconds=0.2, max_seconds=5.0, max_tries=6)
    what = f"read {payment['payment_id']}"
    with _stripe_errors(str(payment["account_id"]), what):
        settled = _settled(_read(client, payment, backoff, what), _resource(payment))
    return None if settled is None else settled.outcome


def retry_payment(
    client: stripe.StripeClient,
    payment: Mapping[str, Any],
    attempt_number: int,
    backoff: Backoff | None = None,
) -> ChargeResult:
    """Try to collect ``payment`` once more, as its ``attempt_number``-th attempt.

    ``payment`` is a contract payment row (``payment_id``, ``object``, ``account_id``,
    ``charge_model``). Raises :class:`Transient` or :class:`AccountBlocked`.
    """
    backoff = backoff or Backoff(base_seconds=0.2, max_seconds=5.0, max_tries=6)
    pid, account = str(payment["payment_id"]), str(payment["account_id"])
    on = scope(payment)
    write: dict[str, Any] = {
        **({"stripe_account": on} if on else {}),
        "idempotency_key": idempotency_key(account, pid, attempt_number),
    }
    what = f"retry {pid} (attempt {attempt_number})"
    resource = _resource(payment)
    try:
        with _stripe_errors(account, what):
            obj = _read(client, payment, backoff, what)
            if (settled := _settled(obj, resource)) is not None:
                return settled
            if resource == "invoices":
                obj = backoff.call(
                    lambda: client.v1.invoices.pay(pid, {"off_session": True}, write), what
                ).to_dict()
            else:
                params: dict[str, Any] = {"off_session": True}
                method = _payment_method(obj)
                if method:
                    params["payment_method"] = method
                obj = backoff.call(
                    lambda: client.v1.payment_intents.confirm(pid, params, write), what
                ).to_dict()
    except stripe.CardError as exc:
        return _decline((exc.json_body or {}).get("error", {}))
    except stripe.InvalidRequestError as exc:
        if exc.code in ("invoice_already_paid", "payment_intent_unexpected_state"):
            return ChargeResult("already_paid")
        raise
    paid = obj.get("status") == PAID_STATUS[resource]
    return ChargeResult("succeeded") if paid else _decline({"code": "not_paid"})
