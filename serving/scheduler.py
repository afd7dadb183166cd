"""The scheduler: carries out every decision, safely, and asks for the next one.

One process (``reclaim scheduler``) leads at a time (:mod:`reclaim.serving.leader`); a second
one waits. The leader runs APScheduler 3 with its job store in the operational database and:

1. **plans**: every payment whose last attempt failed and that has no action for that failure
   gets a decision from the scoring API (``POST /v1/decisions/batch``); the action is written
   to ``scheduled_actions`` — with its message in the outbox, in the same transaction — and a
   job is added for the retry time. Action ids are ``<payment>:<after attempt>:<n>``, so a
   decision point planned twice is one row, and a payment has at most one open action.
2. **acts** when a job comes due, after re-checking the payment: already paid? account blocked,
   opted out? card updated since the decision (then it asks again)? inside the recovery window
   and the network caps, and past the minimum gap (else it waits)? Then it marks the action
   ``in_flight``, retries through :mod:`reclaim.serving.stripe_actions` under the attempt's
   idempotency key, and records the attempt as a contract row.
3. **sends** the outbox (:mod:`reclaim.serving.outbox`).

Crash safety: ``scheduled_actions`` is the record, the job store only a timer. A new leader
re-adds a job for every action still ``scheduled`` or ``in_flight`` (APScheduler drops a
one-off job from its store when it starts running it), and an ``in_flight`` action runs again
under the same idempotency key, so Stripe answers the repeat from its record of the first
call: every action is carried out once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import pandas as pd
import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine

from reclaim import rules, vocab
from reclaim.account_config import constraint_row
from reclaim.policy import summarize_row
from reclaim.serving import outbox, stripe_actions
from reclaim.serving.channels import Channel, ChannelError
from reclaim.serving.clock import Clock, SimulatedClock
from reclaim.serving.leader import Lease
from reclaim.serving.metrics import SchedulerMetrics
from reclaim.serving.store import configs
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.webhooks import block_account

log = logging.getLogger(__name__)

OPEN = ("scheduled", "in_flight")
PLAN_BATCH = 200  # decisions asked per tick: keeps a tick well inside the lease
ACT_BATCH = 200  # due actions re-checked and recorded together
RECONCILE_SECONDS = 15.0

# APScheduler stores a job's function by name, so jobs call this module-level function, which
# hands them to the scheduler of this process.
_ACTIVE: Scheduler | None = None


def run_action(action_id: str) -> None:
    """APScheduler's entry point for a due action: hands it to this process's batches."""
    if _ACTIVE is None:  # pragma: no cover - only when a job outlives its scheduler
        log.warning("action %s came due with no scheduler running", action_id)
        return
    _ACTIVE.submit(action_id)


def action_row(
    payment_id: str,
    account_id: str,
    after_attempt: int,
    n: int,
    decided_at: datetime,
    retry_at: datetime | None,
    model_version: str | None,
    propensity: float | None,
    no_retry_reason: str | None = None,
) -> dict[str, Any]:
    """A ``scheduled_actions`` row: the ``n``-th plan of a payment's decision point after
    attempt ``after_attempt`` — a retry due at ``retry_at`` under its idempotency key, or, with
    no ``retry_at``, done at once as "no retry"."""
    attempt = after_attempt + 1
    return {
        "action_id": f"{account_id}:{payment_id}:{after_attempt}:{n}",
        "payment_id": payment_id,
        "account_id": account_id,
        "after_attempt": after_attempt,
        "decided_at": decided_at,
        "model_version": model_version,
        "propensity": propensity,
        "retry_at": retry_at,
        "status": "scheduled" if retry_at else "done",
        "attempt_number": attempt if retry_at else None,
        "idempotency_key": stripe_actions.idempotency_key(account_id, payment_id, attempt)
        if retry_at
        else None,
        "outcome": None if retry_at else f"no_retry:{no_retry_reason}",
        "tries": 0,
        "updated_at": datetime.now(UTC),
    }


@functools.cache
def _pending_statement(recent: bool) -> sa.Select:
    """The query of :meth:`Scheduler.pending_decisions`, built once (a driver of simulated
    time asks it thousands of times); parameters ``limit`` and, if ``recent``, ``since``."""
    at, a, p = t.attempts.c, t.scheduled_actions.c, t.payments.c
    last = sa.select(at.account_id, at.payment_id, sa.func.max(at.attempt_number).label("n"))
    if recent:
        since = sa.bindparam("since", type_=at.attempted_at.type)
        touched = (
            sa.select(at.account_id, at.payment_id)
            .where(at.attempted_at >= since)
            .union(sa.select(a.account_id, a.payment_id).where(a.status == "replan"))
        )
        last = last.where(sa.tuple_(at.account_id, at.payment_id).in_(touched))
    last = last.group_by(at.account_id, at.payment_id).subquery()

    def mine(c: Any) -> Any:  # rows about the same payment as ``last``'s row
        return sa.and_(c.account_id == last.c.account_id, c.payment_id == last.c.payment_id)

    recovered = sa.exists().where(mine(at), at.outcome == "succeeded")
    acted = sa.exists().where(
        mine(a),
        sa.or_(a.status.in_(OPEN), sa.and_(a.after_attempt == last.c.n, a.status != "replan")),
    )
    replans = (
        sa.select(sa.func.count()).where(mine(a), a.after_attempt == last.c.n).scalar_subquery()
    )
    return (
        sa.select(last.c.account_id, last.c.payment_id, last.c.n, replans)
        .join(t.payments, mine(p))
        .where(~recovered, ~acted, p.closed_at.is_(None))
        .where(p.account_id.not_in(sa.select(t.account_status.c.account_id)))
        .order_by(last.c.payment_id, last.c.account_id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )


class Decider(Protocol):
    def decide(self, refs: list[repo.Ref], now: datetime) -> list[dict[str, Any]]:
        """The scoring API's decisions for stored payments (account, id), at ``now``."""


class ScoringClient:
    """The scoring API over HTTP, with a scheduler key."""

    def __init__(self, url: str, api_key: str, timeout: float = 60.0):
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def decide(self, refs: list[repo.Ref], now: datetime) -> list[dict[str, Any]]:
        body = {
            "decisions": [
                {"account_id": a, "payment_id": p, "now": now.isoformat()} for a, p in refs
            ]
        }
        response = self.http.post("/v1/decisions/batch", json=body)
        response.raise_for_status()
        return response.json()["decisions"]


class NoRetry:
    """A decider that answers "no retry, no message" at once for every payment: for measuring
    the scheduler without the scoring API, and in tests. ``asked`` lists the payments asked."""

    def __init__(self) -> None:
        self.asked: list[repo.Ref] = []

    def decide(self, refs: list[repo.Ref], now: datetime) -> list[dict[str, Any]]:
        self.asked += refs
        return [
            {
                "account_id": a,
                "payment_id": p,
                "decided_at": now.isoformat(),
                "retry": None,
                "no_retry_reason": "policy",
                "channel": None,
                "propensity": 1.0,
                "model_version": "no-retry",
            }
            for a, p in refs
        ]


@dataclass
class SchedulerStats:
    planned: int = 0
    retries: int = 0
    skipped: int = 0
    transient: int = 0
    blocked_accounts: int = 0


class Scheduler:
    """Plans, acts and sends, while it holds the lease.

    Parameters
    ----------
    engine
        The operational store.
    stripe_client
        The platform's ``StripeClient``.
    decider
        Where decisions come from (:class:`ScoringClient` in production).
    channels
        Message channels by name (``email``, ``sms``, ``in_app``).
    clock
        Real or accelerated time (:class:`~reclaim.serving.clock.Clock`), or simulated time
        (:class:`~reclaim.serving.clock.SimulatedClock`) driven through :meth:`work_due`.
    lease
        The leader lease.
    network_rules
        Hard limits re-checked before every retry.
    workers
        Actions carried out at once.
    config_cache
        Where the accounts' configurations are read (default: trusted for 5 seconds, as the
        API's ``RECLAIM_CONFIG_CACHE_SECONDS``).
    """

    def __init__(
        self,
        engine: Engine,
        stripe_client: stripe.StripeClient,
        decider: Decider,
        channels: Mapping[str, Channel],
        clock: Clock | SimulatedClock,
        lease: Lease,
        network_rules: rules.NetworkRules | None = None,
        workers: int = 8,
        poll_seconds: float = 0.5,
        metrics: SchedulerMetrics | None = None,
        config_cache: configs.ConfigCache | None = None,
    ):
        self.engine, self.stripe, self.decider = engine, stripe_client, decider
        self.configs = config_cache or configs.ConfigCache(5.0)
        self.channels, self.clock, self.lease = channels, clock, lease
        self.rules = network_rules or rules.NetworkRules()
        self.workers, self.poll_seconds = workers, poll_seconds
        self.metrics = metrics or SchedulerMetrics()
        self.stats = SchedulerStats()
        # actions queued or being carried out in this process, and the queue of due ones
        self._claimed: set[str] = set()
        self._due: list[str] = []
        self._due_ready = threading.Condition()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="reclaim-stripe")
        self._draining: tuple[threading.Thread, threading.Event] | None = None
        self._reconciled = 0.0
        self._send_again = True  # whatever an earlier process left in the outbox
        self._jobs: Any = None  # the APScheduler BackgroundScheduler, while leading

    # --- leading -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Lead (or wait to lead) until ``stop`` is set."""
        global _ACTIVE
        _ACTIVE = self
        standing_by = False
        leading = threading.Event()
        self._renew(leading)  # know at once whether this process leads
        # The lease is renewed on its own thread, so that no long piece of work (a reconcile
        # of thousands of jobs, a slow planning tick) lets it lapse under a working leader.
        beat = threading.Thread(
            target=self._keep_lease, args=(stop, leading), name="reclaim-lease", daemon=True
        )
        beat.start()
        try:
            while not stop.is_set():
                if leading.is_set():
                    if self._jobs is None:
                        log.warning("leading as %s", self.lease.holder)
                        self._start_jobs()
                    self.tick()
                    if time.monotonic() - self._reconciled > RECONCILE_SECONDS:
                        added = self.reconcile(missing_only=True)
                        if added:
                            log.warning("re-added %d dropped job(s)", added)
                elif self._jobs is not None:
                    log.warning("lost the scheduler lease; standing by")
                    self._stop_jobs()
                elif not standing_by:
                    log.warning("standing by: another scheduler leads")
                    standing_by = True
                stop.wait(self.poll_seconds)
        finally:
            stop.set()
            beat.join()
            self._stop_jobs()
            if self.lease.held():
                self.lease.release()
            _ACTIVE = None

    def _keep_lease(self, stop: threading.Event, leading: threading.Event) -> None:
        """Renew the lease every quarter of its length until ``stop``."""
        while not stop.wait(self.lease.ttl / 4):
            self._renew(leading)

    def _renew(self, leading: threading.Event) -> None:
        """Take or renew the lease once; ``leading`` says who won. Actions themselves check
        :meth:`Lease.held`, which lapses on its own if renewal stalls."""
        try:
            won = self.lease.acquire()
        except Exception:  # a database blip: try again; the lease lapses meanwhile
            log.exception("the scheduler lease could not be renewed")
            won = False
        if won:
            leading.set()
        else:
            leading.clear()

    def _start_jobs(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        store = SQLAlchemyJobStore(engine=self.engine)
        self._job_table = store.jobs_t
        self._jobs = BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": JobExecutor(2)},  # jobs only queue their action
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=UTC,
        )
        self._jobs.start()
        stop = threading.Event()
        drain = threading.Thread(target=self._drain, args=(stop,), name="reclaim-act", daemon=True)
        drain.start()
        self._draining = drain, stop
        n = self.reconcile()
        log.info("leading: %d open action(s) scheduled", n)

    def _stop_jobs(self) -> None:
        if self._jobs is not None:
            self._jobs.shutdown(wait=True)
            self._jobs = None
        if self._draining is not None:
            drain, stop = self._draining
            stop.set()
            drain.join()
            self._draining = None

    def reconcile(self, missing_only: bool = False) -> int:
        """A job for every open action: all of them when leadership starts (after a crash, or
        for a new leader); with ``missing_only``, those whose job is gone (a job that came due
        while the lease had lapsed is dropped by APScheduler without running). Actions running
        in this process are left alone. Returns how many jobs were added."""
        if self._jobs is None:
            return 0
        a = t.scheduled_actions.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(a.action_id, a.retry_at).where(a.status.in_(OPEN))).all()
        with self._due_ready:
            running = set(self._claimed)
        have: set[str] = set()
        if missing_only:  # one query for the ids, rather than loading every job
            with self.engine.connect() as conn:
                have = set(conn.execute(sa.select(self._job_table.c.id)).scalars())
        added = 0
        for action_id, due in rows:
            if action_id in running or action_id in have:
                continue
            self._schedule(action_id, repo.aware(due))
            added += 1
        self._reconciled = time.monotonic()
        return added

    def _schedule(self, action_id: str, due: datetime) -> None:
        if self._jobs is None:
            return  # not leading: the next leader reconciles
        self._jobs.add_job(
            run_action,
            "date",
            run_date=self.clock.wall(due),
            args=[action_id],
            id=action_id,
            replace_existing=True,
        )

    def tick(self) -> None:
        """One round of planning and sending."""
        self.plan()
        self.send()

    def send(self) -> int:
        """Send what the outbox holds; returns how many messages it handled."""
        sent = outbox.dispatch(
            self.engine,
            self.channels,
            self.clock.now,
            recipient=self._recipient,
            still_open=self._still_open,
        )
        for result, n in sent.items():
            self.metrics.messages.labels(result).inc(n)
        self._send_again = bool(sent.get("retry"))
        return sum(sent.values())

    # --- planning ------------------------------------------------------------------------
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
            rows = conn.execute(_pending_statement(since is not None), params)
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

    # --- acting --------------------------------------------------------------------------
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
                stripe_actions.retry_payment,
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

    def recheck(
        self,
        actions: list[dict[str, Any]],
        history: Mapping[
            repo.Ref, tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]
        ],
        now: datetime,
    ) -> list[tuple[str, Any] | None]:
        """Per action, why it must not run now: ``("cancelled", reason)``, ``("replan",
        reason)`` or ``("wait", until)``; None when it may. ``history`` holds the payments'
        stored rows (``repo.load_rows``); each payment has at most one open action. The rules
        are the API's and the simulator's (``rules.limits_row``, equal to ``rules.limits``)."""
        account_ids = list({x["account_id"] for x in actions})
        customers = {key: rows[0]["customer_id"] for key, rows in history.items()}
        with self.engine.connect() as conn:
            blocked = set(
                conn.execute(
                    sa.select(t.account_status.c.account_id).where(
                        t.account_status.c.account_id.in_(account_ids)
                    )
                ).scalars()
            )
            c = t.card_updates.c
            card_updated: dict[str, datetime] = dict(
                conn.execute(
                    sa.select(c.customer_id, sa.func.max(c.updated_at))
                    .where(c.customer_id.in_(list(set(customers.values()))))
                    .group_by(c.customer_id)
                ).all()
            )
        config = self.configs.effective(self.engine, account_ids)
        verdicts: list[tuple[str, Any] | None] = [None] * len(actions)
        later = now + timedelta(seconds=1)
        for i, action in enumerate(actions):
            pid = repo.ref(action)
            if pid not in history:
                verdicts[i] = ("cancelled", "unknown_payment")
                continue
            if action["account_id"] in blocked:
                verdicts[i] = ("cancelled", "account_blocked")
                continue
            updated = card_updated.get(customers[pid])
            if (
                updated is not None
                and repo.aware(action["decided_at"]) < repo.aware(updated) <= now
            ):
                verdicts[i] = ("replan", "card_updated")
                continue
            payment, attempts, messages = history[pid]
            if payment.get("closed_at") is not None:
                verdicts[i] = ("cancelled", "payment_closed")
                continue
            state = summarize_row(payment, attempts, messages, now)
            own = constraint_row(config[payment["account_id"]])
            lim = rules.limits_row(payment, state, now, self.rules, own)
            last = max(a["attempt_number"] for a in attempts)
            if lim["blocked"]:
                verdicts[i] = ("cancelled", lim["blocked"])
            elif last != action["after_attempt"]:
                verdicts[i] = ("cancelled", "superseded")  # a newer attempt: plan from it
            elif lim["earliest_retry_at"] > later:
                verdicts[i] = ("wait", lim["earliest_retry_at"])
        return verdicts

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

    # --- messages ------------------------------------------------------------------------
    def _still_open(self, key: repo.Ref) -> str | None:
        """Why a payment needs no message any more, asked of Stripe just before one is sent
        (``already_paid``, ``closed``; ``paid`` when the store already knows), or None. A
        customer who paid, or whose invoice was voided, is never dunned: an event saying so
        may be late or lost."""
        payment = repo.load_payments(self.engine, [key]).get(key)
        if payment is None:
            return "unknown_payment"
        if payment["closed_at"] is not None:
            return "closed"
        if payment["recovered"]:  # kept by the store's triggers as attempts arrive
            return "paid"
        try:
            return stripe_actions.still_collectible(self.stripe, payment)
        except stripe_actions.Transient as exc:
            raise ChannelError(str(exc)) from exc
        except stripe_actions.AccountBlocked as exc:
            with self.engine.begin() as conn:
                block_account(conn, exc.account_id, exc.reason, str(exc))
            return f"account_{exc.reason}"

    def _recipient(self, channel: str, account_id: str, customer_id: str) -> str | None:
        """The customer's email, from Stripe, where the channel needs it."""
        if channel != "email":
            return None
        with self.engine.connect() as conn:
            p = t.payments.c
            model = conn.execute(
                sa.select(p.charge_model)
                .where(p.account_id == account_id, p.customer_id == customer_id)
                .limit(1)
            ).scalar()
        options = {"stripe_account": account_id} if model == "direct" else {}
        try:
            customer = self.stripe.v1.customers.retrieve(customer_id, None, options)
        except stripe.StripeError as exc:
            log.warning("customer %s not read: %s", customer_id, exc)
            return None
        return customer.to_dict().get("email")


def from_settings(settings: Any) -> Scheduler:
    """A scheduler wired from :class:`reclaim.settings.Settings`; raises ValueError naming a
    missing secret."""
    from reclaim.serving.channels import SignedWebhook, SmtpEmail
    from reclaim.serving.leader import holder_id
    from reclaim.serving.store.migrate import upgrade

    if settings.scoring_api_key is None:
        raise ValueError("RECLAIM_SCORING_API_KEY is not set: a scheduler key of the scoring API")
    upgrade(settings.database_url)
    engine = repo.make_engine(settings.database_url)
    channels: dict[str, Channel] = {
        "email": SmtpEmail(settings.smtp_host, settings.smtp_port, settings.email_from)
    }
    if settings.message_webhook_url:
        if settings.message_webhook_secret is None:
            raise ValueError("RECLAIM_MESSAGE_WEBHOOK_SECRET is not set: it signs SMS and in-app")
        hook = SignedWebhook(
            settings.message_webhook_url, settings.message_webhook_secret.get_secret_value()
        )
        channels |= {"sms": hook, "in_app": hook}
    clock = Clock(settings.clock_speed, settings.clock_origin, settings.clock_wall_origin)
    if settings.clock_origin is not None and settings.clock_wall_origin is None:
        raise ValueError("RECLAIM_CLOCK_ORIGIN needs RECLAIM_CLOCK_WALL_ORIGIN")
    return Scheduler(
        engine,
        settings.stripe_client(),
        ScoringClient(settings.scoring_url, settings.scoring_api_key.get_secret_value()),
        channels,
        clock,
        Lease(engine, holder_id(), ttl=settings.scheduler_lease_seconds),
        workers=settings.scheduler_workers,
        config_cache=configs.ConfigCache(settings.config_cache_seconds),
    )
