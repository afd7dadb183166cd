"""The scheduler: carries out every decision, safely, and asks for the next one.

One process (``reclaim scheduler``) leads at a time (:mod:`reclaim.serving.leader`); a second
one waits. The leader runs APScheduler 3 with its job store in the operational database and:

1. **plans**: every payment whose last attempt failed and that has no action for that failure
   gets a decision from the scoring API (``POST /v1/decisions/batch``); the action is written
   to ``scheduled_actions`` — with its message in the outbox, in the same transaction — and a
   job is added for the retry time. Action ids are ``<account>:<payment>:<after attempt>:<n>``, so a
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

The package, by what each part does: :mod:`.records` (the ``scheduled_actions`` rows and the
query of what waits for a decision), :mod:`.deciders` (where decisions come from),
:mod:`.leading` (the lease and APScheduler's jobs), :mod:`.planning` (asking for decisions and
recording them, and the driver of simulated time), :mod:`.checks` (what is re-checked before
an action runs), :mod:`.acting` (carrying actions out through Stripe and recording the
attempts), :mod:`.messaging` (the outbox, confirmed with Stripe before each message), and
:mod:`.core` (the :class:`Scheduler` that joins them, and its wiring from settings).
"""

from reclaim.serving.scheduler.core import Scheduler, SchedulerStats, from_settings
from reclaim.serving.scheduler.deciders import Decider, NoRetry, ScoringClient
from reclaim.serving.scheduler.leading import run_action
from reclaim.serving.scheduler.records import ACT_BATCH, OPEN, PLAN_BATCH, action_row

__all__ = [
    "ACT_BATCH", "OPEN", "PLAN_BATCH", "Decider", "NoRetry", "Scheduler", "SchedulerStats",
    "ScoringClient", "action_row", "from_settings", "run_action",
]  # fmt: skip
