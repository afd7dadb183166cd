"""Every Stripe fixture through the normalizer: charge model, account, timezone, decline."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from reclaim import contract
from reclaim.features import stripe_normalize as sn
from reclaim.features.geo import timezone_for
from reclaim.simulator import generate
from reclaim.simulator.stripe_export import payment_event, payment_objects, to_stripe_objects

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stripe"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


FAILURES = {
    # fixture: (payment_id, account, charge model, on_behalf_of, decline code, timezone,
    #           customer country, card brand/funding, object)
    "direct_invoice_insufficient_funds": (
        "in_dir_if",
        "acct_direct1",
        "direct",
        False,
        "insufficient_funds",
        "America/Los_Angeles",
        "US",
        ("visa", "debit"),
        "invoice",
    ),
    "destination_pi_generic_decline": (
        "pi_dest_gen",
        "acct_dest1",
        "destination",
        False,
        "generic_decline",
        "Europe/London",
        "GB",
        ("mastercard", "credit"),
        "payment_intent",
    ),
    "destination_obo_invoice_stolen_card": (
        "in_dest_obo",
        "acct_dest2",
        "destination",
        True,
        "stolen_card",
        "Europe/Berlin",
        None,
        ("visa", "credit"),
        "invoice",
    ),
    "separate_pi_expired_card": (
        "pi_sep_exp",
        "acct_sep1",
        "separate_charges",
        False,
        "expired_card",
        "America/New_York",
        None,
        ("amex", "credit"),
        "payment_intent",
    ),
    "separate_obo_pi_authentication_required": (
        "pi_sep_auth",
        "acct_sep2",
        "separate_charges",
        True,
        "authentication_required",
        "Australia/Sydney",
        "AU",
        ("visa", "credit"),
        "payment_intent",
    ),
    "direct_pi_fraudulent": (
        "pi_dir_fraud",
        "acct_direct2",
        "direct",
        False,
        "fraudulent",
        "Asia/Tokyo",
        "JP",
        ("other", "credit"),
        "payment_intent",
    ),
}


@pytest.mark.parametrize("name", FAILURES)
def test_failure_events_become_contract_rows(name: str) -> None:
    pid, account, model, obo, code, tz, country, (brand, funding), obj = FAILURES[name]
    rows = sn.normalize_event(load(name))
    assert rows.kind == "failure"
    p = rows.payment
    assert (p["payment_id"], p["account_id"], p["charge_model"], p["on_behalf_of"]) == (
        pid,
        account,
        model,
        obo,
    )
    assert (p["decline_code"], p["customer_timezone"], p["customer_country"]) == (code, tz, country)
    assert (p["card_brand"], p["card_funding"], p["object"]) == (brand, funding, obj)
    assert p["failed_at"] == pd.Timestamp(load(name)["created"], unit="s", tz="UTC")
    assert rows.attempt["outcome"] == "failed" and rows.attempt["decline_code"] == code
    # the rows satisfy the contract once numbered
    attempt = {**rows.attempt, "attempt_number": 0}
    contract.validate(
        {
            "payments": pd.DataFrame([p]),
            "attempts": pd.DataFrame([attempt]),
            "messages": contract.empty(contract.MESSAGES),
        }
    )


def test_network_codes_and_fees_are_read() -> None:
    p = sn.normalize_event(load("destination_pi_generic_decline")).payment
    assert (p["network_decline_code"], p["network_advice_code"]) == ("05", "24")
    assert p["application_fee_amount"] == 500 and p["currency"] == "gbp"
    stolen = sn.normalize_event(load("destination_obo_invoice_stolen_card")).payment
    assert stolen["advice_code"] == "do_not_try_again" and stolen["application_fee_amount"] == 1200


def test_charge_failed_gives_an_attempt_keyed_by_its_intent() -> None:
    rows = sn.normalize_event(load("separate_charge_failed"))
    a = rows.attempt
    assert rows.kind == "failure" and rows.payment is None
    assert (a["payment_id"], a["decline_code"], a["advice_code"]) == (
        "pi_sep_exp",
        "generic_decline",
        "try_again_later",
    )


def test_recovery_card_update_and_deauthorization() -> None:
    paid = sn.normalize_event(load("direct_invoice_paid"))
    assert paid.kind == "recovery" and paid.attempt["outcome"] == "succeeded"
    assert paid.attempt["payment_id"] == "in_dir_if"
    update = sn.normalize_event(load("card_automatically_updated"))
    assert update.kind == "card_update"
    assert update.card_update["customer_id"] == "cus_e1" and update.card_update["account_id"]
    gone = sn.normalize_event(load("account_deauthorized"))
    assert gone.kind == "deauthorized" and gone.deauthorized_account == "acct_direct2"
    assert sn.normalize_event(load("customer_created_ignored")).kind == "ignored"


MALFORMED = {
    "malformed_no_data": "malformed_event",
    "malformed_platform_own_payment": "no_connected_account",
    "malformed_no_customer": "no_customer",
    "malformed_charge_without_intent": "charge_without_payment_intent",
    "malformed_amount_not_integer": "malformed_object",
    "malformed_no_error": "malformed_object",
    "malformed_not_an_event": "not_an_event",
    "malformed_created_missing": "malformed_object",
    "unsupported_object_in_failure_event": "unsupported_object",
}


@pytest.mark.parametrize(("name", "reason"), MALFORMED.items())
def test_malformed_objects_are_rejected_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(sn.Unsupported) as err:
        sn.normalize_event(load(name))
    assert err.value.reason == reason


def test_a_batch_skips_and_counts_bad_objects_without_stopping(caplog) -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    batch = sn.normalize_events(load(n) for n in names)
    expected = pd.Series(MALFORMED).value_counts().to_dict()
    expected["ignored_event_type"] = 1
    assert dict(batch.skipped) == expected
    assert len(batch.rows) == len(names) - sum(expected.values())
    assert "skipped event evt_own: no_connected_account" in caplog.text


@pytest.mark.parametrize(
    ("country", "region", "zone"),
    [
        ("US", "TX", "America/Chicago"),
        ("US", None, "America/New_York"),
        ("CA", "BC", "America/Vancouver"),
        ("FR", None, "Europe/Paris"),
        ("SG", None, "Asia/Singapore"),
        ("ZZ", None, None),
        (None, None, None),
    ],
)
def test_timezone_from_country_and_region(country, region, zone) -> None:
    assert timezone_for(country, region) == zone


@pytest.mark.parametrize("model", ["destination", "separate_charges"])
def test_a_platform_invoices_failure_webhook_names_its_account_and_fee(model: str) -> None:
    """A webhook carries the invoice alone (its payment intent is not expanded): the invoice's
    own ``transfer_data`` / metadata and ``application_fee_amount`` must be enough."""
    payments = generate(30, 2000, seed=3).payments
    one = payments[
        (payments["charge_model"] == model)
        & payments["payment_id"].str.startswith("in_")
        & payments["application_fee_amount"].notna()
    ].head(1)
    tables = contract.ContractTables(
        one, contract.first_failures(one), contract.empty(contract.MESSAGES)
    )
    [(scope, _, invoice)] = list(payment_objects(to_stripe_objects(tables)))
    assert scope is None  # a platform object: the event names no account
    rows = sn.normalize_event(payment_event("payment_failed", invoice, scope, datetime.now(UTC)))
    payment = rows.payment
    assert payment["account_id"] == one["account_id"].iloc[0]
    assert payment["charge_model"] == model
    assert payment["application_fee_amount"] == int(one["application_fee_amount"].iloc[0])


def test_an_invoice_without_an_email_address_marks_the_customer_unreachable_by_email() -> None:
    event = load("destination_obo_invoice_stolen_card")
    invoice = event["data"]["object"]
    assert sn.normalize_event(event).payment.get("reachable_email", True) is True
    event["data"]["object"] = {**invoice, "customer_email": None}
    p = sn.normalize_event(event).payment
    assert p["reachable_email"] is False
    assert contract.conform(contract.PAYMENTS, pd.DataFrame([p]))["reachable_email"].tolist() == [
        False
    ]
