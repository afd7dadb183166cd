"""Webhook ingestion on SQLite and PostgreSQL: signatures, exactly-once processing, nothing
lost when processing fails."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import stripe

from reclaim.serving import webhooks
from reclaim.serving.store import repository as repo
from reclaim.serving.stripe_reads import StripeReader

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stripe"
SECRET = "whsec_test_platform"


def _body(name: str) -> bytes:
    return json.dumps(json.loads((FIXTURES / f"{name}.json").read_text())).encode()


def _sign(body: bytes, secret: str = SECRET, at: int | None = None) -> str:
    ts = int(time.time()) if at is None else at
    return stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=ts)


READER: list[StripeReader] = []


@pytest.fixture(autouse=True)
def _stripe(stripe_reader: StripeReader):
    """Every delivery here reads what it lacks from the (empty) Stripe stand-in."""
    READER[:] = [stripe_reader]


def _receive(*args, **kwargs) -> webhooks.Receipt:
    return webhooks.receive(*args, reader=READER[0], **kwargs)


def _process_pending(*args, **kwargs) -> dict[str, int]:
    return webhooks.process_pending(*args, reader=READER[0], **kwargs)


def _process_event(*args, **kwargs) -> str:
    return webhooks.process_event(*args, reader=READER[0], **kwargs)


def _events(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("select event_id, status, deliveries from stripe_events order by event_id")
        ).all()


def test_a_signed_failure_is_stored_and_becomes_contract_rows(engine) -> None:
    body = _body("destination_pi_generic_decline")
    receipt = _receive(engine, "platform", body, _sign(body), SECRET)
    assert receipt.first_delivery and receipt.status == "processed"
    tables = repo.load_contract(engine)
    assert list(tables.payments["payment_id"]) == ["pi_dest_gen"]
    assert list(tables.payments["charge_model"]) == ["destination"]
    assert list(tables.attempts["attempt_number"]) == [0]


@pytest.mark.parametrize(
    ("header", "secret", "message"),
    [
        (None, SECRET, "missing Stripe-Signature"),
        ("t=1,v1=deadbeef", SECRET, "signature verification failed"),
        ("sign-with-other-secret", SECRET, "signature verification failed"),
        ("stale", SECRET, "signature verification failed"),
    ],
)
def test_forged_unsigned_and_stale_deliveries_store_nothing(engine, header, secret, message):
    body = _body("destination_pi_generic_decline")
    if header == "sign-with-other-secret":
        header = _sign(body, "whsec_attacker")
    elif header == "stale":
        header = _sign(body, at=int(time.time()) - 3600)
    with pytest.raises(webhooks.InvalidWebhook, match=message):
        _receive(engine, "platform", body, header, secret)
    assert _events(engine) == []
    assert len(repo.load_contract(engine).payments) == 0


def test_duplicate_deliveries_are_processed_once(engine) -> None:
    body = _body("direct_invoice_insufficient_funds")
    for _ in range(3):
        _receive(engine, "connect", body, _sign(body), SECRET)
    assert _events(engine) == [("evt_d_if", "processed", 3)]
    assert len(repo.load_contract(engine).attempts) == 1


def test_the_same_failure_reported_twice_is_one_attempt(engine) -> None:
    first = _body("separate_pi_expired_card")
    _receive(engine, "platform", first, _sign(first), SECRET)
    event = json.loads(first)
    event["id"], event["type"] = "evt_sep_exp_again", "payment_intent.payment_failed"
    event["created"] += 30
    again = json.dumps(event).encode()
    _receive(engine, "platform", again, _sign(again), SECRET)
    later = _body("separate_charge_failed")  # a day later: a real second attempt
    _receive(engine, "platform", later, _sign(later), SECRET)
    attempts = repo.load_contract(engine).attempts
    assert list(attempts["attempt_number"]) == [0, 1]


def test_a_recovery_and_unknown_types(engine) -> None:
    failed, paid = _body("direct_invoice_insufficient_funds"), _body("direct_invoice_paid")
    _receive(engine, "connect", failed, _sign(failed), SECRET)
    assert _receive(engine, "connect", paid, _sign(paid), SECRET).status == "processed"
    ignored = _body("customer_created_ignored")
    assert _receive(engine, "platform", ignored, _sign(ignored), SECRET).status == "ignored"
    attempts = repo.load_contract(engine).attempts
    assert list(attempts["outcome"].astype(str)) == ["failed", "succeeded"]


def test_a_connect_event_needs_its_account(engine) -> None:
    body = _body("destination_pi_generic_decline")  # a platform event
    with pytest.raises(webhooks.InvalidWebhook, match="must name its account"):
        _receive(engine, "connect", body, _sign(body), SECRET)


def test_an_event_that_fails_processing_is_kept_and_retried(engine, monkeypatch) -> None:
    body = _body("separate_obo_pi_authentication_required")
    real = webhooks.sn.normalize_event

    def broken(event):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(webhooks.sn, "normalize_event", broken)
    receipt = _receive(engine, "platform", body, _sign(body), SECRET)
    assert receipt.status == "failed"
    assert _events(engine) == [("evt_sep_auth", "failed", 1)]
    assert len(repo.load_contract(engine).payments) == 0

    monkeypatch.setattr(webhooks.sn, "normalize_event", real)
    assert _process_pending(engine) == {}  # it backs off before the next try
    later = datetime.now(UTC) + webhooks.RETRY_BASE + timedelta(seconds=1)
    assert _process_pending(engine, now=later) == {"processed": 1}
    assert _events(engine) == [("evt_sep_auth", "processed", 1)]
    assert list(repo.load_contract(engine).payments["payment_id"]) == ["pi_sep_auth"]


def test_an_event_retried_by_several_processes_at_once_is_applied_once(engine, monkeypatch):
    import threading

    body = _body("separate_obo_pi_authentication_required")
    real = webhooks.sn.normalize_event
    monkeypatch.setattr(webhooks.sn, "normalize_event", lambda event: 1 / 0)
    assert _receive(engine, "platform", body, _sign(body), SECRET).status == "failed"
    monkeypatch.setattr(webhooks.sn, "normalize_event", real)

    applied = []
    apply = webhooks._apply

    def slow_apply(conn, event, event_id, *args):  # held open, as a slow store would
        applied.append(event_id)
        time.sleep(0.3)
        return apply(conn, event, event_id, *args)

    monkeypatch.setattr(webhooks, "_apply", slow_apply)
    results: list[str] = []
    workers = [
        threading.Thread(target=lambda: results.append(_process_event(engine, "evt_sep_auth")))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert applied == ["evt_sep_auth"]  # one process applied it; the others found it taken
    assert sorted(results) == ["processed"] * 4
    assert len(repo.load_contract(engine).attempts) == 1


def test_an_event_that_always_fails_is_set_aside_and_can_be_tried_again(engine, monkeypatch):
    """A poison event is not retried forever: after MAX_TRIES it is ``dead`` (Stripe's next
    delivery gets 2xx), counted for the operations page, listed and retried by operators."""
    from typer.testing import CliRunner

    from reclaim.cli import app
    from reclaim.serving.store import stats
    from reclaim.settings import get_settings

    body = _body("separate_obo_pi_authentication_required")
    real = webhooks.sn.normalize_event

    def poison(event):
        raise ValueError("cannot be read")

    monkeypatch.setattr(webhooks.sn, "normalize_event", poison)
    assert _receive(engine, "platform", body, _sign(body), SECRET).status == "failed"
    now = datetime.now(UTC)
    for _ in range(webhooks.MAX_TRIES - 2):
        now += webhooks.RETRY_CAP + timedelta(seconds=1)
        assert _process_pending(engine, now=now) == {"failed": 1}
    now += webhooks.RETRY_CAP + timedelta(seconds=1)
    assert _process_pending(engine, now=now) == {"dead": 1}
    assert _events(engine) == [("evt_sep_auth", "dead", 1)]  # (id, status, deliveries)
    assert _process_pending(engine, now=now + timedelta(days=30)) == {}  # set aside
    assert webhooks.dead_events(engine) == 1
    assert stats.operations(engine, now, 3600)["webhooks_dead"] == 1
    again = _receive(engine, "platform", body, _sign(body), SECRET)
    assert again.status == "dead" and not again.first_delivery  # answered 2xx by the route

    monkeypatch.setenv("RECLAIM_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        listed = runner.invoke(app, ["events", "list"], terminal_width=250)
        assert listed.exit_code == 0 and "evt_sep_auth" in listed.output
        assert "ValueError: cannot be read" in listed.output
        bad = runner.invoke(app, ["events", "list", "--status", "lost"])
        assert bad.exit_code == 2 and "'lost'" in bad.output
        monkeypatch.setattr(webhooks.sn, "normalize_event", real)
        retried = runner.invoke(app, ["events", "retry", "evt_sep_auth"])
        assert retried.exit_code == 0 and "1 set-aside event" in retried.output
    finally:
        get_settings.cache_clear()
    assert _process_pending(engine, now=datetime.now(UTC) + timedelta(seconds=1)) == {
        "processed": 1
    }
    assert list(repo.load_contract(engine).payments["payment_id"]) == ["pi_sep_auth"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("data", "object", "amount"), -5, "payment.amount"),
        (("data", "object", "amount"), 0, "payment.amount"),
        (("data", "object", "amount"), 10**14, "payment"),  # above Stripe's largest charge
        (("data", "object", "currency"), "zzzzzz", "payment.currency"),
        (("created",), 253402300799, "failed_at"),  # 9999-12-31
        (("created",), 31536000, "failed_at"),  # 1971
    ],
)
def test_a_signed_event_outside_the_stored_bounds_is_kept_as_rejected(
    engine, path, value, field
) -> None:
    """Signed events skip the API's input checks, not its bounds: refused with the field
    named (never the value), answered 2xx so Stripe stops, nothing stored but the event."""
    event = json.loads(_body("destination_pi_generic_decline"))
    node = event
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    if path == ("created",):  # the intent's own time too
        event["data"]["object"]["created"] = value
    body = json.dumps(event).encode()
    receipt = _receive(engine, "platform", body, _sign(body), SECRET)
    assert receipt.status == "rejected"
    with engine.connect() as conn:
        error = conn.execute(sa.text("select error from stripe_events")).scalar()
    assert field in error, error
    assert len(str(value)) < 3 or str(value) not in error, error  # the value is not kept
    assert repo.load_contract(engine).payments.empty
    # Stripe's redelivery changes nothing
    assert _receive(engine, "platform", body, _sign(body), SECRET).status == "rejected"
