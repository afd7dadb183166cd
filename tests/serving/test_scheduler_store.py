"""The scheduler's own queries and batched writes, on SQLite and PostgreSQL: due actions
re-checked and carried out as one batch through the official SDK against the stand-in, each
charged once, recorded as contract rows, and the payments left waiting for their next
decision found by the planner's query."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
import stripe

from reclaim import contract, vocab
from reclaim.serving.clock import Clock
from reclaim.serving.leader import Lease
from reclaim.serving.scheduler import NoRetry, Scheduler, action_row
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.webhooks import block_account
from reclaim.simulator import generate
from reclaim.simulator.stripe_export import to_stripe_objects
from reclaim.simulator.stripe_standin import StripeStandIn

N = 24


def _third_succeeds(scope, resource, obj, at) -> str | None:
    return None if hashlib.sha256(obj["id"].encode()).digest()[0] % 3 == 0 else "do_not_honor"


@pytest.fixture
def batch(engine):
    """N payments failed twelve days ago, each with a retry due now; a scheduler leading."""
    now = datetime.now(UTC).replace(microsecond=0)
    payments = generate(20, N, seed=4).payments.copy()
    payments["failed_at"] = pd.Timestamp(now - timedelta(days=12))
    tables = contract.ContractTables(
        payments, contract.first_failures(payments), contract.empty(contract.MESSAGES)
    )
    repo.save_contract(engine, tables)
    rows = [
        action_row(p.payment_id, p.account_id, 0, 0, now - timedelta(hours=1), now, "test", 0.5)
        for p in payments.itertuples()
    ]
    with engine.begin() as conn:
        conn.execute(t.scheduled_actions.insert(), rows)
    with StripeStandIn(outcome=_third_succeeds) as standin:
        standin.load(to_stripe_objects(tables))
        client = stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url})
        runner = Scheduler(engine, client, NoRetry(), {}, Clock(), Lease(engine, "test"))
        assert runner.lease.acquire()
        yield runner, payments, standin


def _actions(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.select(t.scheduled_actions), conn).set_index("action_id")


def test_due_actions_are_carried_out_once_as_one_batch(batch, engine):
    runner, payments, standin = batch
    ids = [
        f"{a}:{p}:0:0" for a, p in zip(payments["account_id"], payments["payment_id"], strict=True)
    ]
    blocked = payments["account_id"].iloc[0]
    with engine.begin() as conn:
        block_account(conn, blocked, "deauthorized", "test")
    blocked_ids = {
        f"{blocked}:{p}:0:0" for p in payments.loc[payments["account_id"] == blocked, "payment_id"]
    }

    hard = payments["decline_code"].map(
        lambda code: vocab.DECLINE_CODES[code].category is vocab.DeclineCategory.HARD
    )
    never = {
        f"{a}:{p}:0:0"
        for a, p in payments.loc[hard.to_numpy(), ["account_id", "payment_id"]].values
    } - blocked_ids

    outcomes = runner.execute_many(ids)

    assert {i for i, o in outcomes.items() if o == "gone"} == blocked_ids  # cancelled at once
    assert {i for i, o in outcomes.items() if o == "cancelled"} == never
    charged = {i for i, o in outcomes.items() if o in ("succeeded", "declined")}
    assert charged == set(ids) - blocked_ids - never
    assert set(standin.executed.values()) == {1} and len(standin.executed) == len(charged)
    actions = _actions(engine)
    assert set(actions.loc[list(never), "outcome"]) == {"hard_decline"}
    assert set(actions.loc[list(blocked_ids), "status"]) == {"cancelled"}
    assert (actions.loc[list(charged), "status"] == "done").all()
    assert (actions.loc[list(charged), "tries"] == 1).all()
    with engine.connect() as conn:
        retries = pd.read_sql(sa.select(t.attempts).where(t.attempts.c.attempt_number == 1), conn)
    assert sorted(
        f"{a}:{p}:0:0" for a, p in retries[["account_id", "payment_id"]].values
    ) == sorted(charged)
    assert set(retries["policy"]) == {"reclaim@test"}
    assert set(retries["propensity"]) == {0.5}
    declined = retries[retries["outcome"] == "failed"]
    assert set(declined["decline_code"]) == {"do_not_honor"}

    # a second delivery of the same jobs finds nothing open: nothing is charged again
    assert set(runner.execute_many(ids).values()) == {"gone"}
    assert set(standin.executed.values()) == {1}

    # what waits for a decision now: every declined payment, after its attempt 1
    waiting = runner.pending_decisions()
    keys = [tuple(k) for k in declined[["account_id", "payment_id"]].values]
    assert sorted(waiting) == sorted((k, 1, 0) for k in keys)
    assert runner.plan() == len(waiting)
    assert sorted(runner.decider.asked) == sorted(keys)
    assert runner.pending_decisions() == []


def test_an_action_too_soon_after_the_last_attempt_waits(batch, engine):
    runner, payments, standin = batch
    pid = payments["payment_id"].iloc[1]
    action = f"{payments['account_id'].iloc[1]}:{pid}:0:0"
    just_now = datetime.now(UTC) - timedelta(minutes=10)
    with engine.begin() as conn:
        conn.execute(
            sa.update(t.attempts)
            .where(t.attempts.c.payment_id == pid)
            .values(attempted_at=just_now)
        )
    assert runner.execute(action) == "wait"  # the one-hour minimum gap
    assert standin.executed == {}
    assert _actions(engine).loc[action, "status"] == "scheduled"


def test_the_leader_reports_late_due_work_and_a_standby_none(batch, engine):
    """Issue 29: what `ReclaimRetriesLate` and `ReclaimNoSchedulerLeads` alert on."""
    import threading

    runner, payments, _ = batch
    runner._watch_due()
    assert runner.metrics.due_late._value.get() == 0  # due now: not late yet
    with engine.begin() as conn:  # the scheduler was away: everything came due an hour ago
        conn.execute(sa.update(t.scheduled_actions).values(
            retry_at=datetime.now(UTC) - timedelta(hours=1)
        ))  # fmt: skip
    runner._due_watched = 0.0  # its next look (every 15 s of wall time)
    runner._watch_due()
    assert runner.metrics.due_late._value.get() == len(payments)
    assert 3500 < runner.metrics.oldest_due._value.get() < 3700 + 60
    runner._renew(threading.Event())
    assert runner.metrics.leading._value.get() == 1
    # another holder takes the lease (this one's lapsed): this process stands by, reports 0
    with engine.begin() as conn:
        conn.execute(sa.update(t.scheduler_leader).values(
            holder="other", expires_at=datetime.now(UTC) + timedelta(minutes=5)
        ))  # fmt: skip
    runner._renew(threading.Event())
    assert runner.metrics.leading._value.get() == 0
    assert runner.metrics.due_late._value.get() == 0
    assert runner.metrics.oldest_due._value.get() == 0
