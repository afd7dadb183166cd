"""The whole loop, end to end, in accelerated time: the main job of ``make demo``.

A month of new failed payments of a simulated marketplace is replayed against the real stack:
the scoring API (``reclaim serve``) and the scheduler (``reclaim scheduler``) run as their own
processes on one SQLite store, and the Stripe stand-in answers them from the simulator's ground
truth. Each payment's failure reaches Reclaim as a signed webhook at its simulated time; the
scheduler asks the API for decisions and retries through the official SDK; customers who pay
on their own (the simulator's hidden ``self_cure_hours``) do so through the stand-in, and cards
the networks refresh (``card_update_hours``) arrive as ``payment_method.automatically_updated``,
each told to Reclaim by webhook. The API runs an A/B test — the served policy against a reference
policy (``stripe_like``), assigned by a hash of the customer — and the report gives recovered
revenue per arm with 95% intervals, from what the stand-in was actually paid.

Messages are off in the replay (every account's ``allowed_channels`` is empty): their effect
lives in the simulated customer, who is not on the receiving end of the SMTP or webhook
channels here. ``reclaim evaluate --simulator`` compares policies with messages.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import sqlalchemy as sa

from reclaim import contract
from reclaim.serving.auth import create_key
from reclaim.serving.clock import Clock
from reclaim.serving.store.experiments import load_assignments
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.simulator import Marketplace, fresh_payments, truth
from reclaim.simulator.stripe_export import payment_event, payment_objects, to_stripe_objects
from reclaim.simulator.stripe_standin import StripeStandIn


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay and how fast."""

    payments: int = 300
    failure_days: int = 20
    """Failures arrive over this many days; the replay runs ``horizon_days`` in all."""
    horizon_days: int = 30
    wall_seconds: float = 300.0
    """How long the replay takes on the wall clock (sets the clock's speed)."""
    control: str = "stripe_like"
    control_share: float = 0.5
    experiment: str = "replay"
    """The experiment's name in the store (``reclaim report --experiment``)."""
    seed: int = 8


class World:
    """The simulator's truth behind the stand-in: retry outcomes and customers who pay."""

    def __init__(self, market: Marketplace):
        self.market = market
        self.row = {pid: i for i, pid in enumerate(market.payments["payment_id"])}
        self.retries: Counter[str] = Counter()
        self.paid_by: dict[str, str] = {}

    def payment_of(self, obj: dict[str, Any]) -> str:
        return obj["id"]  # invoices and standalone intents carry the payment's id

    def outcome(self, scope: Any, resource: str, obj: dict[str, Any], at: datetime) -> str | None:
        """A merchant retry at ``at``: None if it succeeds, else the decline code."""
        pid = self.payment_of(obj)
        i = self.row[pid]
        n = self.retries[pid]
        self.retries[pid] += 1
        p = truth.retry_success_probability(
            self.market, np.array([i]), pd.Series([pd.Timestamp(at)]), np.array([n + 1])
        )[0]
        noise = self.market.noise["retry"]
        if noise[i, min(n, noise.shape[1] - 1)] < p:
            self.paid_by[pid] = "retry"
            return None
        return str(self.market.payments["decline_code"].iloc[i])


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


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
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


def run_replay(
    market: Marketplace,
    tracking_uri: str,
    folder: Path,
    config: ReplayConfig | None = None,
    on_progress: Callable[[float, str], None] | None = None,
) -> pd.DataFrame:
    """Replay fresh payments of ``market`` through the whole stack; returns one row per arm.

    ``on_progress(share_done, note)`` is called as simulated time passes.
    """
    config = config or ReplayConfig()
    progress = on_progress or (lambda share, note: None)
    month = replace(market, config=replace(market.config, period_days=config.failure_days))
    fresh = fresh_payments(month, config.payments, config.seed)
    world = World(fresh)
    payments = fresh.payments
    origin = payments["failed_at"].min().to_pydatetime() - timedelta(hours=1)
    horizon = origin + timedelta(days=config.horizon_days)
    speed = (horizon - origin).total_seconds() / config.wall_seconds
    clock = Clock(speed=speed, origin=origin, wall_origin=datetime.now(UTC) + timedelta(seconds=5))

    folder.mkdir(parents=True, exist_ok=True)
    database = f"sqlite:///{folder / 'reclaim.db'}"
    if (folder / "reclaim.db").exists():
        (folder / "reclaim.db").unlink()
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
    base_env = {
        **os.environ,
        "RECLAIM_DATABASE_URL": database,
        "RECLAIM_LOG_LEVEL": "WARNING",
    }
    api = subprocess.Popen(
        [reclaim, "serve", "--port", str(port)],
        env={
            **base_env,
            "RECLAIM_MLFLOW_TRACKING_URI": tracking_uri,
            "RECLAIM_STRIPE_WEBHOOK_SECRET_PLATFORM": secret["platform"],
            "RECLAIM_STRIPE_WEBHOOK_SECRET_CONNECT": secret["connect"],
            "RECLAIM_EXPERIMENT_CONTROL": config.control,
            "RECLAIM_EXPERIMENT_CONTROL_SHARE": str(config.control_share),
            "RECLAIM_EXPERIMENT_NAME": config.experiment,
            "RECLAIM_POLICY_RELOAD_SECONDS": "3600",
        },
    )
    scheduler: subprocess.Popen | None = None
    try:
        _wait_ready(api_url, api)
        httpx.put(
            f"{api_url}/v1/accounts/*/config",
            json={"allowed_channels": []},
            headers={"Authorization": f"Bearer {admin_key}"},
        ).raise_for_status()
        with StripeStandIn(
            outcome=world.outcome,
            webhooks={k: (f"{api_url}/v1/webhooks/stripe/{k}", v) for k, v in secret.items()},
            now=clock.now,
        ) as standin:
            tables = contract.ContractTables(
                payments=payments,
                attempts=contract.first_failures(payments),
                messages=contract.empty(contract.MESSAGES),
            )
            objects = to_stripe_objects(tables)
            standin.load(objects)
            scheduler = subprocess.Popen(
                [reclaim, "scheduler"],
                env={
                    **base_env,
                    "RECLAIM_STRIPE_API_KEY": standin.api_key,
                    "RECLAIM_STRIPE_API_BASE": standin.url,
                    "RECLAIM_STRIPE_TIMEOUT_SECONDS": "5",
                    "RECLAIM_SCORING_URL": api_url,
                    "RECLAIM_SCORING_API_KEY": scheduler_key,
                    "RECLAIM_CLOCK_SPEED": repr(speed),
                    "RECLAIM_CLOCK_ORIGIN": origin.isoformat(),
                    "RECLAIM_CLOCK_WALL_ORIGIN": clock.wall_origin.isoformat(),
                },
            )
            _play(world, standin, objects, clock, horizon, progress)
            _stop(scheduler)
            return _report(world, standin, engine, config)
    finally:
        if scheduler is not None:
            _stop(scheduler)
        _stop(api)
        engine.dispose()


def _play(
    world: World,
    standin: StripeStandIn,
    objects: dict[Any, dict[str, list[dict]]],
    clock: Clock,
    horizon: datetime,
    progress: Callable[[float, str], None],
) -> None:
    """Send each failure, and each customer's own payment, at its simulated time."""
    market = world.market
    later = {  # what happens to the customer, hours after the failure
        "cure": market.hidden["self_cure_hours"].to_numpy(),  # pays unprompted
        "card": market.hidden["card_update_hours"].to_numpy(),  # card refreshed by the network
    }
    window = timedelta(days=market.config.rules.window_days).total_seconds()
    events: list[tuple[datetime, str, str, Any]] = []
    for scope, resource, obj in payment_objects(objects):
        i = world.row[obj["id"]]
        failed = market.payments["failed_at"].iloc[i].to_pydatetime()
        events.append((failed, "fail", resource, (scope, obj["id"])))
        for kind, hours in later.items():
            if np.isfinite(hours[i]) and hours[i] * 3600 <= window:
                at = failed + timedelta(hours=float(hours[i]))
                events.append((at, kind, resource, (scope, obj["id"])))
    events.sort(key=lambda e: e[0])
    start = clock.origin
    total = (horizon - start).total_seconds()
    for at, kind, resource, (scope, oid) in events:
        if at >= horizon:
            break
        _sleep_until(clock, at, progress, start, total)
        obj = standin.objects[scope][resource][oid]
        if kind == "fail":
            standin.send_event(payment_event("payment_failed", obj, scope, at))
        elif kind == "card":
            standin.send_event(_card_update_event(obj, scope, at))
        elif obj.get("status") not in ("paid", "succeeded"):
            obj["status"] = "paid" if resource == "invoices" else "succeeded"
            world.paid_by[oid] = "customer"
            ok = "paid" if resource == "invoices" else "succeeded"
            standin.send_event(payment_event(ok, obj, scope, at))
    _sleep_until(clock, horizon, progress, start, total)


def _sleep_until(
    clock: Clock,
    at: datetime,
    progress: Callable[[float, str], None],
    start: datetime,
    total: float,
) -> None:
    while True:
        now = clock.now()
        progress(min((now - start).total_seconds() / total, 1.0), f"{now:%Y-%m-%d %H:%M}")
        wait = (clock.wall(at) - datetime.now(UTC)).total_seconds()
        if wait <= 0:
            return
        time.sleep(min(wait, 0.5))


def _report(
    world: World, standin: StripeStandIn, engine: sa.Engine, config: ReplayConfig
) -> pd.DataFrame:
    """Recovered revenue per arm, from what the stand-in was paid, with 95% intervals; arms
    as the API stored them (a payment never decided for is in neither)."""
    p = world.market.payments
    usd = p["amount"].to_numpy() * world.market.hidden["usd_per_minor"].to_numpy()
    paid_by = p["payment_id"].map(world.paid_by)
    stored = load_assignments(engine, config.experiment).set_index("payment_id")["arm"]
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
                "retries": int(sum(world.retries[pid] for pid in p["payment_id"][mask])),
            }
        )
    table = pd.DataFrame(rows).set_index("arm")
    charged = sum(standin.executed.values())
    table.attrs["charges"] = charged
    table.attrs["most_per_key"] = max(standin.executed.values(), default=0)
    undecided = arm_of.isna().to_numpy()
    table.attrs["undecided"] = int(undecided.sum())
    table.attrs["undecided_paid_by_customer"] = int((paid_by[undecided] == "customer").sum())
    return table
