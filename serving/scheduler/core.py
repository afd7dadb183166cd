"""The :class:`Scheduler`: plans, acts and sends while it holds the lease (see the package),
joining the parts that do each; and its wiring from settings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy.engine import Engine

from reclaim import rules
from reclaim.serving.channels import Channel
from reclaim.serving.clock import Clock, SimulatedClock
from reclaim.serving.leader import Lease
from reclaim.serving.metrics import SchedulerMetrics
from reclaim.serving.scheduler.acting import Acting
from reclaim.serving.scheduler.checks import Checks
from reclaim.serving.scheduler.deciders import Decider, ScoringClient
from reclaim.serving.scheduler.leading import RECONCILE_SECONDS, Leading
from reclaim.serving.scheduler.messaging import Messaging
from reclaim.serving.scheduler.planning import Planning
from reclaim.serving.store import configs
from reclaim.serving.store import repository as repo

log = logging.getLogger(__name__)


@dataclass
class SchedulerStats:
    planned: int = 0
    retries: int = 0
    skipped: int = 0
    transient: int = 0
    blocked_accounts: int = 0


class Scheduler(Leading, Planning, Checks, Acting, Messaging):
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
    reconcile_seconds
        How often, in wall seconds, the leader gives a job back to each open action whose
        job APScheduler dropped (one that came due while the lease had lapsed).
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
        reconcile_seconds: float = RECONCILE_SECONDS,
    ):
        self.engine, self.stripe, self.decider = engine, stripe_client, decider
        self.configs = config_cache or configs.ConfigCache(5.0)
        self.channels, self.clock, self.lease = channels, clock, lease
        self.rules = network_rules or rules.NetworkRules()
        self.workers, self.poll_seconds = workers, poll_seconds
        self.reconcile_seconds = reconcile_seconds
        self.metrics = metrics or SchedulerMetrics()
        self.stats = SchedulerStats()
        # actions queued or being carried out in this process, and the queue of due ones
        self._claimed: set[str] = set()
        self._due: list[str] = []
        self._due_ready = threading.Condition()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="reclaim-stripe")
        self._draining: tuple[threading.Thread, threading.Event] | None = None
        self._reconciled = 0.0
        self._due_watched = 0.0
        self._send_again = True  # whatever an earlier process left in the outbox
        self._jobs: Any = None  # the APScheduler BackgroundScheduler, while leading

    def tick(self) -> None:
        """One round of planning and sending."""
        self.plan()
        self.send()


def from_settings(settings: Any) -> Scheduler:
    """A scheduler wired from :class:`reclaim.settings.Settings`; raises ValueError naming a
    missing secret."""
    from reclaim.serving.channels import SignedWebhook, SmtpEmail
    from reclaim.serving.leader import holder_id
    from reclaim.serving.store.migrate import ready

    if settings.scoring_api_key is None:
        raise ValueError("RECLAIM_SCORING_API_KEY is not set: a scheduler key of the scoring API")
    settings.make_data_folder(settings.database_url)
    try:
        ready(settings.database_url, settings.migrate_on_start)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from exc
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
