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

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import numpy as np
import pandas as pd
import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine

from reclaim import contract, rules
from reclaim.account_config import constraints
from reclaim.policy import DecisionBatch
from reclaim.serving import outbox, stripe_actions
from reclaim.serving.channels import Channel
from reclaim.serving.clock import Clock
from reclaim.serving.leader import Lease
from reclaim.serving.metrics import SchedulerMetrics
from reclaim.serving.store import configs
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.webhooks import block_account

log = logging.getLogger(__name__)

OPEN = ("scheduled", "in_flight")
PLAN_BATCH = 200  # decisions asked per tick: keeps a tick well inside the lease
RECONCILE_SECONDS = 15.0

# APScheduler stores a job's function by name, so jobs call this module-level function, which
# hands them to the scheduler of this process.
_ACTIVE: Scheduler | None = None


def run_action(action_id: str) -> None:
    """APScheduler's entry point for a due action."""
    if _ACTIVE is None:  # pragma: no cover - only when a job outlives its scheduler
        log.warning("action %s came due with no scheduler running", action_id)
        return
    _ACTIVE.execute(action_id)


class Decider(Protocol):
    def decide(self, payment_ids: list[str], now: datetime) -> list[dict[str, Any]]:
        """The scoring API's decisions for stored payments, at ``now``."""


class ScoringClient:
    """The scoring API over HTTP, with a scheduler key."""

    def __init__(self, url: str, api_key: str, timeout: float = 60.0):
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def decide(self, payment_ids: list[str], now: datetime) -> list[dict[str, Any]]:
        body = {"decisions": [{"payment_id": p, "now": now.isoformat()} for p in payment_ids]}
        response = self.http.post("/v1/decisions/batch", json=body)
        response.raise_for_status()
        return response.json()["decisions"]


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
        Real or accelerated time (:class:`~reclaim.serving.clock.Clock`).
    lease
        The leader lease.
    network_rules
        Hard limits re-checked before every retry.
    workers
        Actions carried out at once.
    """

    def __init__(
        self,
        engine: Engine,
        stripe_client: stripe.StripeClient,
        decider: Decider,
        channels: Mapping[str, Channel],
        clock: Clock,
        lease: Lease,
        network_rules: rules.NetworkRules | None = None,
        workers: int = 8,
        poll_seconds: float = 0.5,
        metrics: SchedulerMetrics | None = None,
    ):
        self.engine, self.stripe, self.decider = engine, stripe_client, decider
        self.channels, self.clock, self.lease = channels, clock, lease
        self.rules = network_rules or rules.NetworkRules()
        self.workers, self.poll_seconds = workers, poll_seconds
        self.metrics = metrics or SchedulerMetrics()
        self.stats = SchedulerStats()
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._reconciled = 0.0
        self._jobs: Any = None  # the APScheduler BackgroundScheduler, while leading

    # --- leading -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Lead (or wait to lead) until ``stop`` is set."""
        global _ACTIVE
        _ACTIVE = self
        standing_by = False
        try:
            while not stop.is_set():
                if self.lease.acquire():
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
            self._stop_jobs()
            if self.lease.held():
                self.lease.release()
            _ACTIVE = None

    def _start_jobs(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        store = SQLAlchemyJobStore(engine=self.engine)
        self._job_table = store.jobs_t
        self._jobs = BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": ThreadPoolExecutor(self.workers)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=UTC,
        )
        self._jobs.start()
        n = self.reconcile()
        log.info("leading: %d open action(s) scheduled", n)

    def _stop_jobs(self) -> None:
        if self._jobs is not None:
            self._jobs.shutdown(wait=True)
            self._jobs = None

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
        with self._running_lock:
            running = set(self._running)
        have: set[str] = set()
        if missing_only:  # one query for the ids, rather than loading every job
            with self.engine.connect() as conn:
                have = set(conn.execute(sa.select(self._job_table.c.id)).scalars())
        added = 0
        for action_id, due in rows:
            if action_id in running or action_id in have:
                continue
            self._schedule(action_id, _aware(due))
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
        sent = outbox.dispatch(
            self.engine, self.channels, self.clock.now, recipient=self._recipient
        )
        for result, n in sent.items():
            self.metrics.messages.labels(result).inc(n)

    # --- planning ------------------------------------------------------------------------
    def pending_decisions(self, limit: int = 1000) -> list[tuple[str, int, int]]:
        """``(payment_id, after_attempt, n)`` for payments whose last attempt failed and that
        have no action for it (``n`` numbers re-plans of the same failure)."""
        at, a = t.attempts.c, t.scheduled_actions.c
        last = (
            sa.select(at.payment_id, sa.func.max(at.attempt_number).label("n"))
            .group_by(at.payment_id)
            .subquery()
        )
        recovered = sa.select(at.payment_id).where(at.outcome == "succeeded")
        blocked = sa.select(t.account_status.c.account_id)
        with self.engine.connect() as conn:
            candidates = conn.execute(
                sa.select(last.c.payment_id, last.c.n)
                .join(t.payments, t.payments.c.payment_id == last.c.payment_id)
                .where(last.c.payment_id.not_in(recovered))
                .where(t.payments.c.account_id.not_in(blocked))
            ).all()
            actions = conn.execute(sa.select(a.payment_id, a.after_attempt, a.status)).all()
        open_payments = {p for p, _, s in actions if s in OPEN}
        planned: dict[tuple[str, int], list[str]] = {}
        for p, n, s in actions:
            planned.setdefault((p, n), []).append(s)
        out = []
        for pid, n in candidates:
            statuses = planned.get((pid, n), [])
            if pid in open_payments or any(s != "replan" for s in statuses):
                continue
            out.append((pid, n, len(statuses)))
            if len(out) >= limit:
                break
        return out

    def plan(self) -> int:
        """Ask for and record decisions for every payment waiting for one."""
        waiting = self.pending_decisions(PLAN_BATCH)
        if not waiting:
            return 0
        now = self.clock.now()
        decisions = self.decider.decide([p for p, _, _ in waiting], now)
        payments = repo.load_contract(self.engine, [p for p, _, _ in waiting]).payments
        by_id = payments.set_index("payment_id", drop=False)
        branding = configs.effective_configs(self.engine, payments["account_id"].unique())
        due: list[tuple[str, datetime]] = []
        with self.engine.begin() as conn:
            for (pid, after, n), d in zip(waiting, decisions, strict=True):
                payment = by_id.loc[pid]
                action_id = f"{pid}:{after}:{n}"
                retry_at = (d.get("retry") or {}).get("at_utc")
                retry_at = pd.Timestamp(retry_at).to_pydatetime() if retry_at else None
                attempt = after + 1
                row = {
                    "action_id": action_id,
                    "payment_id": pid,
                    "account_id": payment["account_id"],
                    "after_attempt": after,
                    "decided_at": pd.Timestamp(d["decided_at"]).to_pydatetime(),
                    "model_version": d.get("model_version"),
                    "propensity": d.get("propensity"),
                    "retry_at": retry_at,
                    "status": "scheduled" if retry_at else "done",
                    "attempt_number": attempt if retry_at else None,
                    "idempotency_key": stripe_actions.idempotency_key(
                        payment["account_id"], pid, attempt
                    )
                    if retry_at
                    else None,
                    "outcome": None if retry_at else f"no_retry:{d.get('no_retry_reason')}",
                    "tries": 0,
                    "updated_at": datetime.now(UTC),
                }
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
                    )
                if retry_at:
                    due.append((action_id, retry_at))
        for action_id, at in due:
            self._schedule(action_id, at)
        self.stats.planned += len(waiting)
        return len(waiting)

    # --- acting --------------------------------------------------------------------------
    def _set(self, action_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t.scheduled_actions)
                .where(t.scheduled_actions.c.action_id == action_id)
                .values(**values, updated_at=datetime.now(UTC))
            )

    def recheck(
        self, action: Mapping[str, Any], history: contract.ContractTables, now: datetime
    ) -> tuple[str, Any] | None:
        """Why the action must not run now: ``("cancelled", reason)``, ``("replan", reason)``
        or ``("wait", until)``; None when it may. ``history`` is the payment's stored rows."""
        if history.payments.empty:
            return "cancelled", "unknown_payment"
        with self.engine.connect() as conn:
            if conn.execute(
                sa.select(t.account_status.c.reason).where(
                    t.account_status.c.account_id == action["account_id"]
                )
            ).scalar():
                return "cancelled", "account_blocked"
            customer = history.payments["customer_id"].iloc[0]
            updated = conn.execute(
                sa.select(sa.func.max(t.card_updates.c.updated_at)).where(
                    t.card_updates.c.customer_id == customer
                )
            ).scalar()
        if updated is not None and _aware(action["decided_at"]) < _aware(updated) <= now:
            return "replan", "card_updated"
        config = configs.effective_configs(self.engine, [action["account_id"]])
        batch = DecisionBatch.from_history(
            history.payments,
            history.attempts,
            history.messages,
            pd.Series([pd.Timestamp(now)]),
            constraints(history.payments["account_id"], config),
        )
        lim = rules.limits(batch, self.rules).iloc[0]
        if lim["blocked"]:
            return "cancelled", lim["blocked"]
        if int(history.attempts["attempt_number"].max()) != action["after_attempt"]:
            return "cancelled", "superseded"  # a newer attempt is stored: plan from it
        if lim["earliest_retry_at"] > pd.Timestamp(now) + pd.Timedelta(seconds=1):
            return "wait", lim["earliest_retry_at"].to_pydatetime()
        return None

    def execute(self, action_id: str) -> str:
        """Carry out one due action; returns what became of it."""
        with self._running_lock:
            if action_id in self._running:
                return "already_running"
            self._running.add(action_id)
        try:
            outcome = self._execute(action_id)
        finally:
            with self._running_lock:
                self._running.discard(action_id)
        self.metrics.actions.labels(outcome).inc()
        return outcome

    def _execute(self, action_id: str) -> str:
        if not self.lease.held():
            return "not_leader"  # the next leader reconciles it
        a = t.scheduled_actions.c
        with self.engine.connect() as conn:
            action = (
                conn.execute(sa.select(t.scheduled_actions).where(a.action_id == action_id))
                .mappings()
                .one_or_none()
            )
        if action is None or action["status"] not in OPEN:
            return "gone"
        now = self.clock.now()
        if action["retry_at"] is not None:
            due = self.clock.wall(_aware(action["retry_at"]))
            self.metrics.delay.observe(max((datetime.now(UTC) - due).total_seconds(), 0.0))
        history = repo.load_contract(self.engine, [action["payment_id"]])
        verdict = self.recheck(action, history, now)
        if verdict is not None:
            kind, detail = verdict
            if kind == "wait":
                self._schedule(action_id, detail)
                return "wait"
            self._set(action_id, status=kind, outcome=detail)
            self.stats.skipped += 1
            return kind
        self._set(action_id, status="in_flight", tries=action["tries"] + 1)
        payment = history.payments.iloc[0]
        try:
            result = stripe_actions.retry_payment(self.stripe, payment, action["attempt_number"])
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
        self._record(action, payment, result, now)
        self.stats.retries += 1
        return result.outcome

    def _record(
        self,
        action: Mapping[str, Any],
        payment: Mapping[str, Any],
        result: stripe_actions.ChargeResult,
        at: datetime,
    ) -> None:
        """The attempt as a contract row, and the action done, in one transaction."""
        succeeded = result.outcome in ("succeeded", "already_paid")
        row = pd.DataFrame(
            {
                "payment_id": [action["payment_id"]],
                "attempt_number": [action["attempt_number"]],
                "attempted_at": [pd.Timestamp(at).tz_convert(UTC)],
                "initiator": ["merchant"],
                "outcome": ["succeeded" if succeeded else "failed"],
                "decline_code": [None if succeeded else result.decline_code],
                "advice_code": [None],
                "network_decline_code": [result.network_decline_code],
                "network_advice_code": [result.network_advice_code],
                "policy": [f"reclaim@{action['model_version']}"],
                "propensity": [
                    np.nan if action["propensity"] is None else float(action["propensity"])
                ],
            }
        )
        a = t.scheduled_actions.c
        with self.engine.begin() as conn:
            if result.outcome != "already_paid":
                repo.insert_rows(conn, t.attempts, contract.conform(contract.ATTEMPTS, row))
                # The webhook may have recorded this attempt first: keep the decision's fields.
                conn.execute(
                    sa.update(t.attempts)
                    .where(t.attempts.c.payment_id == action["payment_id"])
                    .where(t.attempts.c.attempt_number == action["attempt_number"])
                    .values(policy=row["policy"][0], propensity=action["propensity"])
                )
            conn.execute(
                sa.update(t.scheduled_actions)
                .where(a.action_id == action["action_id"])
                .values(status="done", outcome=result.outcome, updated_at=datetime.now(UTC))
            )

    # --- messages ------------------------------------------------------------------------
    def _recipient(self, channel: str, account_id: str, customer_id: str) -> str | None:
        """The customer's email, from Stripe, where the channel needs it."""
        if channel != "email":
            return None
        with self.engine.connect() as conn:
            model = conn.execute(
                sa.select(t.payments.c.charge_model)
                .where(t.payments.c.customer_id == customer_id)
                .limit(1)
            ).scalar()
        options = {"stripe_account": account_id} if model == "direct" else {}
        try:
            customer = self.stripe.v1.customers.retrieve(customer_id, None, options)
        except stripe.StripeError as exc:
            log.warning("customer %s not read: %s", customer_id, exc)
            return None
        return customer.to_dict().get("email")


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
    )
