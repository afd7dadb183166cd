"""Inputs that once broke the API (500s, a cross-account write), each now a clear 4xx that
changes nothing stored; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from reclaim.serving import webhooks
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.settings import Settings

from .conftest import _free_port, _serve

SECRET = "whsec_edges"
NOW = "2026-05-20T14:00:00Z"


def _settings(url: str, trained, **kw) -> Settings:
    return Settings(
        database_url=url,
        mlflow_tracking_uri=trained.tracking_uri,
        stripe_webhook_secret_platform=SecretStr(SECRET),
        stripe_webhook_secret_connect=SecretStr(SECRET),
        policy_reload_seconds=3600,
        **kw,
    )


@pytest.fixture
def api(store_url, trained):
    """The API on SQLite or PostgreSQL, called with an unscoped scheduler key."""
    with TestClient(create_app(_settings(store_url, trained))) as c:
        _, key = create_key(c.app.state.engine, "scheduler")
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def _stored(api) -> dict[str, int]:
    tables = repo.load_contract(api.app.state.engine)
    return {name: len(getattr(tables, name)) for name in ("payments", "attempts", "messages")}


def _decide(api, body: dict | str, path: str = "/v1/decisions") -> httpx.Response:
    if isinstance(body, str):  # raw JSON text, for escapes json.dumps would not write
        return api.post(path, content=body, headers={"Content-Type": "application/json"})
    return api.post(path, json=body)


def _refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    text = response.text
    for word in words:
        assert word in text, f"{word!r} not in {text}"


ATTEMPT = {
    "attempt_number": 1,
    "attempted_at": "2026-05-21T14:00:00Z",
    "outcome": "failed",
    "decline_code": "insufficient_funds",
}
MESSAGE = {"message_id": "m1", "sent_at": "2026-05-20T15:00:00Z", "channel": "email",
           "sender": "account"}  # fmt: skip


def test_a_message_before_the_failure_is_refused(api, inline_payment):
    early = {**MESSAGE, "sent_at": "2026-05-19T14:00:00Z"}
    body = {"payment": inline_payment(), "messages": [early], "now": NOW}
    _refused(_decide(api, body), 422, "messages", "before the payment failed")
    assert _stored(api) == {"payments": 0, "attempts": 0, "messages": 0}


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(2**63, "usd"), (10**30, "usd"), (100_000_000, "usd"), (100_000_000, "jpy")],  # fmt: skip
)
def test_amounts_beyond_int64_or_stripes_maximum_are_refused(api, inline_payment, amount, currency):
    body = {"payment": {**inline_payment(), "amount": amount, "currency": currency}, "now": NOW}
    _refused(_decide(api, body), 422, "amount")
    # the largest charge Stripe takes is fine, and so is a rupiah amount in twelve digits
    ok = {**inline_payment(1), "amount": 99_999_999}
    assert _decide(api, {"payment": ok, "now": NOW}).status_code == 200
    idr = {**inline_payment(2), "amount": 150_000_000_000, "currency": "idr"}
    assert _decide(api, {"payment": idr, "now": NOW}).status_code == 200


def test_two_attempts_with_one_number_are_refused(api, inline_payment):
    body = {"payment": inline_payment(), "attempts": [ATTEMPT, ATTEMPT], "now": NOW}
    _refused(_decide(api, body), 422, "attempt_number", "more than once")
    assert _stored(api)["payments"] == 0


def test_two_messages_with_one_id_are_refused(api, inline_payment):
    body = {"payment": inline_payment(), "messages": [MESSAGE, MESSAGE], "now": NOW}
    _refused(_decide(api, body), 422, "message_id", "more than once")


def test_one_payment_twice_in_a_batch_is_refused(api, inline_payment):
    p = inline_payment()
    twice = {"decisions": [{"payment": p, "now": NOW}, {"payment": p, "now": NOW}]}
    _refused(_decide(api, twice, "/v1/decisions/batch"), 422, "more than once", "in_api_0")
    both_ways = {"decisions": [{"payment": p, "now": NOW}, {"payment_id": p["payment_id"]}]}
    _refused(_decide(api, both_ways, "/v1/decisions/batch"), 422, "more than once")
    assert _stored(api)["payments"] == 0


@pytest.mark.parametrize("field", ["customer_id", "decline_code", "customer_timezone", "object"])
def test_a_lone_surrogate_in_any_string_is_a_422(api, inline_payment, field):
    text = json.dumps({"payment": {**inline_payment(), field: "SURROGATE"}, "now": NOW})
    response = _decide(api, text.replace("SURROGATE", "x\\ud800y"))
    _refused(response, 422, field)
    assert _stored(api)["payments"] == 0


@pytest.mark.parametrize("field", ["payment_id", "customer_id", "decline_code"])
def test_a_nul_in_a_string_is_a_422(api, inline_payment, field):
    body = {"payment": {**inline_payment(), field: "in_\x00nul"}, "now": NOW}
    _refused(_decide(api, body), 422, field, "NUL")
    _refused(api.get("/v1/payments/in_%00nul"), 422, "NUL")
    assert _stored(api)["payments"] == 0


@pytest.mark.parametrize(
    ("where", "value", "words"),
    [
        ("failed_at", "0001-01-01T00:00:00Z", ("failed_at", "before 2000")),
        ("failed_at", "9999-12-31T23:59:59Z", ("failed_at", "future")),
        ("now", "2026-05-19T00:00:00Z", ("now is before the payment failed",)),
        ("attempt", "3000-01-01T00:00:00Z", ("attempted_at", "future")),
    ],
)
def test_dates_out_of_range_are_refused(api, inline_payment, where, value, words):
    body: dict = {"payment": inline_payment(), "now": NOW}
    if where == "failed_at":
        body["payment"]["failed_at"] = value
    elif where == "now":
        body["now"] = value
    else:
        body["attempts"] = [{**ATTEMPT, "attempted_at": value}]
    _refused(_decide(api, body), 422, *words)


def test_a_scoped_key_cannot_write_to_another_accounts_payment(api, inline_payment):
    """Payments are keyed by account and id: a scoped key that sends another account's id
    under its own account stores its own payment, and the other's is untouched; asking by
    that id alone answers as for an id nobody holds."""
    engine = api.app.state.engine
    theirs = inline_payment(0)  # account B's payment, stored through the unscoped key
    assert _decide(api, {"payment": theirs, "now": NOW}).status_code == 200
    mine = "acct_mine"
    _, scoped = create_key(engine, "scheduler", [mine])
    forged = {
        "payment": {**theirs, "account_id": mine},  # the same id, under the key's account
        "attempts": [{**ATTEMPT, "outcome": "succeeded", "decline_code": None}],
        "now": "2026-05-22T14:00:00Z",
    }
    headers = {"Authorization": f"Bearer {scoped}"}
    own = api.post("/v1/decisions", json=forged, headers=headers)
    fresh = api.post(
        "/v1/decisions",
        json={**forged, "payment": {**forged["payment"], "payment_id": "in_never_stored"}},
        headers=headers,
    )
    assert own.status_code == fresh.status_code == 200, (own.text, fresh.text)
    assert own.json()["account_id"] == mine
    # by the id alone, the scoped key finds its own copy; another account's is never named
    by_id = api.post("/v1/decisions", json={"payment_id": theirs["payment_id"]}, headers=headers)
    assert by_id.status_code == 200 and by_id.json()["account_id"] == mine
    foreign = {"payment_id": theirs["payment_id"], "account_id": theirs["account_id"]}
    named = api.post("/v1/decisions", json=foreign, headers=headers)
    unknown = api.post("/v1/decisions", json={"payment_id": "in_nothing_here"}, headers=headers)
    assert named.status_code == unknown.status_code == 404
    assert named.json()["detail"].replace(theirs["payment_id"], "X") == unknown.json()[
        "detail"
    ].replace("in_nothing_here", "X"), "the wording must not tell a foreign id from none"
    # B's payment is untouched: still open, one attempt; the key's own copy is recovered
    both = api.get(f"/v1/payments/{theirs['payment_id']}")
    _refused(both, 409, "account_id")  # the unscoped key sees both accounts' copies
    view = api.get(
        f"/v1/payments/{theirs['payment_id']}", params={"account_id": theirs["account_id"]}
    ).json()
    assert view["state"] == "open" and len(view["attempts"]) == 1
    copy = api.get(f"/v1/payments/{theirs['payment_id']}", headers=headers).json()
    assert copy["state"] == "recovered" and copy["payment"]["account_id"] == mine
    unseen = api.get(
        f"/v1/payments/{theirs['payment_id']}",
        params={"account_id": theirs["account_id"]},
        headers=headers,
    )
    assert unseen.status_code == 404


def test_two_accounts_messages_of_the_same_id_are_both_kept(api, inline_payment):
    """Message ids, like payment ids, are unique within an account: B's message with the id
    A used is B's own, never dropped as a repeat of A's."""
    a = inline_payment(0)
    b = {**a, "account_id": "acct_other_b", "payment_id": "in_api_b"}
    for payment in (a, b):
        body = {"payment": payment, "messages": [MESSAGE], "now": NOW}
        assert _decide(api, body).status_code == 200
    m = t.messages.c
    with api.app.state.engine.connect() as conn:
        rows = conn.execute(sa.select(m.account_id, m.payment_id).where(m.message_id == "m1"))
        kept = sorted(rows.all())
    assert kept == sorted([(a["account_id"], "in_api_0"), ("acct_other_b", "in_api_b")])


def test_config_times_carry_their_offset(store_url, trained):
    with TestClient(create_app(_settings(store_url, trained))) as c:
        _, admin = create_key(c.app.state.engine, "admin")
        c.headers["Authorization"] = f"Bearer {admin}"
        assert c.put("/v1/accounts/acct_a/config", json={"max_retries": 3}).status_code == 200
        updated = c.get("/v1/accounts/acct_a/config").json()["updated_at"]
        assert updated.endswith(("+00:00", "Z")), updated


def test_a_huge_body_is_a_413(api):
    huge = b'{"payment_id": "' + b"x" * 5_000_000 + b'"}'
    _refused(
        api.post("/v1/decisions", content=huge, headers={"Content-Type": "application/json"}),
        413,
        "larger than",
    )


# --- webhooks ------------------------------------------------------------------------------


def _sign(body: bytes, at: int | None = None) -> str:
    ts = int(time.time()) if at is None else at
    mac = hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256)  # Stripe's scheme
    return f"t={ts},v1={mac.hexdigest()}"


def _hook(api, body: bytes, signature: str | None = None, endpoint: str = "platform"):
    return api.post(
        f"/v1/webhooks/stripe/{endpoint}",
        content=body,
        headers={"Stripe-Signature": signature or _sign(body), "Content-Type": "application/json"},
    )


def _event(**fields) -> bytes:
    return json.dumps({"id": "evt_1", "object": "event", "type": "customer.created",
                       "livemode": False, "data": {"object": {}}, **fields}).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[1,2]", "not a JSON object"),
        (b'"just a string"', "not a JSON object"),
        (_event(id="evt_" + "x" * 300), "id is longer than 255"),
        (_event(type="t" * 101), "type is longer than 100"),
        (_event(account="acct_" + "a" * 300), "account is longer than 255"),
        (_event(id="evt_\x00"), "NUL"),
        (_event(id=12), "id must be a non-empty string"),
        (b'{"id": "evt_\\ud800", "type": "x"}', "surrogate"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_validly_signed_but_malformed_events_are_400s(api, body, words):
    _refused(_hook(api, body), 400, words)
    with api.app.state.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from stripe_events")).scalar() == 0


def test_a_signature_from_the_future_and_a_huge_body_are_refused(api):
    body = _event()
    _refused(_hook(api, body, _sign(body, int(time.time()) + 86_400)), 400, "in the future")
    big = _event(data={"object": {"note": "x" * 5_000_000}})
    _refused(_hook(api, big), 413, "larger than")


def test_a_failed_event_is_answered_503_and_retried_until_processed_across_a_restart(
    store_url, trained, monkeypatch, stripe_api
):
    fixture = json.loads(
        (
            __import__("pathlib").Path(__file__).parents[1]
            / "fixtures"
            / "stripe"
            / "destination_pi_generic_decline.json"
        ).read_text()  # fmt: skip
    )
    body = json.dumps(fixture).encode()
    settings = _settings(
        store_url,
        trained,
        webhook_retry_seconds=0.1,
        stripe_api_key=SecretStr(stripe_api.api_key),
        stripe_api_base=stripe_api.url,
    )
    real = webhooks.sn.normalize_event

    def broken(event):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(webhooks.sn, "normalize_event", broken)
    with TestClient(create_app(settings)) as first:
        response = _hook(first, body)
        _refused(response, 503, "stored", "retried")
        assert response.headers["Retry-After"]
    monkeypatch.setattr(webhooks.sn, "normalize_event", real)
    # a new process on the same store: its background worker retries the stored event
    with TestClient(create_app(settings)) as second:
        engine = second.app.state.engine
        deadline = time.monotonic() + 120  # generous: what must happen, not how fast
        status = None
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                status = conn.execute(sa.text("select status from stripe_events")).scalar()
            if status == "processed":
                break
            time.sleep(0.1)
        assert status == "processed"
        assert list(repo.load_contract(engine).payments["payment_id"]) == ["pi_dest_gen"]
        assert b"reclaim_webhook_retries_total" in second.get("/metrics").content
        assert b"reclaim_webhook_events_stuck 0.0" in second.get("/metrics").content


def test_a_locked_database_does_not_stall_healthz(tmp_path, trained):
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    port = _free_port()
    server = _serve(create_app(_settings(url, trained)), port)
    base = f"http://127.0.0.1:{port}"
    locker = sa.create_engine(url)
    answers: list[int] = []
    try:
        with locker.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, held
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS hold (x int)")

            def deliver(i: int) -> None:
                body = _event(id=f"evt_lock_{i}")
                r = httpx.post(
                    f"{base}/v1/webhooks/stripe/platform",
                    content=body,
                    headers={"Stripe-Signature": _sign(body)},
                    timeout=120,
                )
                answers.append(r.status_code)

            writers = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
            for w in writers:
                w.start()
            time.sleep(0.5)  # the deliveries are now waiting on the lock
            for _ in range(5):
                started = time.monotonic()
                assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
                assert time.monotonic() - started < 1.0
            conn.exec_driver_sql("ROLLBACK")
        for w in writers:
            w.join(120)
        assert answers == [200] * 8  # every delivery went through once the lock was gone
    finally:
        server.should_exit = True
        locker.dispose()
