"""An invoice's failure reported as Stripe reports it, in any order: the charge's, the payment
intent's and the invoice's events land on one payment (the invoice's), with the decline, the
network's codes and the card read from Stripe, as the export holds them."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
import stripe

from reclaim import contract
from reclaim.serving import webhooks
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
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


def _deliver(engine, event: dict, reader: StripeReader) -> webhooks.Receipt:
    body = json.dumps(event).encode()
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), SECRET, timestamp=int(time.time())
    )
    endpoint = "connect" if event.get("account") else "platform"
    return webhooks.receive(engine, endpoint, body, header, SECRET, reader=reader)


def _failed_then_paid(standin: StripeStandIn, objects) -> tuple[dict, dict[str, dict], list[dict]]:
    """The loaded invoice, the events of its first failure by type, and the events of its
    customer paying it 30 hours later, in the order Stripe sends them."""
    ((scope, _, invoice),) = list(payment_objects(objects))
    failures = _events(standin, scope, invoice)
    sent: list[dict] = []
    standin.send_event = sent.append
    paid_at = pd.Timestamp(invoice["created"], unit="s", tz="UTC") + pd.Timedelta(hours=30)
    assert standin.customer_pays(scope, "invoices", invoice["id"], paid_at)
    return invoice, failures, sent


def _one_invoice(history) -> tuple[pd.DataFrame, dict]:
    payments = history.tables.payments
    row = payments[payments["object"] == "invoice"].iloc[[0]]
    tables = contract.ContractTables(
        payments=row,
        attempts=contract.first_failures(row),
        messages=contract.empty(contract.MESSAGES),
    )
    return row, to_stripe_objects(tables)


def _same_payment(row: pd.DataFrame, got: pd.Series) -> None:
    want = contract.conform(contract.PAYMENTS, row).iloc[0]
    for column in contract.PAYMENTS.column_names:
        assert (pd.isna(want[column]) and pd.isna(got[column])) or want[column] == got[column], (
            column
        )


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_every_order_of_an_invoices_events_gives_the_exported_payment(engine, history, order):
    row, objects = _one_invoice(history)
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
            receipt = _deliver(engine, events[i], reader)
            assert receipt.status == "processed", receipt
    stored = repo.load_contract(engine)
    assert list(stored.payments["payment_id"]) == [invoice["id"]]  # one payment: the invoice
    assert len(stored.attempts) == 1  # one failure, reported three times
    _same_payment(row, stored.payments.iloc[0])


def test_a_payment_whose_success_arrives_before_its_failure_is_stored_recovered(engine, history):
    """Stripe does not promise order: the customer's payment (invoice.paid, the intent's and
    the charge's success) can arrive before the failure. The successes wait for the payment;
    the failure, read from Stripe after the intent moved on (its error cleared), still gives
    the exported decline; then the payment is recovered."""
    row, objects = _one_invoice(history)
    with StripeStandIn() as standin:
        standin.load(objects)
        invoice, failures, sent = _failed_then_paid(standin, objects)
        successes = {e["type"]: e for e in sent}
        assert set(successes) == {"charge.succeeded", "payment_intent.succeeded", "invoice.paid"}
        ((scope, _, _),) = list(payment_objects(objects))
        intent = standin.intent_of(scope, standin.objects[scope]["invoices"][invoice["id"]])
        assert intent["last_payment_error"] is None  # Stripe cleared it
        reader = StripeReader(
            stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url})
        )
        for event in successes.values():
            assert _deliver(engine, event, reader).status == "waiting"
        assert repo.load_contract(engine).payments.empty
        assert _deliver(engine, failures["invoice.payment_failed"], reader).status == "processed"
    stored = repo.load_contract(engine)
    assert list(stored.payments["payment_id"]) == [invoice["id"]]
    _same_payment(row, stored.payments.iloc[0])
    attempts = stored.attempts.sort_values("attempt_number")
    assert list(attempts["outcome"]) == ["failed", "succeeded"]
    assert attempts["initiator"].iloc[1] == "customer"
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(sa.select(t.stripe_events.c.type, t.stripe_events.c.status)).all()
        )
    assert statuses == {
        "invoice.paid": "processed", "payment_intent.succeeded": "processed",
        "charge.succeeded": "processed", "invoice.payment_failed": "processed",
    }  # fmt: skip


def test_a_success_whose_failure_never_comes_stops_waiting(engine, history):
    """A success of a payment Reclaim never had (paid at the first try) waits no longer than
    Stripe redelivers events, then is ignored."""
    _, objects = _one_invoice(history)
    with StripeStandIn() as standin:
        standin.load(objects)
        ((scope, _, invoice),) = list(payment_objects(objects))
        sent: list[dict] = []
        standin.send_event = sent.append
        standin.webhooks = {"platform": ("", ""), "connect": ("", "")}
        at = pd.Timestamp(invoice["created"], unit="s", tz="UTC")
        assert standin.customer_pays(scope, "invoices", invoice["id"], at)
        reader = StripeReader(
            stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url})
        )
        paid = next(e for e in sent if e["type"] == "invoice.paid")
        assert _deliver(engine, paid, reader).status == "waiting"
        soon = datetime.now(UTC) + webhooks.WAIT_LIMIT - timedelta(hours=1)
        assert webhooks.process_pending(engine, now=soon) == {}
        later = datetime.now(UTC) + webhooks.WAIT_LIMIT + timedelta(hours=1)
        assert webhooks.process_pending(engine, now=later) == {"expired": 1}
    with engine.connect() as conn:
        status = conn.execute(sa.select(t.stripe_events.c.status)).scalar()
    assert status == "ignored"


@pytest.mark.parametrize("model", ["direct", "destination", "separate_charges"])
def test_stripes_events_never_touch_another_accounts_payment_of_the_same_id(engine, history, model):
    """Account A stored the id of account B's invoice first (through the API, as anyone
    with a key scoped to A can). B's failure and its customer's payment, as Stripe sends
    them (a Connect event names the account; a platform event's invoice says whose it is),
    make B's own payment, failed then recovered; A's copy is left as it was."""
    payments = history.tables.payments
    row = payments[(payments["object"] == "invoice") & (payments["charge_model"] == model)]
    row = row.iloc[[0]].reset_index(drop=True)
    objects = to_stripe_objects(
        contract.ContractTables(
            row, contract.first_failures(row), contract.empty(contract.MESSAGES)
        )
    )
    squatter = row.assign(account_id="acct_squatter")
    repo.save_contract(
        engine,
        contract.ContractTables(
            squatter, contract.first_failures(squatter), contract.empty(contract.MESSAGES)
        ),
    )
    with StripeStandIn() as standin:
        standin.load(objects)
        invoice, failures, sent = _failed_then_paid(standin, objects)
        reader = StripeReader(
            stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url})
        )
        for event in [*failures.values(), *sent]:
            assert _deliver(engine, event, reader).status == "processed", event["type"]
    owner = row["account_id"].iloc[0]
    mine = repo.load_rows(engine, [(owner, invoice["id"])])[(owner, invoice["id"])]
    theirs = repo.load_rows(engine, [("acct_squatter", invoice["id"])])
    payment, attempts, _ = mine
    assert payment["recovered"] == 1
    assert [a["outcome"] for a in attempts] == ["failed", "succeeded"]
    payment, attempts, _ = theirs[("acct_squatter", invoice["id"])]
    assert payment["recovered"] == 0 and payment["closed_at"] is None
    assert [a["outcome"] for a in attempts] == ["failed"]
