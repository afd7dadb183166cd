"""The store's tests run on SQLite and on PostgreSQL (127.0.0.1:5432, database ``test``), each
in a fresh database or schema migrated to head. PostgreSQL tests skip, saying why, only where
no server answers."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
import stripe
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr

from reclaim import contract
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.clock import Clock
from reclaim.serving.leader import Lease, holder_id
from reclaim.serving.scheduler import Scheduler, ScoringClient
from reclaim.serving.store import tables as t
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.serving.stripe_reads import StripeReader
from reclaim.settings import Settings
from reclaim.simulator.stripe_export import payment_event, payment_objects, to_stripe_objects
from reclaim.simulator.stripe_standin import Faults, StripeStandIn

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_available() -> str | None:
    try:
        with sa.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect() as conn:
            conn.execute(sa.text("select 1"))
        return None
    except Exception as exc:  # any failure to connect means: no server here
        return f"no PostgreSQL server answers at {PG_URL}: {type(exc).__name__}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    yield from _postgres_schema()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL (for what only PostgreSQL is meant for)."""
    yield from _postgres_schema()


def _postgres_schema() -> Iterator[str]:
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"reclaim_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
        admin.dispose()


@pytest.fixture
def engine(store_url: str):
    upgrade(store_url)
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def stripe_api() -> Iterator[StripeStandIn]:
    """A Stripe stand-in holding no objects: what the webhook tests' reads reach (a payment
    intent no invoice pays is a standalone one)."""
    with StripeStandIn() as standin:
        yield standin


@pytest.fixture
def stripe_reader(stripe_api: StripeStandIn) -> StripeReader:
    """Reads from :func:`stripe_api` through the official SDK, as the API makes them."""
    return StripeReader(
        stripe.StripeClient(stripe_api.api_key, base_addresses={"api": stripe_api.url})
    )


@pytest.fixture
def client(tmp_path, trained, stripe_api):
    """The API on SQLite serving the trained policy, called with a scheduler key."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        mlflow_tracking_uri=trained.tracking_uri,
        stripe_webhook_secret_platform=SecretStr("whsec_p"),
        stripe_webhook_secret_connect=SecretStr("whsec_c"),
        stripe_api_key=SecretStr(stripe_api.api_key),
        stripe_api_base=stripe_api.url,
        policy_reload_seconds=3600,
    )
    with TestClient(create_app(settings)) as c:
        _, key = create_key(c.app.state.engine, "scheduler")
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


@pytest.fixture
def inline_payment(trained):
    """``inline_payment(i)``: a decision request's payment context, on the account of the
    trained marketplace's ``i``-th payment."""

    def make(i: int = 0) -> dict:
        p = trained.market.payments.iloc[i]
        return {
            "payment_id": f"in_api_{i}",
            "object": "invoice",
            "account_id": p["account_id"],
            "charge_model": p["charge_model"],
            "on_behalf_of": bool(p["on_behalf_of"]),
            "amount": 4900,
            "currency": "usd",
            "customer_id": f"cus_api_{i}",
            "customer_country": "US",
            "customer_timezone": "America/Chicago",
            "card_brand": "visa",
            "card_funding": "debit",
            "card_country": "US",
            "billing_reason": "subscription_cycle",
            "failed_at": "2026-05-20T14:00:00Z",
            "decline_code": "insufficient_funds",
            "advice_code": "try_again_later",
            "network_decline_code": "51",
        }

    return make


# --- the whole loop: API under uvicorn, the Stripe stand-in, a scheduler ----------------------


@dataclass
class Loop:
    """A running API and Stripe stand-in around one SQLite store, ready for a scheduler."""

    api_url: str
    scheduler_key: str
    admin_key: str
    database_url: str
    engine: sa.Engine
    standin: StripeStandIn
    clock: Clock
    payments: pd.DataFrame  # the failed payments sent in as webhooks

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a ``reclaim scheduler`` process for this loop."""
        return {
            **os.environ,
            "RECLAIM_DATABASE_URL": self.database_url,
            "RECLAIM_STRIPE_API_KEY": self.standin.api_key,
            "RECLAIM_STRIPE_API_BASE": self.standin.url,
            "RECLAIM_STRIPE_TIMEOUT_SECONDS": "1",
            "RECLAIM_SCORING_URL": self.api_url,
            "RECLAIM_SCORING_API_KEY": self.scheduler_key,
            "RECLAIM_CLOCK_SPEED": str(self.clock.speed),
            "RECLAIM_CLOCK_ORIGIN": self.clock.origin.isoformat(),
            "RECLAIM_CLOCK_WALL_ORIGIN": self.clock.wall_origin.isoformat(),
            "RECLAIM_SCHEDULER_LEASE_SECONDS": "2",
            "RECLAIM_LOG_LEVEL": "WARNING",
            **extra,
        }

    def scheduler(
        self, channels: dict | None = None, lease_seconds: float = 2.0, **options: Any
    ) -> Scheduler:
        """An in-process scheduler for this loop (``options``: more of ``Scheduler``'s)."""
        client = stripe.StripeClient(
            self.standin.api_key,
            base_addresses={"api": self.standin.url},
            http_client=stripe.RequestsClient(timeout=1),
        )
        return Scheduler(
            self.engine,
            client,
            ScoringClient(self.api_url, self.scheduler_key),
            channels or {},
            self.clock,
            Lease(self.engine, holder_id(), ttl=lease_seconds),
            poll_seconds=0.2,
            **options,
        )

    def open_work(self, runner: Scheduler | None = None) -> int:
        """Actions still open plus payments still waiting for a decision."""
        runner = runner or self.scheduler()
        with self.engine.connect() as conn:
            open_actions = conn.execute(
                sa.select(sa.func.count())
                .select_from(t.scheduled_actions)
                .where(t.scheduled_actions.c.status.in_(["scheduled", "in_flight"]))
            ).scalar()
        return int(open_actions) + len(runner.pending_decisions())

    def wait_until_done(self, timeout: float = 120.0) -> None:
        """Until every payment is settled: stored, decided, acted on, nothing open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stored_payments() == len(self.payments) and self.open_work() == 0:
                return
            time.sleep(0.5)
        with self.engine.connect() as conn:
            events = conn.execute(
                sa.select(t.stripe_events.c.type, t.stripe_events.c.status, t.stripe_events.c.error)
            ).all()
        raise AssertionError(
            f"not settled after {timeout:.0f} s: {self.stored_payments()} of "
            f"{len(self.payments)} payments stored, {self.open_work()} open; events: {events}"
        )

    def run_until_done(self, runner: Scheduler, timeout: float = 120.0) -> None:
        """Run ``runner`` in a thread until every payment is settled, then stop it."""
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        try:
            self.wait_until_done(timeout)
        finally:
            stop.set()
            thread.join(30)

    def stored_payments(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.payments)).scalar())

    def actions(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(t.scheduled_actions), conn)


def _failure_events(objects: dict, at: datetime) -> list[dict]:
    """The failure event of each payment."""
    return [
        payment_event("payment_failed", obj, scope, at)
        for scope, _, obj in payment_objects(objects)
    ]


def _outcome_by_hash(success_share: float):
    """A charge outcome that is the same for the same object and attempt, like truth."""

    def outcome(scope, resource, obj, at) -> str | None:
        tries = obj.setdefault("_standin_tries", 0) + 1
        obj["_standin_tries"] = tries
        digest = hashlib.sha256(f"{obj['id']}:{tries}".encode()).digest()
        return None if digest[0] / 256 < success_share else "insufficient_funds"

    return outcome


#: Tests that drive Debian's chromium: skipped where it is missing (`make test` installs it).
needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="no chromium/chromedriver: `make test` installs Debian's packages where it can",
)


def chromium(browser_logs: bool = False):
    """Debian's chromium through Selenium, headless in a 1280×900 window; with
    ``browser_logs`` the page's console is kept (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900"):  # fmt: skip
        options.add_argument(arg)
    if browser_logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _serve(app, port: int) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not become ready")


def stop_process(process: subprocess.Popen) -> str:
    """Stop a command the way a supervisor does (SIGTERM, then SIGKILL after a minute);
    returns what it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_loop(tmp_path, trained):
    """``make_loop(n_payments, faults=Faults(), max_retries=2)`` → a running :class:`Loop`
    whose ``n_payments`` failures (a mix of invoices and payment intents, direct and platform
    charges) have been delivered as signed webhooks."""
    started: list[tuple[uvicorn.Server, StripeStandIn]] = []

    def make(
        n: int = 12, faults: Faults | None = None, max_retries: int = 2, config: dict | None = None
    ) -> Loop:
        database = f"sqlite:///{tmp_path / 'loop.db'}"
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}"
        secrets_ = {"platform": "whsec_loop_p", "connect": "whsec_loop_c"}
        # a week of simulated time passes in about 8 seconds
        origin = datetime(2026, 6, 1, 12, tzinfo=UTC)
        clock = Clock(speed=72_000.0, origin=origin, wall_origin=datetime.now(UTC))
        standin = StripeStandIn(
            faults=faults or Faults(),
            outcome=_outcome_by_hash(0.3),
            webhooks={k: (f"{api_url}/v1/webhooks/stripe/{k}", v) for k, v in secrets_.items()},
            now=clock.now,
        )
        standin.__enter__()
        settings = Settings(
            database_url=database,
            mlflow_tracking_uri=trained.tracking_uri,
            stripe_webhook_secret_platform=SecretStr(secrets_["platform"]),
            stripe_webhook_secret_connect=SecretStr(secrets_["connect"]),
            stripe_api_key=SecretStr(standin.api_key),
            stripe_api_base=standin.url,
            policy_reload_seconds=3600,
        )
        upgrade(database)
        engine = make_engine(database)
        _, scheduler_key = create_key(engine, "scheduler")
        _, admin_key = create_key(engine, "admin")
        server = _serve(create_app(settings), port)
        started.append((server, standin))
        httpx.put(
            f"{api_url}/v1/accounts/*/config",
            json={"max_retries": max_retries, **(config or {})},
            headers={"Authorization": f"Bearer {admin_key}"},
        ).raise_for_status()

        payments = trained.market.payments.head(n).copy()
        payments["failed_at"] = pd.Timestamp(clock.now())
        tables = contract.ContractTables(
            payments=payments,
            attempts=contract.first_failures(payments),
            messages=contract.empty(contract.MESSAGES),
        )
        objects = to_stripe_objects(tables)
        standin.load(objects)
        for event in _failure_events(objects, clock.now()):
            standin.send_event(event)
        return Loop(api_url, scheduler_key, admin_key, database, engine, standin, clock, payments)

    yield make
    for server, standin in started:
        standin.__exit__(None, None, None)
        server.should_exit = True
