"""The scheduler against the real API (uvicorn) and the Stripe stand-in over HTTP: every
decision carried out once, under the network rules, surviving crashes and faults."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from reclaim.serving.store import tables as t
from reclaim.simulator.stripe_standin import Faults


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
    loop = make_loop(12, max_retries=2)
    runner = loop.scheduler()
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        loop.wait_until_done(timeout=60)
    finally:
        stop.set()
        thread.join(30)
    actions = check_exactly_once(loop, max_retries=2)
    assert loop.stored_payments() == 12
    assert runner.stats.retries >= 12  # each payment retried at least once under a 2 cap
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


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


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
        out = _stop(second)
    assert "leading as" in out, out
    check_exactly_once(loop, max_retries=3)
    assert sum(loop.standin.executed.values()) > sum(killed_at.values())


def test_two_schedulers_started_at_once_never_both_act(make_loop):
    loop = make_loop(10, max_retries=2)
    both = [_scheduler_process(loop), _scheduler_process(loop)]
    try:
        loop.wait_until_done(timeout=120)
    finally:
        outputs = [_stop(p) for p in both]
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
    loop = make_loop(16, faults=faults, max_retries=3)
    runner = loop.scheduler()
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        loop.wait_until_done(timeout=150)
    finally:
        stop.set()
        thread.join(30)
    failed = [r for r in loop.standin.requests if r.status in (429, 500)]
    assert failed, "no fault was injected"
    check_exactly_once(loop, max_retries=3)
    with loop.engine.connect() as conn:
        deliveries = conn.execute(sa.select(sa.func.sum(t.stripe_events.c.deliveries))).scalar()
        events = conn.execute(sa.select(sa.func.count()).select_from(t.stripe_events)).scalar()
    assert deliveries > events  # duplicates arrived, and were processed once
