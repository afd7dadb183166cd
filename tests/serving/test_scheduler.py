"""The scheduler against the real API (uvicorn) and the Stripe stand-in over HTTP: every
decision carried out once, under the network rules, surviving crashes and faults."""

from __future__ import annotations

import threading

import pandas as pd
import sqlalchemy as sa

from reclaim.serving.store import tables as t


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
