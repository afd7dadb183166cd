"""Acting: due actions, in batches, are re-checked, marked ``in_flight`` before Stripe hears
of them, retried through :mod:`reclaim.serving.stripe_actions` under their idempotency keys,
and recorded as contract attempts with their actions done, in one transaction."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from reclaim import logs, vocab
from reclaim.serving import stripe_actions
from reclaim.serving.scheduler.records import ACT_BATCH, OPEN
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.webhooks import block_account

T = TypeVar("T")

log = logging.getLogger(__name__)


class Acting:
    """The :class:`~reclaim.serving.scheduler.core.Scheduler`'s actions."""

    def submit(self, action_id: str) -> None:
        """Queue a due action for the next batch (APScheduler's jobs call this)."""
        with self._due_ready:
            if action_id in self._claimed:
                return
            self._claimed.add(action_id)
            self._due.append(action_id)
            self._due_ready.notify()

    def _drain(self, stop: threading.Event) -> None:
        """Carry out queued actions in batches until ``stop``: the re-check and the recording
        cost the same for one payment as for hundreds, so a backlog clears in a few batches."""
        while not stop.is_set():
            with self._due_ready:
                if not self._due:
                    self._due_ready.wait(0.2)
                batch, self._due = self._due[:ACT_BATCH], self._due[ACT_BATCH:]
            if not batch:
                continue
            try:
                self._act(batch)
            except Exception:  # the actions stay open; reconcile gives them new jobs
                log.exception("a batch of %d action(s) failed", len(batch))
            finally:
                with self._due_ready:
                    self._claimed.difference_update(batch)
        with self._due_ready:  # not leading any more: the next leader reconciles these
            self._claimed.difference_update(self._due)
            self._due = []

    def execute(self, action_id: str) -> str:
        """Carry out one due action now; returns what became of it."""
        return self.execute_many([action_id])[action_id]

    def execute_many(self, action_ids: list[str]) -> dict[str, str]:
        """Carry out due actions now, as one batch; returns what became of each."""
        with self._due_ready:
            mine = [a for a in dict.fromkeys(action_ids) if a not in self._claimed]
            self._claimed.update(mine)
        try:
            outcomes = self._act(mine)
        finally:
            with self._due_ready:
                self._claimed.difference_update(mine)
        return {a: outcomes.get(a, "already_running") for a in action_ids}

    def _act(self, action_ids: list[str]) -> dict[str, str]:
        outcomes = self._act_unmetered(action_ids)
        for outcome in outcomes.values():
            self.metrics.actions.labels(outcome).inc()
        return outcomes

    def _act_unmetered(self, action_ids: list[str]) -> dict[str, str]:
        if not self.lease.held():
            return dict.fromkeys(action_ids, "not_leader")  # the next leader reconciles them
        a = t.scheduled_actions.c
        with self.engine.connect() as conn:
            rows = (
                conn.execute(sa.select(t.scheduled_actions).where(a.action_id.in_(action_ids)))
                .mappings()
                .all()
            )
        actions = [dict(r) for r in rows if r["status"] in OPEN]
        outcomes = dict.fromkeys(action_ids, "gone")
        if not actions:
            return outcomes
        now, wall = self.clock.now(), datetime.now(UTC)
        for action in actions:
            if action["retry_at"] is not None:
                due = self.clock.wall(repo.aware(action["retry_at"]))
                self.metrics.delay.observe(max((wall - due).total_seconds(), 0.0))
        history = repo.load_rows(self.engine, [repo.ref(x) for x in actions])
        go = []
        verdicts = self.recheck(actions, history, now)
        for action, verdict in zip(actions, verdicts, strict=True):
            if verdict is None:
                go.append(action)
                continue
            kind, detail = verdict
            outcomes[action["action_id"]] = kind
            if kind == "wait":  # the record says when, so a reconcile or a driver finds it
                self._set(action["action_id"], retry_at=detail)
                self._schedule(action["action_id"], detail)
                continue
            self._set(action["action_id"], status=kind, outcome=detail)
            self.stats.skipped += 1
        if not go:
            return outcomes
        with self.engine.begin() as conn:  # in flight before Stripe hears of it: see the module
            conn.execute(
                sa.update(t.scheduled_actions)
                .where(a.action_id == sa.bindparam("id"))
                .values(status="in_flight", tries=sa.bindparam("tries"), updated_at=wall),
                [{"id": x["action_id"], "tries": x["tries"] + 1} for x in go],
            )
        calls = {
            self._pool.submit(
                _about(x, stripe_actions.retry_payment),
                self.stripe,
                history[repo.ref(x)][0],
                x["attempt_number"],
            ): x
            for x in go
        }
        finished: list[tuple[dict[str, Any], stripe_actions.ChargeResult]] = []
        flushed = time.monotonic()
        for call in as_completed(calls):
            action = calls[call]
            outcomes[action["action_id"]] = self._charged(action, call, now, finished)
            if finished and (len(finished) >= ACT_BATCH // 4 or time.monotonic() - flushed > 0.5):
                self._record(finished, now)
                finished, flushed = [], time.monotonic()
        if finished:
            self._record(finished, now)
        return outcomes

    def _charged(
        self,
        action: dict[str, Any],
        call: Future[stripe_actions.ChargeResult],
        now: datetime,
        finished: list[tuple[dict[str, Any], stripe_actions.ChargeResult]],
    ) -> str:
        """What became of one Stripe call: a result to record (added to ``finished``), a
        transient failure to try again later under the same key, or a blocked account."""
        action_id = action["action_id"]
        try:
            result = call.result()
        except stripe_actions.Transient as exc:
            later = now + timedelta(minutes=15)
            with _bound(action):
                log.warning("%s; trying again at %s under the same key", exc, later)
            self._set(action_id, status="scheduled", retry_at=later)
            self._schedule(action_id, later)
            self.stats.transient += 1
            return "transient"
        except stripe_actions.AccountBlocked as exc:
            with self.engine.begin() as conn:
                block_account(conn, exc.account_id, exc.reason, str(exc))
            self._set(action_id, status="cancelled", outcome=f"account_{exc.reason}")
            self.stats.blocked_accounts += 1
            self.metrics.alerts.labels(f"account_{exc.reason}").inc()
            return "blocked"
        finished.append((action, result))
        self.stats.retries += 1
        return result.outcome

    def _set(self, action_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t.scheduled_actions)
                .where(t.scheduled_actions.c.action_id == action_id)
                .values(**values, updated_at=datetime.now(UTC))
            )

    def _record(
        self,
        finished: list[tuple[dict[str, Any], stripe_actions.ChargeResult]],
        at: datetime,
    ) -> None:
        """The attempts as contract rows, and their actions done, in one transaction."""
        charged = [(x, r) for x, r in finished if r.outcome not in stripe_actions.NOT_CHARGED]
        ok = [r.outcome == "succeeded" for _, r in charged]
        policies = [f"reclaim@{x['model_version']}" for x, _ in charged]
        when = repo.aware(at).astimezone(UTC)
        rows = [
            {
                "account_id": x["account_id"],
                "payment_id": x["payment_id"],
                "attempt_number": x["attempt_number"],
                "attempted_at": when,
                "initiator": "merchant",
                "outcome": "succeeded" if s else "failed",
                "decline_code": None if s else r.decline_code,
                "advice_code": None if s else r.advice_code,
                "network_decline_code": r.network_decline_code,
                "network_advice_code": r.network_advice_code,
                "policy": policy,
                "propensity": None if x["propensity"] is None else float(x["propensity"]),
            }
            for (x, r), s, policy in zip(charged, ok, policies, strict=True)
        ]
        a, at_ = t.scheduled_actions.c, t.attempts.c
        with self.engine.begin() as conn:
            if charged:
                repo.insert_rows_ignoring(conn, t.attempts, rows)
                # The webhook may have recorded these attempts first: keep the decision's
                # fields, and Stripe's answer to the call itself (the decline as the card
                # error gave it), which the webhook's copy of the object may lack.
                conn.execute(
                    sa.update(t.attempts)
                    .where(at_.account_id == sa.bindparam("acct"))
                    .where(at_.payment_id == sa.bindparam("pid"))
                    .where(at_.attempt_number == sa.bindparam("n"))
                    .values(
                        policy=sa.bindparam("pol"),
                        propensity=sa.bindparam("prop"),
                        **{c: sa.bindparam(f"v_{c}") for c in vocab.DECLINE_FIELDS},
                    ),
                    [
                        {
                            "acct": row["account_id"],
                            "pid": row["payment_id"],
                            "n": row["attempt_number"],
                            "pol": row["policy"],
                            "prop": row["propensity"],
                            **{f"v_{c}": row[c] for c in vocab.DECLINE_FIELDS},
                        }
                        for row in rows
                    ],
                )
            conn.execute(
                sa.update(t.scheduled_actions)
                .where(a.action_id == sa.bindparam("id"))
                .values(status="done", outcome=sa.bindparam("out"), updated_at=datetime.now(UTC)),
                [{"id": x["action_id"], "out": r.outcome} for x, r in finished],
            )


def _bound(action: dict[str, Any]) -> Any:
    """Log lines about ``action`` carry its id, account and payment (``reclaim.logs``)."""
    return logs.bound(action_id=action["action_id"], account_id=action["account_id"],
                      payment_id=action["payment_id"])  # fmt: skip


def _about(action: dict[str, Any], fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run with :func:`_bound` ``action`` (in the pool's thread, where it runs)."""

    def run(*args: Any) -> T:
        with _bound(action):
            return fn(*args)

    return run
