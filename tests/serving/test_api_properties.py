"""Property-based: no request body, however malformed, makes the API answer 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from reclaim import vocab
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.settings import Settings

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),  # JSON has no NaN or infinity
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
valid_times = st.sampled_from(["2026-11-20T14:00:00Z", "2026-11-01T00:00:00+02:00"])
times = st.sampled_from(
    [
        "2026-05-20T14:00:00Z",
        "2026-05-20T14:00:00",
        "yesterday",
        "2026-02-30T00:00:00Z",
        "1970-01-01T00:00:00+14:00",
    ]
)


def field(valid: st.SearchStrategy, invalid: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Mostly valid values, sometimes a plausible invalid one or junk: enough whole bodies
    must be valid to reach the policy (``test_the_generator_reaches_the_policy``)."""
    bad = invalid if invalid is not None else junk
    # one_of would merge identical branches; weigh by hand: 1 in 12 bad, 1 in 12 junk
    return st.integers(0, 11).flatmap(lambda i: bad if i == 0 else junk if i == 1 else valid)


payments = st.fixed_dictionaries(
    {
        "payment_id": field(st.text(min_size=1, max_size=20)),
        "object": field(st.sampled_from([o.value for o in vocab.PaymentObject])),
        "account_id": field(st.sampled_from(["acct_a", "acct_b"]), st.just("")),
        "charge_model": field(st.sampled_from([c.value for c in vocab.ChargeModel])),
        "amount": field(st.integers(-5, 10**9)),
        "currency": field(st.sampled_from(["usd", "jpy", "eur"]), st.sampled_from(["USD", "xx"])),
        "customer_id": field(st.text(min_size=1, max_size=10)),
        "customer_timezone": field(st.sampled_from(["Europe/Paris", None]), st.just("Mars/Base")),
        "customer_country": field(st.sampled_from(["FR", None]), st.just("fr")),
        "card_brand": field(st.sampled_from([b.value for b in vocab.CardBrand])),
        "failed_at": field(valid_times, times),
        "decline_code": field(st.sampled_from(["insufficient_funds", "stolen_card", "weird_code"])),
    },
    optional={
        "network_advice_code": field(st.sampled_from(["24", "03", "99"])),
        "application_fee_amount": field(st.integers(0, 50), st.integers(-1, 10**9)),
    },
)
_with_payment = st.fixed_dictionaries(
    {"payment": payments},
    optional={"now": field(valid_times, times), "attempts": field(st.just([]))},
)
_by_id = st.fixed_dictionaries({"payment_id": field(st.text(max_size=10))})
# Mostly whole payment contexts (8 in 10), some ids, some junk bodies.
bodies = st.integers(0, 9).flatmap(
    lambda i: _by_id if i == 8 else junk if i == 9 else _with_payment
)


@pytest.fixture(scope="module")
def client(tmp_path_factory, trained):
    tmp = Path(tmp_path_factory.mktemp("props"))
    app = create_app(
        Settings(
            database_url=f"sqlite:///{tmp / 'api.db'}",
            mlflow_tracking_uri=trained.tracking_uri,
            stripe_webhook_secret_platform=SecretStr("whsec_p"),
            stripe_webhook_secret_connect=SecretStr("whsec_c"),
            policy_reload_seconds=3600,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        _, key = create_key(c.app.state.engine, "scheduler")
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_no_decision_request_causes_a_server_error(client, body) -> None:
    response = client.post("/v1/decisions", json=body)
    assert response.status_code < 500, (body, response.text)


@settings(max_examples=50, deadline=None)
@given(path=st.text(max_size=20), body=st.binary(max_size=200))
def test_no_webhook_delivery_causes_a_server_error(client, path, body) -> None:
    response = client.post(
        "/v1/webhooks/stripe/platform",
        content=body,
        headers={"Stripe-Signature": f"t=1,v1={path.encode().hex()}"},
    )
    assert response.status_code == 400


def test_the_generator_reaches_the_policy(client) -> None:
    """Guard against a vacuous property: some generated bodies must be valid decisions."""
    statuses = []

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(body=bodies)
    def collect(body) -> None:
        statuses.append(client.post("/v1/decisions", json=body).status_code)

    collect()
    assert statuses.count(200) >= 3 and statuses.count(422) >= 30, sorted(set(statuses))
