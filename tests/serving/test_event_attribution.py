"""An invoice's failure reported as Stripe reports it, in any order: the charge's, the payment
intent's and the invoice's events land on one payment (the invoice's), with the decline, the
network's codes and the card read from Stripe, as the export holds them."""

from __future__ import annotations

import itertools
import json
import time

import pandas as pd
import pytest
import stripe

from reclaim import contract
from reclaim.serving import webhooks
from reclaim.serving.store import repository as repo
from reclaim.serving.stripe_reads import StripeReader
from reclaim.simulator.stripe_export import payment_objects, to_stripe_objects
from reclaim.simulator.stripe_standin import StripeStandIn

SECRET = "whsec_attr"


def _events(standin: StripeStandIn, scope, invoice) -> dict[str, dict]:
    """The three events Stripe sends for the invoice's first failure, by type."""
    sent: list[dict] = []
    standin.send_event = sent.append  # capture instead of delivering
    standin.webhooks = {"platform": ("", ""), "connect": ("", "")}
    standin.emit_attempt(scope, invoice, None, pd.Timestamp(invoice["created"], unit="s", tz="UTC"))
    return {e["type"]: e for e in sent}


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_every_order_of_an_invoices_events_gives_the_exported_payment(engine, history, order):
    payments = history.tables.payments
    row = payments[payments["object"] == "invoice"].iloc[[0]]
    tables = contract.ContractTables(
        payments=row,
        attempts=contract.first_failures(row),
        messages=contract.empty(contract.MESSAGES),
    )
    objects = to_stripe_objects(tables)
    with StripeStandIn() as standin:
        standin.load(objects)
        ((scope, _, invoice),) = list(payment_objects(objects))
        events = list(_events(standin, scope, invoice).values())
        assert {e["type"] for e in events} == {
            "charge.failed", "payment_intent.payment_failed", "invoice.payment_failed"
        }  # fmt: skip
        reader = StripeReader(
            stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url})
        )
        for i in order:
            body = json.dumps(events[i]).encode()
            header = stripe.WebhookSignature.generate_signature_header(
                body.decode(), SECRET, timestamp=int(time.time())
            )
            endpoint = "connect" if events[i].get("account") else "platform"
            receipt = webhooks.receive(engine, endpoint, body, header, SECRET, reader=reader)
            assert receipt.status == "processed", receipt
    stored = repo.load_contract(engine)
    assert list(stored.payments["payment_id"]) == [invoice["id"]]  # one payment: the invoice
    assert len(stored.attempts) == 1  # one failure, reported three times
    want = contract.conform(contract.PAYMENTS, row).iloc[0]
    got = stored.payments.iloc[0]
    for column in contract.PAYMENTS.column_names:
        assert (pd.isna(want[column]) and pd.isna(got[column])) or want[column] == got[column], (
            column
        )
