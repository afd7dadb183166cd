"""GET/PUT /v1/accounts/{id}/config: validated, scoped, and changing the decisions made."""

from __future__ import annotations

import json

import pytest

from reclaim.serving.auth import create_key


@pytest.fixture
def admin(client) -> dict:
    _, key = create_key(client.app.state.engine, "admin")
    return {"Authorization": f"Bearer {key}"}


def test_defaults_overrides_and_the_effective_configuration(client, admin) -> None:
    fresh = client.get("/v1/accounts/acct_new/config")
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["overrides"] == {} and fresh.json()["updated_at"] is None
    assert fresh.json()["effective"]["max_messages"] == 3  # nobody set anything up

    put = client.put(
        "/v1/accounts/*/config",
        json={"max_messages": 2, "branding": {"display_name": "Market", "accent_color": "#0a0b0c"}},
        headers=admin,
    )
    assert put.status_code == 200, put.text
    own = client.put(
        "/v1/accounts/acct_new/config",
        json={"opted_out": True, "branding": {"display_name": "Shop"}},
        headers=admin,
    )
    assert own.status_code == 200, own.text
    view = client.get("/v1/accounts/acct_new/config").json()
    assert view["overrides"] == {"opted_out": True, "branding": {"display_name": "Shop"}}
    assert view["platform_defaults"]["max_messages"] == 2
    eff = view["effective"]
    assert eff["opted_out"] and eff["max_messages"] == 2
    assert (
        eff["branding"]["display_name"] == "Shop" and eff["branding"]["accent_color"] == "#0a0b0c"
    )
    assert view["updated_at"] is not None
    # a later default reaches the account where it did not override the field
    client.put("/v1/accounts/*/config", json={"max_messages": 1}, headers=admin)
    assert client.get("/v1/accounts/acct_new/config").json()["effective"]["max_messages"] == 1
    # an empty body removes every override
    client.put("/v1/accounts/acct_new/config", json={}, headers=admin)
    assert not client.get("/v1/accounts/acct_new/config").json()["effective"]["opted_out"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"allowed_channels": ["pigeon"]}, "allowed_channels"),
        ({"branding": {"logo_url": "not a url"}}, "logo_url"),
        ({"opt_out": True}, "opt_out"),
    ],
)
def test_invalid_configuration_gets_422_and_stores_nothing(client, admin, body, field) -> None:
    client.put("/v1/accounts/acct_a/config", json={"max_retries": 3}, headers=admin)
    bad = client.put("/v1/accounts/acct_a/config", json=body, headers=admin)
    assert bad.status_code == 422 and field in json.dumps(bad.json()["detail"])
    assert client.get("/v1/accounts/acct_a/config").json()["overrides"] == {"max_retries": 3}
    assert client.put("/v1/accounts/acct%20a/config", json={}, headers=admin).status_code == 422


def test_who_may_read_and_change_configuration(client, admin) -> None:
    engine = client.app.state.engine
    _, scoped_admin = create_key(engine, "admin", ["acct_mine"])
    _, scoped_reader = create_key(engine, "analyst", ["acct_mine"])

    def put(key: str, account: str):
        return client.put(
            f"/v1/accounts/{account}/config",
            json={"max_retries": 2},
            headers={"Authorization": f"Bearer {key}"},
        )

    # the client's own key is a scheduler's: it reads, it does not write
    assert client.put("/v1/accounts/acct_mine/config", json={}).status_code == 403
    assert put(scoped_admin, "acct_mine").status_code == 200
    assert put(scoped_admin, "acct_theirs").status_code == 404
    assert put(scoped_admin, "*").status_code == 403
    assert put(scoped_reader, "acct_mine").status_code == 403
    reader = {"Authorization": f"Bearer {scoped_reader}"}
    assert client.get("/v1/accounts/acct_mine/config", headers=reader).status_code == 200
    assert client.get("/v1/accounts/acct_theirs/config", headers=reader).status_code == 404
    assert client.get("/v1/accounts/acct_theirs/config").json()["overrides"] == {}


def _decide(client, inline_payment, n: int = 40) -> list[dict]:
    body = {
        "decisions": [
            {"payment": inline_payment(i), "now": "2026-05-20T14:00:00Z"} for i in range(n)
        ]
    }
    answer = client.post("/v1/decisions/batch", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["decisions"]


def test_configuration_changes_the_decisions(client, admin, inline_payment) -> None:
    base = _decide(client, inline_payment)
    # (exploration picks "no retry" with probability 0.05 / 57: such a decision is logged with
    # that propensity)
    greedy = [d for d in base if d["propensity"] > 0.5]
    assert len(greedy) >= 30 and all(d["retry"] for d in greedy), (
        "soft declines on day 0 are retried by default"
    )
    used = {d["channel"] for d in base} - {None}
    assert used, "the default policy messages some customers"
    assert {d["sender"] for d in base if d["channel"]} >= {"account"}

    # the platform allows only in-app messages, sent by the platform
    client.put(
        "/v1/accounts/*/config",
        json={"allowed_channels": ["in_app"], "sender": "platform"},
        headers=admin,
    )
    narrowed = _decide(client, inline_payment)
    assert {d["channel"] for d in narrowed} <= {"in_app", None}
    assert {d["sender"] for d in narrowed if d["channel"]} <= {"platform"}
    assert all(d["propensity"] > 0 for d in narrowed)

    # one account opts out; another allows no retries at all
    accounts = [_account(inline_payment, d) for d in base]
    out_acct, capped = accounts[0], next(a for a in accounts if a != accounts[0])
    client.put(f"/v1/accounts/{out_acct}/config", json={"opted_out": True}, headers=admin)
    client.put(f"/v1/accounts/{capped}/config", json={"max_retries": 0}, headers=admin)
    for d, account in zip(_decide(client, inline_payment), accounts, strict=True):
        if account == out_acct:
            assert d["retry"] is None and d["no_retry_reason"] == "opted_out" and not d["channel"]
        elif account == capped:
            assert d["retry"] is None and d["no_retry_reason"] == "account_max_retries"
        else:
            assert d["retry"] is not None or d["propensity"] < 0.5  # or explored


def _account(inline_payment, decision: dict) -> str:
    return inline_payment(int(decision["payment_id"].removeprefix("in_api_")))["account_id"]


def test_orchestration_says_which_retries_may_go_to_another_processor(
    client, admin, inline_payment
) -> None:
    """Stripe Orchestration: never for on_behalf_of, never after a failed 3D Secure."""
    body = lambda p: {"payment": p, "now": "2026-05-20T15:00:00Z"}  # noqa: E731
    plain = {**inline_payment(7), "on_behalf_of": False}
    off = client.post("/v1/decisions", json=body(plain)).json()
    assert off["retry"] is not None and off["retry"]["other_processor_allowed"] is False
    put = client.put(
        f"/v1/accounts/{plain['account_id']}/config", json={"orchestration": True}, headers=admin
    )
    assert put.status_code == 200, put.text
    again = {**plain, "payment_id": "in_orch_1"}
    on = client.post("/v1/decisions", json=body(again)).json()
    assert on["retry"]["other_processor_allowed"] is True
    obo = {**again, "payment_id": "in_orch_2", "on_behalf_of": True}
    assert (
        client.post("/v1/decisions", json=body(obo)).json()["retry"]["other_processor_allowed"]
        is False
    )
    after_3ds = {**again, "payment_id": "in_orch_3"}
    attempts = [
        {"attempt_number": 1, "attempted_at": "2026-05-20T14:30:00Z", "initiator": "customer",
         "outcome": "failed", "decline_code": "authentication_required"},
        {"attempt_number": 2, "attempted_at": "2026-05-20T14:40:00Z", "initiator": "customer",
         "outcome": "failed", "decline_code": "insufficient_funds"},
    ]  # fmt: skip
    d = client.post("/v1/decisions", json={**body(after_3ds), "attempts": attempts}).json()
    assert d.get("retry") is not None, d
    assert d["retry"]["other_processor_allowed"] is False


@pytest.mark.parametrize("length", [2083, 2084, 100_000])
def test_a_long_logo_url_is_stored_or_refused_never_a_500(store_url, trained, length) -> None:
    """Issue 27 measured a 500 for a 2,083-character ``logo_url``: on SQLite and PostgreSQL
    it is kept and read back whole where the URL type takes it, else a 422 naming it."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from reclaim.serving.app import create_app
    from reclaim.settings import Settings

    settings = Settings(
        database_url=store_url,
        mlflow_tracking_uri=trained.tracking_uri,
        stripe_webhook_secret_platform=SecretStr("whsec_p"),
        stripe_webhook_secret_connect=SecretStr("whsec_c"),
        policy_reload_seconds=3600,
    )
    url = "https://cdn.example.com/" + "a" * (length - len("https://cdn.example.com/"))
    with TestClient(create_app(settings)) as c:
        _, key = create_key(c.app.state.engine, "admin")
        c.headers["Authorization"] = f"Bearer {key}"
        put = c.put("/v1/accounts/acct_logo/config", json={"branding": {"logo_url": url}})
        assert put.status_code in (200, 422), put.text
        got = c.get("/v1/accounts/acct_logo/config")
        assert got.status_code == 200
        kept = got.json()["overrides"].get("branding", {}).get("logo_url")
        if put.status_code == 200:
            assert kept == url
        else:
            assert "logo_url" in put.text and kept is None
