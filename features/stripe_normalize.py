"""Stripe objects and webhook events to data-contract rows.

Handles Invoices, PaymentIntents and Charges from the platform's own events and from Connect
events (the event's ``account``), on API versions from 2025-03-31.basil on, where an Invoice no
longer carries ``payment_intent`` or ``charge`` and its payments are listed in
``invoice.payments`` (docs/sources.md).

Everything here takes plain dicts (``StripeObject.to_dict()`` or parsed webhook JSON) and never
calls Stripe. A malformed or unsupported object never stops a batch: it raises
:class:`Unsupported` with a short reason, which batch callers count and log.

Charge model, from where the object lives and what it carries:

- ``direct``: the object lives on a connected account (a Connect event's ``account``, or listed
  with ``stripe_account``);
- ``destination``: a platform object with ``transfer_data.destination``;
- ``separate_charges``: a platform object whose metadata names the account (keys in
  :data:`ACCOUNT_METADATA_KEYS`), usually with a ``transfer_group``;
- anything else is the platform's own payment and is skipped (``no_connected_account``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reclaim import vocab
from reclaim.features.geo import first_location

log = logging.getLogger(__name__)

#: Metadata keys that may name the connected account of a separate charge.
ACCOUNT_METADATA_KEYS = ("connected_account", "account_id", "seller_account", "destination_account")
#: The decline code of a failure whose decline Stripe did not give: unknown codes are hard
#: (``reclaim.vocab.decline_category``), so no merchant retry follows it.
UNKNOWN_DECLINE = "unknown"
#: Metadata Reclaim writes on its own retries, read back so logs keep their propensities.
POLICY_METADATA_KEY = "reclaim_policy"
PROPENSITY_METADATA_KEY = "reclaim_propensity"

FAILURE_EVENTS = frozenset(
    {
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "payment_intent.payment_failed",
        "charge.failed",
    }
)
RECOVERY_EVENTS = frozenset({"invoice.paid", "payment_intent.succeeded", "charge.succeeded"})
CARD_UPDATE_EVENTS = frozenset({"payment_method.automatically_updated"})
#: The payment can no longer be collected: nothing more is tried for it.
CLOSED_EVENTS = frozenset(
    {"invoice.voided", "invoice.marked_uncollectible", "payment_intent.canceled"}
)
DEAUTHORIZED_EVENTS = frozenset({"account.application.deauthorized"})
#: A connected account changed: its display name may have.
ACCOUNT_EVENTS = frozenset({"account.updated"})


class Unsupported(ValueError):
    """An object Reclaim cannot turn into contract rows; ``reason`` is short and countable."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class ConnectInfo:
    """Who a payment belongs to and how it was charged."""

    account_id: str
    charge_model: vocab.ChargeModel
    on_behalf_of: bool


@dataclass(frozen=True)
class Decline:
    """The decline fields of one failed attempt."""

    decline_code: str
    advice_code: str | None
    network_decline_code: str | None
    network_advice_code: str | None


@dataclass
class EventRows:
    """What one event contributes.

    ``payment`` is a contract payment row (``failed_at`` and the decline are this failure's;
    a store keeps the earliest); ``attempt`` a contract attempt row without ``attempt_number``
    (numbered by whoever assembles the history). ``card_update``, ``deauthorized_account``,
    ``closed`` (the id of the object that can no longer be collected, and when) and
    ``account_profile`` (:func:`account_profile`) describe the other event kinds Reclaim acts
    on.
    """

    kind: str
    payment: dict[str, Any] | None = None
    attempt: dict[str, Any] | None = None
    card_update: dict[str, Any] | None = None
    deauthorized_account: str | None = None
    closed: tuple[str, datetime] | None = None
    account_profile: dict[str, Any] | None = None


@dataclass
class Batch:
    """Rows from many objects, with the count of what was skipped and why."""

    rows: list[EventRows] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


# --- small readers ------------------------------------------------------------------------


def display_name(account: Mapping[str, Any]) -> str | None:
    """What people call a Stripe Account object: the name its owner gave its Stripe
    dashboard (``settings.dashboard.display_name``), else its business's public name
    (``business_profile.name``), else None. Control characters are dropped and the name cut
    to 255 characters."""
    for path in (("settings", "dashboard", "display_name"), ("business_profile", "name")):
        name = get_path(account, *path)
        if isinstance(name, str):
            name = "".join(ch for ch in name if ch.isprintable()).strip()[:255]
            if name:
                return name
    return None


def account_profile(account: Mapping[str, Any], updated_at: datetime) -> dict[str, Any]:
    """The row Reclaim keeps of an Account object: ``account_id``, ``display_name`` (None
    where it has none) and ``updated_at`` (when Stripe said so)."""
    return {"account_id": _require(account, "id", str, "account"),
            "display_name": display_name(account), "updated_at": updated_at}  # fmt: skip


def get_path(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """``obj[path[0]][path[1]]…`` or None where any step is missing or not a mapping."""
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def object_id(value: Any) -> str | None:
    """An id from either an id string or an expanded object."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return value["id"]
    return None


def to_time(seconds: Any, what: str) -> datetime:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise Unsupported("malformed_object", f"{what} has no numeric 'created'")
    return datetime.fromtimestamp(seconds, tz=UTC)


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise Unsupported("malformed_object", f"{what} field '{key}' is missing or not {kind}")
    return value


# --- the parts of a payment ---------------------------------------------------------------


def connect_info(obj: Mapping[str, Any], account: str | None) -> ConnectInfo:
    """Detect the charge model of a PaymentIntent, Charge or Invoice (or its payment intent).

    ``account`` is the connected account the object lives on (an event's ``account``), or
    None for a platform object.
    """
    obo = object_id(obj.get("on_behalf_of"))
    if account:
        return ConnectInfo(account, vocab.ChargeModel.DIRECT, obo is not None)
    destination = object_id(get_path(obj, "transfer_data", "destination"))
    if destination:
        return ConnectInfo(destination, vocab.ChargeModel.DESTINATION, obo is not None)
    metadata = obj.get("metadata") or {}
    for key in ACCOUNT_METADATA_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value.startswith("acct_"):
            return ConnectInfo(value, vocab.ChargeModel.SEPARATE_CHARGES, obo is not None)
    if obo:  # on_behalf_of alone names the settlement merchant: a separate charge for it
        return ConnectInfo(obo, vocab.ChargeModel.SEPARATE_CHARGES, True)
    raise Unsupported("no_connected_account", f"{obj.get('id')} is the platform's own payment")


def connect_source(
    obj: Mapping[str, Any], payment_intent: Mapping[str, Any] | None = None
) -> Mapping[str, Any]:
    """The object whose Connect fields say whose payment ``obj`` is: an invoice's payment
    intent where it is known (since basil the intent carries them), with the invoice's
    ``on_behalf_of``; else ``obj`` itself."""
    if obj.get("object") == "invoice":
        if payment_intent is None:
            intents = invoice_payment_intents(obj)
            payment_intent = _expanded(intents[-1]) if intents else None
        if payment_intent is not None:
            obo = obj.get("on_behalf_of") or payment_intent.get("on_behalf_of")
            return {**payment_intent, "on_behalf_of": obo}
    return obj


def object_account(obj: Mapping[str, Any], account: str | None) -> str | None:
    """The connected account ``obj`` (an event's invoice, payment intent or charge) is a
    payment of, as :func:`connect_info` finds it; None when the object does not say (the
    platform's own payment, or an invoice whose Connect fields are on its unexpanded
    intent)."""
    try:
        return connect_info(connect_source(obj), account).account_id
    except Unsupported:
        return None


def decline_from_error(error: Mapping[str, Any] | None) -> Decline | None:
    """The decline in a ``last_payment_error`` (PaymentIntent) or None if there is none."""
    if not error:
        return None
    code = error.get("decline_code") or error.get("code")
    if not code:
        return None
    return Decline(
        code,
        error.get("advice_code"),
        error.get("network_decline_code"),
        error.get("network_advice_code"),
    )


def decline_from_charge(charge: Mapping[str, Any]) -> Decline | None:
    """The decline of a failed Charge, from ``outcome`` and ``failure_code``."""
    if charge.get("status") != "failed":
        return None
    outcome = charge.get("outcome") or {}
    reason = outcome.get("reason")
    code = reason if reason and outcome.get("type") in ("issuer_declined", "blocked") else None
    code = code or charge.get("failure_code") or reason
    if not code:
        raise Unsupported("malformed_object", f"failed charge {charge.get('id')} has no code")
    return Decline(
        code,
        outcome.get("advice_code"),
        outcome.get("network_decline_code"),
        outcome.get("network_advice_code"),
    )


def card_of(*sources: Mapping[str, Any] | None) -> dict[str, Any]:
    """Brand, funding and country of the first card found in the given objects."""
    for src in sources:
        card = (
            get_path(src, "payment_method_details", "card")
            or get_path(src, "card")
            or get_path(src, "payment_method", "card")
        )
        if isinstance(card, Mapping) and card.get("brand"):
            brand = str(card["brand"]).lower().replace(" ", "_")
            brand = {"american_express": "amex"}.get(brand, brand)
            return {
                "card_brand": brand if brand in {b.value for b in vocab.CardBrand} else "other",
                "card_funding": card.get("funding")
                if card.get("funding") in {f.value for f in vocab.Funding}
                else "unknown",
                "card_country": card.get("country"),
            }
    return {"card_brand": "other", "card_funding": "unknown", "card_country": None}


def location_of(
    customer: Mapping[str, Any] | None,
    invoice: Mapping[str, Any] | None,
    billing_sources: Iterable[Mapping[str, Any] | None],
    card_country: str | None,
) -> dict[str, Any]:
    """Customer country and timezone, most trusted source first (docs/sources.md)."""
    addresses = [get_path(customer, "address"), get_path(invoice, "customer_address")]
    addresses += [get_path(b, "billing_details", "address") for b in billing_sources]
    country, zone = first_location(addresses, card_country)
    return {"customer_country": country, "customer_timezone": zone}


#: Customer metadata where a platform records how it may reach the customer ("true"/"false"):
#: a phone number is not consent to SMS, and whether they use the app is the platform's to know.
REACHABILITY_METADATA = {
    "reachable_sms": "reclaim_reachable_sms",
    "reachable_in_app": "reclaim_reachable_in_app",
}


def reachability_of(
    customer: Mapping[str, Any] | None, invoice: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``reachable_email``: false only where Stripe says there is no address (the invoice's
    ``customer_email`` and the expanded customer's ``email`` both given and empty).
    ``reachable_sms`` and ``reachable_in_app``: what the customer's metadata says
    (:data:`REACHABILITY_METADATA`). Anything not said keeps the contract's default."""
    out: dict[str, Any] = {}
    known = [
        obj[key]
        for obj, key in ((invoice, "customer_email"), (customer, "email"))
        if isinstance(obj, Mapping) and key in obj
    ]
    if known and not any(known):
        out["reachable_email"] = False
    metadata = (customer or {}).get("metadata") if isinstance(customer, Mapping) else None
    for column, key in REACHABILITY_METADATA.items():
        said = str((metadata or {}).get(key, "")).strip().lower()
        if said in ("true", "false"):
            out[column] = said == "true"
    return out


def invoice_payment_intents(invoice: Mapping[str, Any]) -> list[Any]:
    """The payment intents of an invoice (ids or expanded objects), basil and older."""
    found = [
        p.get("payment", {}).get("payment_intent")
        for p in get_path(invoice, "payments", "data") or []
        if isinstance(p, Mapping)
    ]
    found = [pi for pi in found if pi]
    legacy = invoice.get("payment_intent")  # before 2025-03-31.basil
    return found or ([legacy] if legacy else [])


def _policy_fields(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    metadata = (obj or {}).get("metadata") or {}
    policy = metadata.get(POLICY_METADATA_KEY)
    try:
        propensity = float(metadata[PROPENSITY_METADATA_KEY]) if policy else None
    except (KeyError, ValueError):
        propensity = None
    return {"policy": policy, "propensity": propensity}


def payment_row(
    obj: Mapping[str, Any],
    account: str | None,
    failed_at: datetime,
    decline: Decline,
    payment_intent: Mapping[str, Any] | None = None,
    charge: Mapping[str, Any] | None = None,
    customer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A contract payment row for an Invoice or a standalone PaymentIntent ``obj``.

    ``payment_intent`` and ``charge`` are the failing intent and charge when known (for an
    invoice, its payment intent carries the Connect fields since basil).
    """
    what = f"{obj.get('object')} {obj.get('id')}"
    is_invoice = obj.get("object") == "invoice"
    pid = _require(obj, "id", str, what)
    amount = _require(obj, "amount_due" if is_invoice else "amount", int, what)
    currency = _require(obj, "currency", str, what).lower()
    customer_id = object_id(obj.get("customer"))
    if not customer_id:
        raise Unsupported("no_customer", f"{what} has no customer")
    # since basil an invoice's payment intent carries its Connect fields
    connect = connect_info(connect_source(obj, payment_intent) if is_invoice else obj, account)
    error_pm = get_path(
        payment_intent or (obj if not is_invoice else None), "last_payment_error", "payment_method"
    )
    card = card_of(charge, error_pm, get_path(payment_intent, "payment_method"))
    billing_reason = obj.get("billing_reason") if is_invoice else "manual"
    if billing_reason not in {b.value for b in vocab.BillingReason}:
        billing_reason = "manual"
    fee = (
        (payment_intent or {}).get("application_fee_amount")
        if is_invoice
        else obj.get("application_fee_amount")
    )
    if fee is None and is_invoice:  # an invoice carries its own fee (webhooks: no intent)
        fee = obj.get("application_fee_amount")
    if fee is None and charge is not None:
        fee = charge.get("application_fee_amount")
    return {
        "payment_id": pid,
        "object": "invoice" if is_invoice else "payment_intent",
        "account_id": connect.account_id,
        "charge_model": connect.charge_model.value,
        "on_behalf_of": connect.on_behalf_of,
        "amount": amount,
        "currency": currency,
        "application_fee_amount": fee if isinstance(fee, int) else None,
        "customer_id": customer_id,
        **location_of(
            customer if customer is not None else _expanded(obj.get("customer")),
            obj if is_invoice else None,
            [charge, error_pm],
            card["card_country"],
        ),
        **reachability_of(
            customer if customer is not None else _expanded(obj.get("customer")),
            obj if is_invoice else None,
        ),
        **card,
        "billing_reason": billing_reason,
        "failed_at": failed_at,
        "decline_code": decline.decline_code,
        "advice_code": decline.advice_code
        if decline.advice_code in {a.value for a in vocab.AdviceCode}
        else None,
        "network_decline_code": decline.network_decline_code,
        "network_advice_code": decline.network_advice_code,
    }


def _expanded(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def attempt_row(
    payment_id: str,
    at: datetime,
    decline: Decline | None,
    source: Mapping[str, Any] | None,
    initiator: vocab.Initiator = vocab.Initiator.MERCHANT,
) -> dict[str, Any]:
    """A contract attempt row (``attempt_number`` left for the assembler)."""
    return {
        "payment_id": payment_id,
        "attempt_number": None,
        "attempted_at": at,
        "initiator": initiator.value,
        "outcome": (vocab.Outcome.FAILED if decline else vocab.Outcome.SUCCEEDED).value,
        "decline_code": decline.decline_code if decline else None,
        "advice_code": (
            decline.advice_code
            if decline and decline.advice_code in {a.value for a in vocab.AdviceCode}
            else None
        ),
        "network_decline_code": decline.network_decline_code if decline else None,
        "network_advice_code": decline.network_advice_code if decline else None,
        **_policy_fields(source),
    }


# --- events ---------------------------------------------------------------------------------


def normalize_event(event: Mapping[str, Any]) -> EventRows:
    """Turn one webhook event into contract rows.

    Raises :class:`Unsupported` for malformed or unsupported events; returns ``kind="ignored"``
    for event types Reclaim does not act on.
    """
    if not isinstance(event, Mapping) or event.get("object") != "event":
        raise Unsupported("not_an_event")
    etype = event.get("type")
    obj = get_path(event, "data", "object")
    if not isinstance(etype, str) or not isinstance(obj, Mapping):
        raise Unsupported("malformed_event", f"event {event.get('id')} lacks type or data.object")
    account = event.get("account")
    created = to_time(event.get("created"), f"event {event.get('id')}")

    if etype in DEAUTHORIZED_EVENTS:
        if not account:
            raise Unsupported("malformed_event", "deauthorization without an account")
        return EventRows("deauthorized", deauthorized_account=account)
    if etype in ACCOUNT_EVENTS:
        profile = account_profile(obj, created)
        if account and profile["account_id"] != account:
            raise Unsupported("malformed_event", "an account event about another account")
        return EventRows("account", account_profile=profile)
    if etype in CARD_UPDATE_EVENTS:
        return EventRows(
            "card_update",
            card_update={
                "payment_method_id": _require(obj, "id", str, "payment_method"),
                "customer_id": object_id(obj.get("customer")),
                "account_id": account,
                "updated_at": created,
                **card_of(obj),
            },
        )
    if etype in CLOSED_EVENTS:
        return EventRows("closed", closed=(_require(obj, "id", str, str(etype)), created))
    if etype not in FAILURE_EVENTS | RECOVERY_EVENTS:
        return EventRows("ignored")

    # The event's own time is when the failure or recovery happened.
    kind = "failure" if etype in FAILURE_EVENTS else "recovery"
    oname = obj.get("object")
    if oname == "invoice":
        return _invoice_event(obj, account, kind, created, etype)
    if oname == "payment_intent":
        return _payment_intent_event(obj, account, kind, created)
    if oname == "charge":
        return _charge_event(obj, account, kind, created)
    raise Unsupported("unsupported_object", f"{etype} carries a {oname}")


def _invoice_event(
    invoice: Mapping[str, Any], account: str | None, kind: str, at: datetime, etype: str = ""
) -> EventRows:
    pid = _require(invoice, "id", str, "invoice")
    pis = invoice_payment_intents(invoice)
    pi = _expanded(pis[-1]) if pis else None
    if kind == "recovery":
        return EventRows(kind, attempt=attempt_row(pid, at, None, pi))
    # Stripe never expands an event's objects: whoever applies the event reads the intent
    # first (serving.stripe_reads). Without it the decline is not known, and is recorded as
    # such (UNKNOWN_DECLINE: no merchant retry), never as a guessed soft code.
    decline = decline_from_error(get_path(pi, "last_payment_error"))
    charge = _expanded(get_path(pi, "latest_charge"))
    if decline is None and charge is not None:  # an intent read after it moved on
        decline = decline_from_charge(charge)
    if decline is None and etype == "invoice.payment_action_required":
        decline = Decline("authentication_required", None, None, None)
    decline = decline or Decline(UNKNOWN_DECLINE, None, None, None)
    row = payment_row(
        invoice,
        account,
        at,
        decline,
        payment_intent=pi,
        charge=charge,
    )
    return EventRows(kind, payment=row, attempt=attempt_row(pid, at, decline, pi))


def _payment_intent_event(
    pi: Mapping[str, Any], account: str | None, kind: str, at: datetime
) -> EventRows:
    pid = _require(pi, "id", str, "payment_intent")
    if kind == "recovery":
        return EventRows(kind, attempt=attempt_row(pid, at, None, pi))
    decline = decline_from_error(pi.get("last_payment_error"))
    if decline is None:
        raise Unsupported("malformed_object", f"failed payment intent {pid} has no error")
    row = payment_row(pi, account, at, decline, charge=_expanded(pi.get("latest_charge")))
    return EventRows(kind, payment=row, attempt=attempt_row(pid, at, decline, pi))


def _charge_event(
    charge: Mapping[str, Any], account: str | None, kind: str, at: datetime
) -> EventRows:
    cid = _require(charge, "id", str, "charge")
    pi_id = object_id(charge.get("payment_intent"))
    if not pi_id:
        raise Unsupported("charge_without_payment_intent", cid)
    decline = decline_from_charge(charge) if kind == "failure" else None
    # A charge cannot tell whether its intent belongs to an invoice (basil removed
    # Charge.invoice): the attempt is keyed by the intent, and whoever assembles the history
    # maps the intent to its invoice when it knows one.
    return EventRows(kind, attempt=attempt_row(pi_id, at, decline, charge))


def normalize_events(events: Iterable[Mapping[str, Any]]) -> Batch:
    """Normalize many events; unsupported ones are counted and logged, never fatal."""
    batch = Batch()
    for event in events:
        try:
            rows = normalize_event(event)
        except Unsupported as exc:
            batch.skipped[exc.reason] += 1
            log.warning("skipped event %s: %s", get_path(event, "id"), exc)
            continue
        if rows.kind == "ignored":
            batch.skipped["ignored_event_type"] += 1
            continue
        batch.rows.append(rows)
    return batch
