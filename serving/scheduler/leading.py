"""Leading: the lease (one scheduler acts at a time) and APScheduler's jobs, whose only work
is to hand a due action to this process's batches. ``scheduled_actions`` is the record; the
job store only a timer, reconciled from it."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from reclaim.serving.scheduler.records import OPEN
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t

if TYPE_CHECKING:
    from reclaim.serving.scheduler.core import Scheduler

log = logging.getLogger(__name__)

#: How often (wall seconds) the leader re-adds jobs APScheduler dropped (the default of
#: ``Scheduler(reconcile_seconds=...)``).
RECONCILE_SECONDS = 15.0
#: How often the leader refreshes its due-work gauges.
DUE_WATCH_SECONDS = 15.0

# APScheduler stores a job's function by name, so jobs call this module-level function, which
# hands them to the scheduler of this process.
_ACTIVE: Scheduler | None = None


def run_action(action_id: str) -> None:
    """APScheduler's entry point for a due action: hands it to this process's batches."""
    if _ACTIVE is None:  # pragma: no cover - only when a job outlives its scheduler
        log.warning("action %s came due with no scheduler running", action_id)
        return
    _ACTIVE.submit(action_id)


class Leading:
    """The :class:`~reclaim.serving.scheduler.core.Scheduler`'s lease and jobs (its state is
    set up in its ``__init__``)."""

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
                    self._watch_due()
                    if time.monotonic() - self._reconciled > self.reconcile_seconds:
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
            # the due-work gauges are the leader's: a standby reports none, never a stale figure
            self.metrics.due_late.set(0)
            self.metrics.oldest_due.set(0)
        self.metrics.leading.set(1 if won else 0)

    def _watch_due(self) -> None:
        """The due-work gauges (what ``reclaim_scheduler_due_late`` alerts on), from the
        store, at most every :data:`DUE_WATCH_SECONDS` of wall time."""
        if time.monotonic() - self._due_watched < DUE_WATCH_SECONDS:
            return
        self._due_watched = time.monotonic()
        a = t.scheduled_actions.c
        now = self.clock.now()
        with self.engine.connect() as conn:
            late, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(a.retry_at)).where(
                    a.status.in_(OPEN), a.retry_at < now - timedelta(minutes=1)
                )
            ).one()
        self.metrics.due_late.set(int(late))
        past = (now - repo.aware(oldest)).total_seconds() if oldest is not None else 0.0
        self.metrics.oldest_due.set(max(past, 0.0))

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
