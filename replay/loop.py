"""The whole loop, end to end, in simulated time: the main job of ``make demo``.

A month of new failed payments of a simulated marketplace is replayed against the real stack:
the scoring API (``reclaim serve``) runs as its own process on a SQLite store, the scheduler
runs in this process on the same store, and the Stripe stand-in answers them from the
simulator's ground truth. Everything the truth knows of a failure reaches Reclaim as it would
from Stripe: each payment's first failure as the signed webhook events Stripe sends for it
(the endpoints subscribed as ``serving.webhooks.SUBSCRIBED_EVENTS`` says; an invoice's event
names its payment intent by id only, so the API reads the intent, with the decline and the
card, from the stand-in), each retry's decline as Stripe's card error (with the network's
codes) and again by webhook. The scheduler asks the API for decisions over HTTP and retries
through the official SDK; customers who pay on their own (the simulator's hidden
``self_cure_hours``) do so through the stand-in, and expired cards the networks refresh
(``card_update_hours``) arrive as ``payment_method.automatically_updated``. Messages go through
the scheduler's outbox to a channel that plays the customer: whether and when they pay, or
cancel, comes from the simulator's truth (``truth.message_effect``). The API runs an A/B test
— the served policy against a reference policy (``stripe_like``), assigned by a hash of the
customer — and the report gives recovered revenue per arm with 95% intervals, from what the
stand-in was actually paid.

Time is a :class:`~reclaim.serving.clock.SimulatedClock`. The driver does everything due at the
current moment — delivers the customers' and networks' events, lets the scheduler plan, act and
send until nothing more is due, and delivers every webhook that caused (the stand-in holds
them until then and sends them in a fixed order, so the scheduler's own record of a charge
always reaches the store before Stripe's report of it) — and only then moves the clock to the
next thing due. So a replay's outcome depends on its seed alone, never on how fast or how busy
the machine is.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import sqlalchemy as sa
import stripe

from reclaim import contract
from reclaim.fields import FUTURE_SLACK
from reclaim.replay import shards
from reclaim.serving.auth import create_key
from reclaim.serving.channels import OutgoingMessage
from reclaim.serving.clock import SimulatedClock
from reclaim.serving.leader import Lease
from reclaim.serving.scheduler import Scheduler, ScoringClient
from reclaim.serving.store import profiles
from reclaim.serving.store import tables as t
from reclaim.serving.store.experiments import load_assignments
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.serving.webhooks import SUBSCRIBED_EVENTS
from reclaim.simulator import Marketplace, fresh_payments, truth
from reclaim.simulator.stripe_export import payment_objects, to_stripe_objects
from reclaim.simulator.stripe_standin import StripeStandIn
from reclaim.vocab import DECLINE_FIELDS


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay."""

    payments: int = 300
    failure_days: int = 20
    """Failures arrive over this many days."""
    horizon_days: int | None = None
    """None: until the last payment's recovery window has closed."""
    messages: bool = True
    """Let the policies message customers (the simulated customer answers); False turns every
    channel off through the platform's account configuration."""
    control: str = "stripe_like"
    control_share: float = 0.5
    experiment: str = "replay"
    """The experiment's name in the store (``reclaim report --experiment``)."""
    seed: int = 8
    strip_network_codes: bool = False
    """Stripe's answers without network codes (older charges, older integrations): what the
    skew monitor must notice."""
    shards: int = 1
    """Play the payments in this many parts at once, split by connected account, each with
    its own API process and store (merged after): the same result, payment by payment, in
    about 1/shards of the time on as many cores."""


class World:
    """The simulator's truth behind the stand-in: retry outcomes, customers who pay on their
    own or after a message, customers who cancel, and the events still to come."""

    def __init__(self, market: Marketplace):
        self.market = market
        self.row = {pid: i for i, pid in enumerate(market.payments["payment_id"])}
        self.retries: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.paid_by: dict[str, str] = {}
        self.cancelled: set[str] = set()
        self.hard_retries = 0
        self.close: Callable[[str, datetime], Any] = lambda pid, at: None
        codes = market.payments[list(DECLINE_FIELDS)].astype(object)
        self.declines = [
            {k: (None if pd.isna(v) else str(v)) for k, v in zip(DECLINE_FIELDS, row, strict=True)}
            for row in codes.itertuples(index=False)
        ]
        self._events: list[tuple[datetime, int, str, str]] = []  # (at, seq, kind, payment)
        self._seq = 0

    def schedule(self, at: datetime, kind: str, payment_id: str) -> None:
        """Something happens to a payment's customer at ``at``: ``fail``, ``cure`` (pays),
        ``card`` (the network refreshes the card)."""
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payment_id))

    def next_event(self) -> datetime | None:
        return self._events[0][0] if self._events else None

    def pop_due(self, now: datetime) -> list[tuple[datetime, str, str]]:
        out = []
        while self._events and self._events[0][0] <= now:
            at, _, kind, pid = heapq.heappop(self._events)
            out.append((at, kind, pid))
        return out

    def outcome(self, scope: Any, resource: str, obj: dict[str, Any], at: datetime) -> Any:
        """A merchant retry at ``at``: None if it succeeds, else the decline as Stripe reports
        it (the payment's decline again, with its advice and network codes, as the
        simulator's rollout logs a failed retry)."""
        pid = obj["id"]  # invoices and standalone intents carry the payment's id
        i = self.row[pid]
        n = self.retries[pid]
        self.retries[pid] += 1
        if self.market.hidden["category"].iloc[i] == "hard":
            self.hard_retries += 1  # a breach of the network rules: counted, reported
        decline = self.declines[i]
        if pid in self.cancelled:  # the customer cancelled: no card will pay any more
            return decline
        p = truth.retry_success_probability(
            self.market, np.array([i]), pd.Series([pd.Timestamp(at)]), np.array([n + 1])
        )[0]
        noise = self.market.noise["retry"]
        if noise[i, min(n, noise.shape[1] - 1)] < p:
            self.paid_by[pid] = "retry"
            return None
        return decline

    def message(self, message: OutgoingMessage, at: datetime) -> None:
        """A message reaches the customer at ``at``: from the truth, they pay some hours
        later, cancel, or do nothing (the same draws as the simulator's rollout)."""
        pid = message.payment_id
        i = self.row[pid]
        k = min(self.messages[pid], self.market.noise["respond"].shape[1] - 1)
        respond, cancel = truth.message_effect(
            self.market,
            np.array([i]),
            pd.Series([pd.Timestamp(at)]),
            np.array([message.channel]),
            np.array([message.sender]),
            np.array([self.messages[pid]]),
        )
        self.messages[pid] += 1
        noise = self.market.noise
        if noise["cancel"][i, k] < cancel[0]:
            self.cancelled.add(pid)
            self.close(pid, at)  # the platform stops collecting: Stripe voids the invoice
            return
        if noise["respond"][i, k] < respond[0]:
            hours = -self.market.config.response_delay_mean_hours * np.log1p(-noise["delay"][i, k])
            self.schedule(at + timedelta(hours=float(hours)), "cure", pid)


class SimulatedCustomer:
    """A message channel whose far end is the simulated customer (:meth:`World.message`)."""

    def __init__(self, world: World, clock: SimulatedClock):
        self.world, self.clock = world, clock

    def send(self, message: OutgoingMessage) -> None:
        self.world.message(message, self.clock.now())


def _card_update_event(obj: dict[str, Any], scope: Any, at: datetime) -> dict[str, Any]:
    customer = obj["customer"]
    return {
        "id": f"evt_card_{obj['id']}",
        "object": "event",
        "type": "payment_method.automatically_updated",
        "created": int(at.timestamp()),
        "livemode": False,
        "data": {
            "object": {
                "id": f"pm_{customer}",
                "object": "payment_method",
                "customer": customer,
                "card": {"brand": "visa", "funding": "credit", "country": "US"},
            }
        },
        **({"account": scope} if scope else {}),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API at {url} was not ready within {timeout:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def replayed_payments(market: Marketplace, config: ReplayConfig) -> Marketplace:
    """The fresh payments a replay of ``market`` plays (its seed, size and failure days)."""
    month = replace(market, config=replace(market.config, period_days=config.failure_days))
    return fresh_payments(month, config.payments, config.seed)


def run_replay(
    market: Marketplace,
    tracking_uri: str,
    folder: Path,
    config: ReplayConfig | None = None,
    on_progress: Callable[[float, str], None] | None = None,
) -> pd.DataFrame:
    """Replay fresh payments of ``market`` through the whole stack; returns one row per arm
    (``attrs`` hold the charges, the undecided payments and the verdict). The store is left
    in ``folder / "reclaim.db"``.

    ``on_progress(share_done, note)`` is called as simulated time passes. With
    ``config.shards`` above 1 the payments are split by connected account and the parts play
    in as many processes at once (:mod:`reclaim.replay.shards`), their stores merged.
    """
    config = config or ReplayConfig()
    progress = on_progress or (lambda share, note: None)
    fresh = replayed_payments(market, config)
    payments = fresh.payments
    origin = payments["failed_at"].min().to_pydatetime() - timedelta(hours=1)
    if config.horizon_days is None:  # every payment's window closes inside the replay
        window = timedelta(days=market.config.rules.window_days)
        horizon = payments["failed_at"].max().to_pydatetime() + window + timedelta(hours=1)
    else:
        horizon = origin + timedelta(days=config.horizon_days)
    latest = datetime.now(UTC) + FUTURE_SLACK
    if horizon > latest:  # the API refuses events dated ahead of its clock (fields.PastTime)
        raise ValueError(
            f"the replay's simulated time runs to {horizon:%Y-%m-%d}, more than a day after "
            f"this machine's clock ({latest:%Y-%m-%d}): the API would reject its events"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("reclaim.db*"):
        stale.unlink()
    parts = shards.partition(payments["account_id"], config.shards)
    if len(parts) == 1:
        outcome = play_part(Part(fresh, tracking_uri, folder, config, origin, horizon), progress)
    else:
        outcome = _play_parts(fresh, parts, tracking_uri, folder, config, origin, horizon, progress)
    engine = make_engine(f"sqlite:///{folder / 'reclaim.db'}")
    try:
        return _report(fresh, outcome, engine, config)
    finally:
        engine.dispose()


@dataclass
class Outcome:
    """What happened in a replay, per payment: who paid, how often it was retried and
    messaged; what the stand-in charged per idempotency key; the API's skew alerts. The
    outcomes of parts played apart add up (:meth:`merge`)."""

    paid_by: dict[str, str] = field(default_factory=dict)
    retries: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    cancelled: set[str] = field(default_factory=set)
    hard_retries: int = 0
    executed: Counter[str] = field(default_factory=Counter)
    skew_alerts: list[str] = field(default_factory=list)

    def merge(self, other: Outcome) -> Outcome:
        return Outcome(
            {**self.paid_by, **other.paid_by},
            self.retries + other.retries,
            self.messages + other.messages,
            self.cancelled | other.cancelled,
            self.hard_retries + other.hard_retries,
            self.executed + other.executed,
            sorted(set(self.skew_alerts) | set(other.skew_alerts)),
        )


@dataclass(frozen=True)
class Part:
    """Payments to play from ``origin`` to ``horizon`` through a stack of their own, its store
    in ``folder``, its stand-in making ids that start with ``ids``."""

    fresh: Marketplace
    tracking_uri: str
    folder: Path
    config: ReplayConfig
    origin: datetime
    horizon: datetime
    ids: str = "standin"


def play_part(part: Part, progress: Callable[[float, str], None]) -> Outcome:
    """Play a part: an API process and a scheduler on a new store ``part.folder /
    "reclaim.db"``, the stand-in answering from the simulator's truth."""
    fresh, tracking_uri, folder, config = part.fresh, part.tracking_uri, part.folder, part.config
    origin, horizon, ids = part.origin, part.horizon, part.ids
    world = World(fresh)
    payments = fresh.payments
    clock = SimulatedClock(origin)
    folder.mkdir(parents=True, exist_ok=True)
    database = f"sqlite:///{folder / 'reclaim.db'}"
    for stale in folder.glob("reclaim.db*"):
        stale.unlink()
    upgrade(database)
    engine = make_engine(database)
    _, scheduler_key = create_key(engine, "scheduler")
    _, admin_key = create_key(engine, "admin")
    secret = {
        "platform": f"whsec_{secrets.token_hex(8)}",
        "connect": f"whsec_{secrets.token_hex(8)}",
    }
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}"
    reclaim = str(Path(sys.executable).with_name("reclaim"))
    standin = StripeStandIn(
        outcome=world.outcome,
        webhooks={k: (f"{api_url}/v1/webhooks/stripe/{k}", v) for k, v in secret.items()},
        now=clock.now,
        deliver_on_demand=True,
        enabled_events=SUBSCRIBED_EVENTS,
        strip_network_codes=config.strip_network_codes,
        ids=ids,
    )
    with standin:
        api = subprocess.Popen(
            [reclaim, "serve", "--port", str(port)],
            env={
                **os.environ,
                "RECLAIM_DATABASE_URL": database,
                "RECLAIM_LOG_LEVEL": "WARNING",
                "RECLAIM_MLFLOW_TRACKING_URI": tracking_uri,
                "RECLAIM_STRIPE_WEBHOOK_SECRET_PLATFORM": secret["platform"],
                "RECLAIM_STRIPE_WEBHOOK_SECRET_CONNECT": secret["connect"],
                # the API reads what webhook events lack from Stripe: here, the stand-in
                "RECLAIM_STRIPE_API_KEY": standin.api_key,
                "RECLAIM_STRIPE_API_BASE": standin.url,
                "RECLAIM_EXPERIMENT_CONTROL": config.control if config.control_share else "",
                "RECLAIM_EXPERIMENT_CONTROL_SHARE": str(config.control_share),
                "RECLAIM_EXPERIMENT_NAME": config.experiment,
                "RECLAIM_POLICY_RELOAD_SECONDS": "3600",
            },
        )
        try:
            _wait_ready(api_url, api)
            if not config.messages:
                httpx.put(
                    f"{api_url}/v1/accounts/*/config",
                    json={"allowed_channels": []},
                    headers={"Authorization": f"Bearer {admin_key}"},
                ).raise_for_status()
            tables = contract.ContractTables(
                payments=payments,
                attempts=contract.first_failures(payments),
                messages=contract.empty(contract.MESSAGES),
            )
            objects = to_stripe_objects(tables)
            standin.load(objects)
            client = stripe.StripeClient(
                standin.api_key,
                base_addresses={"api": standin.url},
                http_client=stripe.RequestsClient(timeout=60),
            )
            # the accounts' names, as `reclaim accounts names` stores them in production
            profiles.sweep(engine, client, now=clock.now())
            customer = SimulatedCustomer(world, clock)
            scheduler = Scheduler(
                engine,
                client,
                ScoringClient(api_url, scheduler_key, timeout=600),
                {"email": customer, "sms": customer, "in_app": customer},
                clock,
                Lease(engine, "replay", ttl=365 * 86400.0),
            )
            if not scheduler.lease.acquire():
                raise RuntimeError("another scheduler holds this replay store's lease")
            _play(world, standin, objects, scheduler, clock, horizon, progress)
            return Outcome(
                world.paid_by,
                world.retries,
                world.messages,
                world.cancelled,
                world.hard_retries,
                standin.executed,
                drifting_features(httpx.get(f"{api_url}/metrics").text),
            )
        finally:
            _stop(api)
            engine.dispose()


def _play_parts(
    fresh: Marketplace,
    parts: list[np.ndarray],
    tracking_uri: str,
    folder: Path,
    config: ReplayConfig,
    origin: datetime,
    horizon: datetime,
    progress: Callable[[float, str], None],
) -> Outcome:
    """Play each part in a process of its own, at once; merge their stores into
    ``folder / "reclaim.db"`` and their outcomes."""
    context = multiprocessing.get_context("spawn")  # no threads or sockets of ours inherited
    messages = context.Queue()
    folders = [folder / f"part-{k}" for k in range(len(parts))]
    workers = [
        context.Process(
            target=_part_process,
            args=(
                k,
                Part(
                    fresh.subset(rows),
                    tracking_uri,
                    folders[k],
                    config,
                    origin,
                    horizon,
                    f"standin{k}",
                ),
                messages,
            ),
            name=f"replay-part-{k}",
        )
        for k, rows in enumerate(parts)
    ]
    for worker in workers:
        worker.start()
    done: dict[int, Outcome] = {}
    shares = [0.0] * len(parts)
    try:
        while len(done) < len(parts):
            try:
                kind, k, value = messages.get(timeout=5.0)
            except queue.Empty:
                dead = [w.name for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"replay part(s) {', '.join(dead)} died") from None
                continue
            if kind == "failed":
                raise RuntimeError(f"replay part {k} failed:\n{value}")
            if kind == "done":
                done[k] = value
                shares[k] = 1.0
            else:
                shares[k] = value[0]
                progress(min(shares), value[1])
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join()
    database = folder / "reclaim.db"
    upgrade(f"sqlite:///{database}")
    shards.merge_stores([f / "reclaim.db" for f in folders], database)
    outcome = Outcome()
    for k in range(len(parts)):
        outcome = outcome.merge(done[k])
    progress(1.0, f"{horizon:%Y-%m-%d %H:%M}")
    return outcome


def _part_process(k: int, part: Part, messages: Any) -> None:
    """A part's process: plays it, reporting progress (at most every whole percent) and then
    its outcome, or its traceback, on ``messages``."""
    last = [-1]

    def progress(share: float, note: str) -> None:
        if int(share * 100) > last[0]:
            last[0] = int(share * 100)
            messages.put(("progress", k, (share, note)))

    try:
        messages.put(("done", k, play_part(part, progress)))
    except BaseException:
        messages.put(("failed", k, traceback.format_exc()))
        raise


def _play(
    world: World,
    standin: StripeStandIn,
    objects: dict[Any, dict[str, list[dict]]],
    scheduler: Scheduler,
    clock: SimulatedClock,
    horizon: datetime,
    progress: Callable[[float, str], None],
) -> None:
    """Run the month: at each moment something is due, do all of it, then move the clock."""
    market = world.market
    expired = market.payments["decline_code"].eq("expired_card").to_numpy()
    later = {  # what happens to the customer, hours after the failure
        "cure": market.hidden["self_cure_hours"].to_numpy(),  # pays unprompted
        # the networks' updaters refresh reissued cards: an expired one (the truth reads
        # card_update_hours for expired cards only)
        "card": np.where(expired, market.hidden["card_update_hours"].to_numpy(), np.inf),
    }
    window = timedelta(days=market.config.rules.window_days).total_seconds()
    where: dict[str, tuple[Any, str]] = {}
    for scope, resource, obj in payment_objects(objects):
        i = world.row[obj["id"]]
        where[obj["id"]] = (scope, resource)
        failed = market.payments["failed_at"].iloc[i].to_pydatetime()
        world.schedule(failed, "fail", obj["id"])
        for kind, hours in later.items():
            if np.isfinite(hours[i]) and hours[i] * 3600 <= window:
                world.schedule(failed + timedelta(hours=float(hours[i])), kind, obj["id"])
    world.close = lambda pid, at: standin.close(*where[pid], pid, at)
    start = clock.now()
    total = (horizon - start).total_seconds()
    while True:
        now = clock.now()
        progress(min((now - start).total_seconds() / total, 1.0), f"{now:%Y-%m-%d %H:%M}")
        for at, kind, pid in world.pop_due(now):
            scope, resource = where[pid]
            obj = standin.objects[scope][resource][pid]
            if kind == "fail":  # the events Stripe sends for the first failure
                standin.emit_attempt(scope, obj, None, at)
            elif kind == "card":
                standin.send_event(_card_update_event(obj, scope, at))
            elif pid not in world.cancelled and standin.customer_pays(scope, resource, pid, at):
                world.paid_by[pid] = "customer"
        standin.wait_delivered()
        scheduler.work_due(settle=standin.wait_delivered)
        due = [t for t in (world.next_event(), scheduler.next_due()) if t is not None]
        if not due or min(due) >= horizon:
            break
        clock.advance_to(max(min(due), now))
    clock.advance_to(horizon)
    progress(1.0, f"{horizon:%Y-%m-%d %H:%M}")


def _report(
    fresh: Marketplace, outcome: Outcome, engine: sa.Engine, config: ReplayConfig
) -> pd.DataFrame:
    """Recovered revenue per arm, from what the stand-in was paid, with 95% intervals; arms
    as the API stored them (a payment never decided for is in neither)."""
    p = fresh.payments
    usd = p["amount"].to_numpy() * fresh.hidden["usd_per_minor"].to_numpy()
    paid_by = p["payment_id"].map(outcome.paid_by)
    if config.control_share > 0:
        stored = load_assignments(engine, config.experiment).set_index("payment_id")["arm"]
    else:  # no experiment: every payment decided for is the served policy's
        with engine.connect() as conn:
            ids = conn.execute(sa.select(t.decision_log.c.payment_id).distinct()).scalars()
            stored = pd.Series("treatment", index=list(ids), dtype=object)
    arm_of = p["payment_id"].map(stored)
    control = arm_of.eq("control").to_numpy()
    treated = arm_of.eq("treatment").to_numpy()
    rows = []
    for arm, mask in ((config.control, control), ("learned", treated)):
        recovered = paid_by[mask].notna().to_numpy()
        value = np.where(recovered, usd[mask], 0.0)
        n = int(mask.sum())
        rate = recovered.mean() if n else np.nan
        rows.append(
            {
                "arm": arm,
                "payments": n,
                "recovered": int(recovered.sum()),
                "by_retry": int((paid_by[mask] == "retry").sum()),
                "by_customer": int((paid_by[mask] == "customer").sum()),
                "recovery_rate": rate,
                "rate_ci95": 1.96 * np.sqrt(rate * (1 - rate) / n) if n else np.nan,
                "recovered_usd": value.sum(),
                "usd_per_payment": value.mean() if n else np.nan,
                "usd_per_payment_ci95": 1.96 * value.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
                "retries": int(sum(outcome.retries[pid] for pid in p["payment_id"][mask])),
                "messages": int(sum(outcome.messages[pid] for pid in p["payment_id"][mask])),
            }
        )
    table = pd.DataFrame(rows).set_index("arm")
    decided = control | treated
    table.attrs["per_payment"] = pd.DataFrame(
        {
            "payment_id": p["payment_id"].to_numpy()[decided],
            "treated": treated[decided],
            "recovered": paid_by.notna().to_numpy()[decided].astype(float),
            "usd": np.where(paid_by.notna().to_numpy(), usd, 0.0)[decided],
        }
    )
    table.attrs["messages"] = int(sum(outcome.messages.values()))
    table.attrs["cancelled"] = len(outcome.cancelled)
    table.attrs["charges"] = sum(outcome.executed.values())
    table.attrs["most_per_key"] = max(outcome.executed.values(), default=0)
    undecided = arm_of.isna().to_numpy()
    table.attrs["undecided"] = int(undecided.sum())
    table.attrs["undecided_paid_by_customer"] = int((paid_by[undecided] == "customer").sum())
    table.attrs["hard_retries"] = outcome.hard_retries
    table.attrs["data_path"] = stored_mix(engine, p)
    table.attrs["skew_alerts"] = outcome.skew_alerts
    return table


def drifting_features(metrics: str) -> list[str]:
    """The features the API's skew monitor reports drifting, from its ``/metrics`` text."""
    found = []
    for line in metrics.splitlines():
        if line.startswith("reclaim_feature_drift{") and line.rstrip().endswith(" 1.0"):
            found.append(line.split('feature="', 1)[1].split('"', 1)[0])
    return sorted(found)


def stored_mix(engine: sa.Engine, truth_payments: pd.DataFrame) -> pd.DataFrame:
    """What reached the store against what the simulator drew, for the same payments: the
    share of first declines per code, of card brands, and of payments and failed attempts
    without a network decline code. Rows ``what``/``value``; columns ``simulated``,
    ``stored``."""
    with engine.connect() as conn:
        stored = pd.read_sql(
            sa.select(
                t.payments.c.decline_code,
                t.payments.c.card_brand,
                t.payments.c.network_decline_code,
            ),
            conn,
        )
        failed = pd.read_sql(
            sa.select(t.attempts.c.network_decline_code).where(t.attempts.c.outcome == "failed"),
            conn,
        )
    rows = []
    for what in ("decline_code", "card_brand"):
        both = pd.concat(
            {
                "simulated": truth_payments[what].astype(object).value_counts(normalize=True),
                "stored": stored[what].astype(object).value_counts(normalize=True),
            },
            axis=1,
        ).fillna(0.0)
        rows += [(what, str(v), *both.loc[v]) for v in both.index]
    rows.append(
        ("missing", "network_decline_code (payments)",
         float(truth_payments["network_decline_code"].isna().mean()),
         float(stored["network_decline_code"].isna().mean()) if len(stored) else np.nan)
    )  # fmt: skip
    rows.append(
        ("missing", "network_decline_code (failed attempts)", np.nan,
         float(failed["network_decline_code"].isna().mean()) if len(failed) else np.nan)
    )  # fmt: skip
    return pd.DataFrame(rows, columns=["what", "value", "simulated", "stored"])
