"""POST /v1/decisions against a trained policy served from the MLflow registry."""

from __future__ import annotations

import json

import pytest

from reclaim.serving.auth import create_key


def test_a_decision_for_an_inline_payment(client, inline_payment) -> None:
    body = {"payment": inline_payment(), "now": "2026-05-20T14:00:00Z"}
    answer = client.post("/v1/decisions", json=body)
    assert answer.status_code == 200, answer.text
    d = answer.json()
    assert d["payment_id"] == "in_api_0" and d["model_version"] == "1"
    assert d["retry"] is not None and d["no_retry_reason"] is None
    assert d["retry"]["local_timezone"] == "America/Chicago"
    assert 0 < d["expected_recovery_probability"] < 1 and 0 < d["propensity"] <= 1
    assert len(d["reasons"]) == 3
    assert client.post("/v1/decisions", json=body).json() == d, "same question, same answer"
    # the service now holds the payment: asking by id works
    by_id = client.post(
        "/v1/decisions", json={"payment_id": "in_api_0", "now": "2026-05-20T14:00:00Z"}
    )
    assert by_id.status_code == 200 and by_id.json()["retry"] == d["retry"]


def test_hard_declines_are_never_retried(client, inline_payment) -> None:
    payment = {
        **inline_payment(1),
        "decline_code": "stolen_card",
        "advice_code": "do_not_try_again",
        "network_decline_code": "43",
    }
    d = client.post("/v1/decisions", json={"payment": payment}).json()
    assert d["retry"] is None and d["no_retry_reason"] == "hard_decline"


def test_batch_and_history(client, inline_payment) -> None:
    first = inline_payment(2)
    later = {
        "payment": first,
        "now": "2026-05-22T15:00:00Z",
        "attempts": [
            {
                "attempt_number": 1,
                "attempted_at": "2026-05-22T15:00:00Z",
                "outcome": "failed",
                "decline_code": "insufficient_funds",
            }
        ],
        "messages": [
            {
                "message_id": "m1",
                "sent_at": "2026-05-20T14:00:00Z",
                "channel": "email",
                "sender": "account",
            }
        ],
    }
    batch = client.post(
        "/v1/decisions/batch", json={"decisions": [{"payment": inline_payment(3)}, later]}
    )
    assert batch.status_code == 200, batch.text
    assert [d["payment_id"] for d in batch.json()["decisions"]] == ["in_api_3", "in_api_2"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": -1}, "amount"),
        ({"charge_model": "on_behalf"}, "charge_model"),
        ({"currency": "USD"}, "currency"),
        ({"failed_at": "2026-05-20T14:00:00"}, "failed_at"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_input_gets_422_naming_the_field(client, change, field, inline_payment) -> None:
    response = client.post("/v1/decisions", json={"payment": {**inline_payment(), **change}})
    assert response.status_code == 422
    assert field in json.dumps(response.json()["detail"])


def test_unknown_payment_and_ambiguous_requests(client) -> None:
    assert client.post("/v1/decisions", json={"payment_id": "in_nope"}).status_code == 404
    neither = client.post("/v1/decisions", json={})
    assert neither.status_code == 422 and "exactly one" in neither.text
    assert client.post("/v1/decisions/batch", json={"decisions": []}).status_code == 422


def test_keys_roles_and_account_scope(client, inline_payment) -> None:
    engine = client.app.state.engine
    mine = inline_payment(5)
    theirs = {**inline_payment(6), "account_id": "acct_someone_else"}
    for p in (mine, theirs):
        assert client.post("/v1/decisions", json={"payment": p}).status_code == 200

    def call(key: str | None, method: str, path: str, **kw):
        headers = {"Authorization": f"Bearer {key}"} if key else {"Authorization": ""}
        return client.request(method, path, headers=headers, **kw)

    assert call(None, "POST", "/v1/decisions", json={"payment_id": "in_api_5"}).status_code == 401
    assert call("rk_forged", "GET", "/v1/payments/in_api_5").status_code == 401
    _, analyst = create_key(engine, "analyst")
    assert (
        call(analyst, "POST", "/v1/decisions", json={"payment_id": "in_api_5"}).status_code == 403
    )
    view = call(analyst, "GET", "/v1/payments/in_api_5")
    assert view.status_code == 200 and view.json()["decisions"], view.text
    assert view.json()["state"] == "open" and len(view.json()["attempts"]) == 1

    _, scoped = create_key(engine, "scheduler", [mine["account_id"]])
    assert call(scoped, "GET", "/v1/payments/in_api_5").status_code == 200
    assert call(scoped, "GET", "/v1/payments/in_api_6").status_code == 404
    assert call(scoped, "POST", "/v1/decisions", json={"payment_id": "in_api_6"}).status_code == 404
    assert call(scoped, "POST", "/v1/decisions", json={"payment": theirs}).status_code == 404
    assert call(scoped, "POST", "/v1/decisions", json={"payment_id": "in_api_5"}).status_code == 200


def test_authentication_required_gets_a_reminder_not_a_retry(client, inline_payment) -> None:
    payment = {**inline_payment(3), "decline_code": "authentication_required",
               "advice_code": None, "network_decline_code": "1A"}  # fmt: skip
    body = {"payment": payment, "now": "2026-05-20T15:00:00Z"}
    d = client.post("/v1/decisions", json=body).json()
    assert d["retry"] is None and d["no_retry_reason"] == "customer_action"
    assert d["channel"] is not None, d  # the policy's own channel, or the rule's email


def test_an_unreachable_customer_gets_no_message(client, inline_payment) -> None:
    payment = {**inline_payment(4), "reachable_email": False, "reachable_sms": False,
               "reachable_in_app": False, "decline_code": "authentication_required",
               "advice_code": None, "network_decline_code": "1A"}  # fmt: skip
    d = client.post("/v1/decisions", json={"payment": payment, "now": "2026-05-20T15:00:00Z"})
    assert d.status_code == 200, d.text
    assert d.json()["channel"] is None and d.json()["no_retry_reason"] == "customer_action"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"payment": {"amount": 5900}}, "payment.amount"),
        ({"payment": {"failed_at": "2026-05-20T15:00:00Z"}}, "payment.failed_at"),
        ({"payment": {"decline_code": "do_not_honor"}}, "payment.decline_code"),
        ({"attempt": {"outcome": "succeeded", "decline_code": None}}, "attempts[0].outcome"),
    ],
)
def test_a_resend_that_contradicts_the_store_gets_409_naming_the_field(
    client, inline_payment, change, field
) -> None:
    attempt = {
        "attempt_number": 1,
        "attempted_at": "2026-05-21T15:00:00Z",
        "outcome": "failed",
        "decline_code": "insufficient_funds",
    }
    first = {"payment": inline_payment(5), "attempts": [attempt], "now": "2026-05-22T14:00:00Z"}
    assert client.post("/v1/decisions", json=first).status_code == 200
    # the same context again, and with a new attempt: fine
    assert client.post("/v1/decisions", json=first).status_code == 200
    newer = {**attempt, "attempt_number": 2, "attempted_at": "2026-05-22T15:00:00Z"}
    more = {**first, "attempts": [attempt, newer], "now": "2026-05-23T14:00:00Z"}
    assert client.post("/v1/decisions", json=more).status_code == 200
    changed = {
        **first,
        "payment": {**first["payment"], **change.get("payment", {})},
        "attempts": [{**attempt, **change.get("attempt", {})}],
    }
    answer = client.post("/v1/decisions", json=changed)
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"].startswith(f"{field}:"), answer.json()
    batch = client.post("/v1/decisions/batch", json={"decisions": [changed]})
    assert batch.status_code == 409 and field in batch.text
    stored = client.get("/v1/payments/in_api_5")  # the store kept what it was told first
    assert stored.status_code == 200 and stored.json()["payment"]["amount"] == 4900
