"""The backfill with the real SDK over HTTP against the stand-in: simulated history goes out as
Stripe objects and comes back as the same contract rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
import stripe

from reclaim import contract
from reclaim.features.stripe_backfill import Backoff, backfill
from reclaim.reference import RandomizedLogging
from reclaim.simulator import generate, rollout
from reclaim.simulator.stripe_export import to_stripe_objects
from reclaim.simulator.stripe_standin import Faults, StripeStandIn

FAST = Backoff(base_seconds=0.001, max_seconds=0.01, max_tries=12)


@pytest.fixture(scope="module")
def simulated() -> contract.ContractTables:
    return rollout(generate(6, 250, seed=21), RandomizedLogging(), seed=21).tables


def _client(standin: StripeStandIn) -> stripe.StripeClient:
    return stripe.StripeClient(
        standin.api_key, base_addresses={"api": standin.url}, max_network_retries=0
    )


def _run(simulated: contract.ContractTables, faults: Faults | None = None):
    with StripeStandIn(faults=faults or Faults()) as standin:
        standin.load(to_stripe_objects(simulated))
        tables, report = backfill(_client(standin), datetime(2025, 12, 1, tzinfo=UTC), FAST)
        return tables, report, list(standin.requests)


def test_backfill_round_trips_the_simulated_history(simulated: contract.ContractTables) -> None:
    tables, report, requests = _run(simulated)
    assert report.scopes == 1 + simulated.payments["account_id"].nunique()
    assert sum(report.skipped.values()) == 0

    got = tables.payments.set_index("payment_id").sort_index()
    want = simulated.payments.set_index("payment_id").sort_index()
    assert list(got.index) == list(want.index)
    same = [
        "object",
        "account_id",
        "charge_model",
        "on_behalf_of",
        "amount",
        "currency",
        "application_fee_amount",
        "customer_id",
        "customer_country",
        "card_brand",
        "card_funding",
        "card_country",
        "billing_reason",
        "decline_code",
        "advice_code",
        "network_decline_code",
        "network_advice_code",
    ]
    pd.testing.assert_frame_equal(got[same], want[same])
    assert (got["failed_at"] == want["failed_at"].dt.floor("s")).all()
    known = want["customer_timezone"].notna()
    assert (got.loc[known, "customer_timezone"] == want.loc[known, "customer_timezone"]).all()
    assert got.loc[~known, "customer_timezone"].notna().all(), "filled from the card country"

    key = ["payment_id", "attempt_number"]
    ga = tables.attempts.sort_values(key).reset_index(drop=True)
    wa = simulated.attempts.sort_values(key).reset_index(drop=True)
    cols = [
        *key,
        "initiator",
        "outcome",
        "decline_code",
        "advice_code",
        "network_decline_code",
        "network_advice_code",
        "policy",
    ]
    pd.testing.assert_frame_equal(ga[cols], wa[cols])
    assert (ga["attempted_at"] == wa["attempted_at"].dt.floor("s")).all()
    assert ga["propensity"].equals(wa["propensity"])
    # direct charges were read on their connected account, the rest on the platform
    scoped = {r.account for r in requests if r.path == "/v1/charges"}
    direct = set(
        simulated.payments.loc[simulated.payments["charge_model"] == "direct", "account_id"]
    )
    assert direct <= scoped and None in scoped


def test_backfill_backs_off_on_rate_limits_and_5xx(simulated: contract.ContractTables) -> None:
    clean, _, _ = _run(simulated)
    tables, _, requests = _run(simulated, Faults(rate_limit=0.25, server_error=0.1, seed=4))
    assert sum(r.status == 429 for r in requests) > 5
    assert sum(r.status == 500 for r in requests) > 0
    pd.testing.assert_frame_equal(tables.payments, clean.payments)
    pd.testing.assert_frame_equal(tables.attempts, clean.attempts)


def test_backfill_stops_on_a_bad_key(simulated: contract.ContractTables) -> None:
    with StripeStandIn() as standin:
        client = stripe.StripeClient(
            "sk_test_wrong", base_addresses={"api": standin.url}, max_network_retries=0
        )
        with pytest.raises(stripe.AuthenticationError):
            backfill(client, datetime(2025, 1, 1, tzinfo=UTC), FAST)
        assert len(standin.requests) == 1, "an auth error is not retried"


def test_since_excludes_older_history(simulated: contract.ContractTables) -> None:
    cutoff = simulated.payments["failed_at"].median()
    with StripeStandIn() as standin:
        standin.load(to_stripe_objects(simulated))
        tables, _ = backfill(_client(standin), cutoff.to_pydatetime(), FAST)
    assert len(tables.payments) > 0
    assert (tables.payments["failed_at"] >= cutoff.floor("s")).all()
