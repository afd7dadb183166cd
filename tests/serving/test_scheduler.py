"""The scheduler against the real API (uvicorn) and the Stripe stand-in over HTTP: every
decision carried out once, under the network rules, surviving crashes and faults."""

from __future__ import annotations

import email
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import stripe

from reclaim.serving import stripe_actions
from reclaim.serving.channels import SignedWebhook, SmtpEmail, signature
from reclaim.serving.store import tables as t
from reclaim.simulator.stripe_standin import Faults, StripeStandIn

from .conftest import stop_process


def _attempts(loop) -> pd.DataFrame:
    with loop.engine.connect() as conn:
        return pd.read_sql(sa.select(t.attempts), conn)


def check_exactly_once(loop, max_retries: int) -> pd.DataFrame:
    """The invariants of a finished run; returns the actions."""
    actions = loop.actions()
    executed = loop.standin.executed
    assert executed, "the run charged nothing"
    assert max(executed.values()) == 1, {k: n for k, n in executed.items() if n > 1}
    acted = actions[actions["outcome"].isin(["succeeded", "declined"])]
    assert set(acted["idempotency_key"]) <= set(executed), "an action recorded but not charged"
    attempts = _attempts(loop)
    # retries: merchant attempts after the first failure (itself merchant-initiated)
    merchant = attempts[(attempts["initiator"] == "merchant") & (attempts["attempt_number"] > 0)]
    recorded = {
        f"reclaim-retry-{a}-{p}-{n}"
        for a, p, n in zip(
            loop.payments.set_index("payment_id").loc[merchant["payment_id"], "account_id"],
            merchant["payment_id"],
            merchant["attempt_number"],
            strict=True,
        )
    }
    assert set(executed) == recorded, (
        f"charged, not stored: {set(executed) - recorded}; stored, not charged: "
        f"{recorded - set(executed)}"
    )
    assert merchant.groupby("payment_id").size().max() <= max_retries
    assert (attempts[attempts["outcome"] == "succeeded"].groupby("payment_id").size() <= 1).all()
    assert not actions["status"].isin(["scheduled", "in_flight"]).any()
    return actions


def test_failures_from_webhooks_are_decided_retried_and_recorded_once(make_loop):
    loop = make_loop(10, max_retries=2)
    runner = loop.scheduler()
    loop.run_until_done(runner, timeout=60)
    actions = check_exactly_once(loop, max_retries=2)
    assert loop.stored_payments() == 10
    assert runner.stats.retries >= 10  # each payment retried at least once under a 2 cap
    assert set(actions["outcome"].str.split(":").str[0]) <= {
        "succeeded",
        "declined",
        "no_retry",
        "already_recovered",
    }


def _scheduler_process(loop, **env: str) -> subprocess.Popen:
    reclaim = Path(sys.executable).with_name("reclaim")
    return subprocess.Popen(
        [str(reclaim), "scheduler"],
        env=loop.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_scheduler_killed_mid_run_and_restarted_carries_out_every_action_once(make_loop):
    # a third of the charges answer only after the client gave up: the retry under the same
    # key must be answered from Stripe's record, also across the kill
    loop = make_loop(16, faults=Faults(timeout=0.3, timeout_seconds=1.5, seed=3), max_retries=3)
    first = _scheduler_process(loop)
    deadline = time.monotonic() + 90
    while sum(loop.standin.executed.values()) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = dict(loop.standin.executed)
    assert killed_at, "nothing was charged before the kill"
    open_then = loop.open_work()
    assert open_then > 0, "the kill came after all the work: it tested nothing"
    second = _scheduler_process(loop)
    try:
        loop.wait_until_done(timeout=150)
    finally:
        out = stop_process(second)
    assert "leading as" in out, out
    check_exactly_once(loop, max_retries=3)
    assert sum(loop.standin.executed.values()) > sum(killed_at.values())


def test_two_schedulers_started_at_once_never_both_act(make_loop):
    loop = make_loop(10, max_retries=2)
    both = [_scheduler_process(loop), _scheduler_process(loop)]
    try:
        loop.wait_until_done(timeout=120)
        with loop.engine.connect() as conn:
            holder = conn.execute(sa.select(t.scheduler_leader.c.holder)).scalar()
    finally:
        # the standby first: stopping the leader first would hand it the lease (a failover)
        leader = [p for p in both if f":{p.pid}:" in str(holder)]
        order = [p for p in both if p not in leader] + leader
        outputs = {p.pid: stop_process(p) for p in order}
    outputs = [outputs[p.pid] for p in both]
    leaders = [o for o in outputs if "leading as" in o]
    assert len(leaders) == 1, outputs
    assert any("standing by" in o for o in outputs), outputs
    check_exactly_once(loop, max_retries=2)


def test_with_stripe_failing_a_fifth_of_calls_and_webhooks_doubled_and_shuffled(make_loop):
    faults = Faults(
        rate_limit=0.05,
        server_error=0.1,
        timeout=0.05,
        timeout_seconds=1.5,
        duplicate_webhooks=0.5,
        reorder_webhooks=True,
        seed=11,
    )
    loop = make_loop(12, faults=faults, max_retries=3)
    runner = loop.scheduler()
    loop.run_until_done(runner, timeout=150)
    failed = [r for r in loop.standin.requests if r.status in (429, 500)]
    assert failed, "no fault was injected"
    check_exactly_once(loop, max_retries=3)
    with loop.engine.connect() as conn:
        deliveries = conn.execute(sa.select(sa.func.sum(t.stripe_events.c.deliveries))).scalar()
        events = conn.execute(sa.select(sa.func.count()).select_from(t.stripe_events)).scalar()
    assert deliveries > events  # duplicates arrived, and were processed once


class _Inbox:
    """An SMTP server (aiosmtpd) and a webhook receiver on 127.0.0.1, keeping what arrives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.emails: list[email.message.Message] = []
        self.posts: list[tuple[dict, dict]] = []
        inbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                inbox.emails.append(email.message_from_bytes(envelope.content))
                return "250 OK"

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                inbox.posts.append((dict(self.headers), json.loads(body), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                return

        with socket.socket() as probe:  # aiosmtpd checks its own port, so name one
            probe.bind(("127.0.0.1", 0))
            self.smtp_port = probe.getsockname()[1]
        self.smtp = Controller(Handler(), hostname="127.0.0.1", port=self.smtp_port)
        self.smtp.start()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/messages"

    def close(self) -> None:
        self.smtp.stop()
        self.http.shutdown()


def test_messages_go_out_once_through_smtp_and_signed_webhooks(make_loop):
    branding = {"display_name": "Yoga Marketplace", "email_from": "billing@yoga.example"}
    loop = make_loop(12, max_retries=2, config={"branding": branding})
    inbox = _Inbox()
    secret = "whsec_messages"
    hook = SignedWebhook(inbox.hook_url, secret)
    channels = {
        "email": SmtpEmail("127.0.0.1", inbox.smtp_port, "fallback@platform.invalid"),
        "sms": hook,
        "in_app": hook,
    }
    runner = loop.scheduler(channels)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        loop.wait_until_done(timeout=120)
        deadline = time.monotonic() + 20  # the last messages leave on the next ticks
        while time.monotonic() < deadline:
            with loop.engine.connect() as conn:
                outbox = pd.read_sql(sa.select(t.outbox), conn)
            if not outbox["status"].isin(["pending", "sending"]).any():
                break
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
        inbox.close()
    assert len(outbox) > 0, "the policy sent no message at all"
    assert (outbox["status"] == "sent").all(), outbox[["channel", "status"]]
    emails = outbox[outbox["channel"] == "email"]
    assert len(inbox.emails) == len(emails)
    assert len({m["Message-ID"] for m in inbox.emails}) == len(inbox.emails)
    assert all(m["From"] == "Yoga Marketplace <billing@yoga.example>" for m in inbox.emails)
    assert {m["To"] for m in inbox.emails} <= {
        f"{c}@customers.invalid" for c in loop.payments["customer_id"]
    }
    hooks = outbox[outbox["channel"] != "email"]
    assert len(inbox.posts) == len(hooks)
    for headers, body, raw in inbox.posts:
        t_, v1 = (part.split("=", 1)[1] for part in headers["Reclaim-Signature"].split(","))
        assert v1 == signature(raw, secret, int(t_)).split("v1=")[1]
        assert headers["Idempotency-Key"] == body["key"]
    with loop.engine.connect() as conn:
        logged = pd.read_sql(sa.select(t.messages), conn)
    assert sorted(logged["message_id"]) == sorted(outbox["message_key"])
    assert (outbox.groupby("payment_id")["sender"].nunique() == 1).all()


def test_a_deauthorized_account_gets_no_more_retries(make_loop):
    loop = make_loop(8, max_retries=2)
    account = loop.payments["account_id"].iloc[0]
    loop.standin.send_event(
        {
            "id": "evt_deauth_1",
            "object": "event",
            "type": "account.application.deauthorized",
            "created": int(loop.clock.now().timestamp()),
            "livemode": False,
            "account": account,
            "data": {"object": {"id": "ca_reclaim", "object": "application"}},
        }
    )
    runner = loop.scheduler()
    loop.run_until_done(runner, timeout=120)
    check_exactly_once(loop, max_retries=2)
    assert not [k for k in loop.standin.executed if f"-{account}-" in k]
    others = loop.payments[loop.payments["account_id"] != account]
    assert any(f"-{a}-" in k for a in others["account_id"] for k in loop.standin.executed)


def test_a_rejected_key_blocks_the_account_and_raises_an_alert():
    payment = {
        "payment_id": "pi_direct_1",
        "object": "payment_intent",
        "account_id": "acct_gone",
        "charge_model": "direct",
    }
    with StripeStandIn(blocked_accounts={"acct_gone"}) as standin:
        client = stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url})
        with pytest.raises(stripe_actions.AccountBlocked, match="acct_gone"):
            stripe_actions.retry_payment(client, payment, 1)
        assert standin.executed == {}


def test_jobs_that_came_due_while_the_lease_lapsed_are_run_later(make_loop):
    loop = make_loop(8, max_retries=2)
    # dropped jobs come back at the next reconciliation: every second here, not every 15 s
    # (a simulated fortnight at the loop's clock)
    runner = loop.scheduler(reconcile_seconds=1.0)
    refusals = {"left": 6}
    real_held = runner.lease.held

    def flaky_held() -> bool:  # the first due jobs find the lease lapsed, and are dropped
        if refusals["left"] > 0:
            refusals["left"] -= 1
            return False
        return real_held()

    runner.lease.held = flaky_held
    loop.run_until_done(runner, timeout=90)
    assert refusals["left"] == 0
    check_exactly_once(loop, max_retries=2)


def test_a_card_updated_after_the_decision_gets_a_new_decision(make_loop):
    loop = make_loop(6, max_retries=2)
    # a lease that outlasts the waits below: this test is about card updates, and a 2 s lease
    # lapsing on a slow machine made it answer "not_leader" instead
    runner = loop.scheduler(lease_seconds=600)
    assert runner.lease.acquire()
    deadline = time.monotonic() + 30
    while loop.stored_payments() < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runner.plan() == 6  # decided, not yet carried out: no job runner is started
    actions = loop.actions().set_index("payment_id")
    pid = actions.index[actions["status"] == "scheduled"][0]
    customer = loop.payments.set_index("payment_id").loc[pid, "customer_id"]
    loop.standin.send_event(
        {
            "id": "evt_card_1",
            "object": "event",
            "type": "payment_method.automatically_updated",
            "created": int(loop.clock.now().timestamp()),
            "livemode": False,
            "data": {
                "object": {
                    "id": "pm_1",
                    "object": "payment_method",
                    "customer": customer,
                    "card": {"brand": "visa", "funding": "debit", "country": "US"},
                }
            },
        }
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with loop.engine.connect() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(t.card_updates)).scalar():
                break
        time.sleep(0.1)
    action_id = actions.loc[pid, "action_id"]
    assert runner.execute(action_id) == "replan"
    assert loop.standin.executed == {}  # nothing charged on the old decision
    account = actions.loc[pid, "account_id"]
    assert runner.pending_decisions() == [((account, pid), 0, 1)]  # decided again
    runner.plan()
    assert f"{account}:{pid}:0:1" in set(loop.actions()["action_id"])


class _Recorder:
    """A channel that keeps what it was handed."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message) -> None:
        self.sent.append(message)


def test_no_message_goes_to_a_customer_whose_payment_stripe_says_is_paid_or_closed(make_loop):
    loop = make_loop(12, max_retries=2)
    recorder = _Recorder()
    runner = loop.scheduler({"email": recorder, "sms": recorder, "in_app": recorder}, 600)
    assert runner.lease.acquire()
    deadline = time.monotonic() + 30
    while loop.stored_payments() < 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runner.plan() == 12
    with loop.engine.connect() as conn:
        outbox = pd.read_sql(sa.select(t.outbox), conn)
    assert len(outbox) >= 3, "the policy messaged too few customers for this test"
    paid, voided = outbox["payment_id"].iloc[0], outbox["payment_id"].iloc[1]
    # Stripe knows what the store does not (the customer paid, the platform voided; the
    # events are late or lost)
    rows = loop.payments.set_index("payment_id")
    for pid, status in ((paid, "paid"), (voided, "void")):
        row = rows.loc[pid]
        resource = "invoices" if row["object"] == "invoice" else "payment_intents"
        if resource == "payment_intents":
            status = {"paid": "succeeded", "void": "canceled"}[status]
        scope = stripe_actions.scope({**row.to_dict(), "payment_id": pid})
        loop.standin.objects[scope][resource][pid]["status"] = status
    counts = runner.send()
    assert counts == len(outbox)
    with loop.engine.connect() as conn:
        after = pd.read_sql(sa.select(t.outbox), conn).set_index("payment_id")
        logged = pd.read_sql(sa.select(t.messages), conn)
    assert after.loc[paid, "status"] == "cancelled" and after.loc[paid, "error"] == "already_paid"
    assert after.loc[voided, "status"] == "cancelled" and after.loc[voided, "error"] == "closed"
    others = after.drop(index=[paid, voided])
    assert (others["status"] == "sent").all()
    assert sorted(m.payment_id for m in recorder.sent) == sorted(others.index)
    assert set(logged["payment_id"]) == set(others.index)  # a cancelled message is no message
