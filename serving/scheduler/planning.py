"""Planning: every payment whose last attempt failed gets a decision from the scoring API,
recorded as its action (with its message, in the same transaction); and the driver of
simulated time, which plans, acts and sends without APScheduler."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from reclaim.serving import outbox
from reclaim.serving.scheduler.records import ACT_BATCH, PLAN_BATCH, action_row, pending_statement
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t


class Planning:
    """The :class:`~reclaim.serving.scheduler.core.Scheduler`'s planning."""

    def pending_decisions(
        self, limit: int = 1000, since: datetime | None = None
    ) -> list[tuple[repo.Ref, int, int]]:
        """``((account_id, payment_id), after_attempt, n)`` for payments whose last attempt
        failed and that
        have no action for it (``n`` numbers re-plans of the same failure). One query: the
        database finds them. ``since``: only payments with an attempt at or after it, or an
        action to re-plan (a driver of simulated time knows nothing older is waiting)."""
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        with self.engine.connect() as conn:
            rows = conn.execute(pending_statement(since is not None), params)
            return [((acct, pid), int(n), int(k)) for acct, pid, n, k in rows]

    def plan(self, since: datetime | None = None) -> int:
        """Ask for and record decisions for every payment waiting for one (``since``: see
        :meth:`pending_decisions`)."""
        waiting = self.pending_decisions(PLAN_BATCH, since)
        if not waiting:
            return 0
        now = self.clock.now()
        decisions = self.decider.decide([key for key, _, _ in waiting], now)
        by_key = repo.load_payments(self.engine, [key for key, _, _ in waiting])
        branding = self.configs.effective(self.engine, {a for a, _ in by_key})
        due: list[tuple[str, datetime]] = []
        with self.engine.begin() as conn:
            for (key, after, n), d in zip(waiting, decisions, strict=True):
                payment = by_key[key]
                pid = key[1]
                retry_at = (d.get("retry") or {}).get("at_utc")
                retry_at = pd.Timestamp(retry_at).to_pydatetime() if retry_at else None
                row = action_row(
                    pid,
                    payment["account_id"],
                    after,
                    n,
                    pd.Timestamp(d["decided_at"]).to_pydatetime(),
                    retry_at,
                    d.get("model_version"),
                    d.get("propensity"),
                    d.get("no_retry_reason"),
                )
                action_id = row["action_id"]
                if not repo.insert_rows_ignoring(conn, t.scheduled_actions, [row]):
                    continue
                if d.get("channel"):
                    config = branding.get(payment["account_id"])
                    outbox.enqueue(
                        conn,
                        action_id,
                        payment,
                        d["channel"],
                        d.get("sender") or "platform",
                        d.get("propensity"),
                        config.branding.model_dump(mode="json", exclude_none=True)
                        if config is not None
                        else {},
                        now,
                        "authenticate"
                        if d.get("no_retry_reason") == "customer_action"
                        else "payment_failed",
                    )
                if retry_at:
                    due.append((action_id, retry_at))
        for action_id, at in due:
            self._schedule(action_id, at)
        self.stats.planned += len(waiting)
        return len(waiting)

    # --- driving in simulated time ---------------------------------------------------------
    def due_actions(self, now: datetime, limit: int = ACT_BATCH) -> list[str]:
        """Scheduled actions due at or before ``now``, earliest first."""
        a = t.scheduled_actions.c
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(a.action_id)
                    .where(a.status == "scheduled", a.retry_at <= now)
                    .order_by(a.retry_at, a.action_id)
                    .limit(limit)
                ).scalars()
            )

    def next_due(self) -> datetime | None:
        """When the earliest scheduled action is due, or None."""
        a = t.scheduled_actions.c
        with self.engine.connect() as conn:
            at = conn.execute(
                sa.select(sa.func.min(a.retry_at)).where(a.status == "scheduled")
            ).scalar()
        return None if at is None else repo.aware(at)

    def work_due(self, settle: Any = None) -> int:
        """Plan, act and send until nothing more is due at the clock's current time, without
        APScheduler: how a driver of simulated time runs the scheduler. ``settle()`` is called
        after each round (e.g. to wait until every webhook of it is delivered). Returns the
        number of rounds that did something."""
        rounds = 0
        while True:
            now = self.clock.now()
            # all that waited was planned in earlier rounds: only this moment's attempts (a
            # webhook's time is whole seconds) and re-plans can be waiting now
            planned = self.plan(since=now - timedelta(seconds=1))
            due = self.due_actions(now)
            if due:
                self.execute_many(due)
            if settle is not None:
                settle()
            # only planning fills the outbox: with nothing planned and nothing left to retry,
            # there is nothing to send
            sent = self.send() if planned or self._send_again else 0
            if not (planned or due or sent):
                return rounds
            rounds += 1
