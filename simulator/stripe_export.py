"""Simulated contract tables as the Stripe objects a platform would hold (API 2025-03-31.basil+).

Each payment becomes a PaymentIntent (and an Invoice when it is one) on the right scope — the
connected account for direct charges, the platform otherwise — with a Charge per attempt and a
Customer. The stand-in serves them, so the backfill can be tested end to end: contract rows →
Stripe objects → the official SDK → contract rows again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

from reclaim import contract, vocab

Scope = str | None

#: A region that maps back to each simulated timezone (see ``reclaim.features.geo``).
REGION_OF_ZONE = {
    "America/New_York": "NY",
    "America/Chicago": "IL",
    "America/Denver": "CO",
    "America/Los_Angeles": "CA",
    "America/Toronto": "ON",
    "America/Vancouver": "BC",
    "Australia/Sydney": "NSW",
}


def _ts(value: pd.Timestamp) -> int:
    return int(value.timestamp())


def _none(value: Any) -> Any:
    return None if pd.isna(value) else value


def _address(country: Any, zone: Any) -> dict[str, Any] | None:
    if pd.isna(country):
        return None
    return {
        "city": None,
        "country": country,
        "line1": None,
        "line2": None,
        "postal_code": None,
        "state": REGION_OF_ZONE.get(zone),
    }


def _connect_fields(p: Any) -> dict[str, Any]:
    model = p.charge_model
    fields: dict[str, Any] = {
        "on_behalf_of": p.account_id if p.on_behalf_of else None,
        "transfer_data": None,
        "transfer_group": None,
        "metadata": {},
    }
    if model == vocab.ChargeModel.DESTINATION:
        fields["transfer_data"] = {"destination": p.account_id}
    elif model == vocab.ChargeModel.SEPARATE_CHARGES:
        fields["transfer_group"] = f"group_{p.payment_id}"
        fields["metadata"] = {"connected_account": p.account_id}
    return fields


def display_name(account_id: str) -> str:
    """A simulated account's business name (synthetic: made from its id)."""
    return f"Shop {account_id.rsplit('_', 1)[-1]}"


def to_stripe_objects(tables: contract.ContractTables) -> dict[Scope, dict[str, list[dict]]]:
    """Stripe objects for every payment and attempt, by scope and resource.

    Returns ``{scope: {"customers"|"payment_intents"|"invoices"|"charges"|"accounts": [...]}}``;
    the platform scope (None) also lists the connected accounts.
    """
    out: dict[Scope, dict[str, list[dict]]] = {None: {"accounts": []}}
    attempts = tables.attempts.sort_values(["payment_id", "attempt_number"])
    by_payment = dict(iter(attempts.groupby("payment_id", sort=False)))
    for acct in sorted(tables.payments["account_id"].unique()):
        out[None]["accounts"].append(
            {
                "id": acct,
                "object": "account",
                "created": 0,
                "type": "standard",
                "metadata": {},
                "business_profile": {"name": display_name(acct)},
            }  # fmt: skip
        )

    for p in tables.payments.itertuples(index=False):
        scope: Scope = p.account_id if p.charge_model == vocab.ChargeModel.DIRECT else None
        bucket = out.setdefault(scope, {})
        is_invoice = p.object == vocab.PaymentObject.INVOICE
        pi_id = f"pi_{p.payment_id[3:]}" if is_invoice else p.payment_id
        connect = _connect_fields(p)
        card = {
            "brand": p.card_brand,
            "funding": p.card_funding,
            "country": _none(p.card_country),
            "network": p.card_brand,
            "last4": "4242",
        }
        address = _address(p.customer_country, p.customer_timezone)
        rows = by_payment.get(p.payment_id, attempts.iloc[:0])
        charges = []
        for a in rows.itertuples(index=False):
            failed = a.outcome == vocab.Outcome.FAILED
            metadata = dict(connect["metadata"])
            metadata["reclaim_initiator"] = a.initiator
            if not pd.isna(a.policy):
                metadata["reclaim_policy"] = a.policy
                metadata["reclaim_propensity"] = repr(float(a.propensity))
            charges.append(
                {
                    "id": f"ch_{p.payment_id[3:]}_{a.attempt_number}",
                    "object": "charge",
                    "amount": int(p.amount),
                    "currency": p.currency,
                    "customer": p.customer_id,
                    "created": _ts(a.attempted_at),
                    "payment_intent": pi_id,
                    "status": "failed" if failed else "succeeded",
                    "paid": not failed,
                    "failure_code": "card_declined" if failed else None,
                    "outcome": {
                        "type": "issuer_declined" if failed else "authorized",
                        "reason": _none(a.decline_code),
                        "advice_code": _none(a.advice_code),
                        "network_decline_code": _none(a.network_decline_code),
                        "network_advice_code": _none(a.network_advice_code),
                        "network_status": "declined_by_network"
                        if failed
                        else "approved_by_network",
                    },
                    "payment_method_details": {"type": "card", "card": card},
                    "billing_details": {"address": None},
                    "application_fee_amount": _none(p.application_fee_amount),
                    **connect,
                    "metadata": metadata,
                    "livemode": False,
                }
            )
        bucket.setdefault("charges", []).extend(charges)
        paid = any(c["status"] == "succeeded" for c in charges)
        last_failed = next((c for c in reversed(charges) if c["status"] == "failed"), None)
        bucket.setdefault("payment_intents", []).append(
            {
                "id": pi_id,
                "object": "payment_intent",
                "amount": int(p.amount),
                "currency": p.currency,
                "customer": p.customer_id,
                "created": _ts(p.failed_at),
                "status": "succeeded" if paid else "requires_payment_method",
                "application_fee_amount": _none(p.application_fee_amount),
                "latest_charge": charges[-1]["id"] if charges else None,
                "last_payment_error": None
                if last_failed is None
                else {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": last_failed["outcome"]["reason"],
                    "advice_code": last_failed["outcome"]["advice_code"],
                    "network_decline_code": last_failed["outcome"]["network_decline_code"],
                    "network_advice_code": last_failed["outcome"]["network_advice_code"],
                    "charge": last_failed["id"],
                    "payment_method": {"id": f"pm_{p.customer_id}", "type": "card", "card": card},
                },
                **connect,
                "livemode": False,
            }
        )
        if is_invoice:
            bucket.setdefault("invoices", []).append(
                {
                    "id": p.payment_id,
                    "object": "invoice",
                    "amount_due": int(p.amount),
                    "currency": p.currency,
                    "customer": p.customer_id,
                    "customer_address": address,
                    "billing_reason": p.billing_reason,
                    "status": "paid" if paid else "open",
                    "created": _ts(p.failed_at),
                    # an invoice carries its own Connect fields, as Stripe's does: a webhook
                    # about it names the connected account without the payment intent
                    "on_behalf_of": connect["on_behalf_of"],
                    "transfer_data": connect["transfer_data"],
                    "application_fee_amount": _none(p.application_fee_amount),
                    "metadata": dict(connect["metadata"]),
                    "livemode": False,
                    "payments": {
                        "object": "list",
                        "has_more": False,
                        "data": [
                            {
                                "id": f"inpay_{p.payment_id[3:]}",
                                "object": "invoice_payment",
                                "invoice": p.payment_id,
                                "payment": {"type": "payment_intent", "payment_intent": pi_id},
                                "status": "paid" if paid else "open",
                            }
                        ],
                    },
                }
            )
        bucket.setdefault("customers", []).append(
            {
                "id": p.customer_id,
                "object": "customer",
                "created": _ts(p.failed_at),
                "email": f"{p.customer_id}@customers.invalid" if p.reachable_email else None,
                "address": address,
                # how the platform may reach them, as it records it on the Stripe customer
                "metadata": {
                    "reclaim_reachable_sms": str(bool(p.reachable_sms)).lower(),
                    "reclaim_reachable_in_app": str(bool(p.reachable_in_app)).lower(),
                },
            }
        )
    return out


def payment_objects(
    objects: dict[Scope, dict[str, list[dict]]],
) -> Iterator[tuple[Scope, str, dict[str, Any]]]:
    """``(scope, resource, object)`` for each payment's own object: its invoice, or its
    payment intent when it is a standalone one (an invoice's intent is reported through the
    invoice)."""
    for scope, by_resource in objects.items():
        of_invoices = {
            pay["payment"]["payment_intent"]
            for inv in by_resource.get("invoices", [])
            for pay in inv["payments"]["data"]
        }
        for resource in ("invoices", "payment_intents"):
            for obj in by_resource.get(resource, []):
                if obj["id"] not in of_invoices:
                    yield scope, resource, obj


def payment_event(kind: str, obj: dict[str, Any], scope: Scope, at: Any) -> dict[str, Any]:
    """The webhook event Stripe sends when ``obj`` (an invoice or payment intent) had
    ``kind`` happen (``payment_failed``, ``paid``, ``succeeded``) at ``at``."""
    return {
        "id": f"evt_{kind}_{obj['id']}",
        "object": "event",
        "type": f"{'invoice' if obj['object'] == 'invoice' else 'payment_intent'}.{kind}",
        "created": int(at.timestamp()),
        "livemode": False,
        "data": {"object": obj},
        **({"account": scope} if scope else {}),
    }
