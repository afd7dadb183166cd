"""Issue 29: the production topology of compose.yaml, run on this machine as processes (no
containers here): each service's command and environment read from compose.yaml itself, its
hosts mapped to 127.0.0.1 and a fresh PostgreSQL database each for Reclaim and MLflow.

The MLflow server starts on PostgreSQL with served artifacts; the migrate job runs once; the
training job registers a champion through the server; keys are made as the runbook says; the
API runs with 2 workers and loads the champion from the server; both schedulers start. Failed
payments arrive as signed webhooks from the Stripe stand-in; the leading scheduler is killed
with SIGKILL while it works and the standby finishes; the champion is promoted and rolled
back and the API serves what the alias names. Nothing is charged twice and no acknowledged
event is lost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from reclaim import contract
from reclaim.serving.clock import Clock
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.store.repository import make_engine
from reclaim.simulator.stripe_export import to_stripe_objects
from reclaim.simulator.stripe_standin import StripeStandIn
from reclaim.training import registry
from reclaim.training.data import sample_payments

from ..serving.conftest import (
    PG_URL,
    Loop,
    _failure_events,
    _free_port,
    _outcome_by_hash,
    _postgres_available,
)
from ..serving.test_scheduler import check_exactly_once
from . import compose

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
BIN = Path(sys.executable).parent


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh databases on the machine's PostgreSQL: Reclaim's and MLflow's."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    names = [f"reclaim_deploy_{uuid.uuid4().hex[:8]}", f"mlflow_deploy_{uuid.uuid4().hex[:8]}"]
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield names[0], names[1]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


class Topology:
    """compose.yaml's services as local processes, with their hosts mapped here."""

    def __init__(self, tmp: Path, databases: tuple[str, str], dotenv: dict[str, str]):
        self.tmp, self.dotenv = tmp, dotenv
        self.spec = compose.load()
        self.ports = {"mlflow": _free_port(), "api": _free_port()}
        reclaim_db, mlflow_db = databases
        pg = PG_URL.rsplit("/", 1)[0].split("@")[1]  # 127.0.0.1:5432
        self.local = {  # compose's network names → this machine
            "@postgres:5432/reclaim": f"@{pg}/{reclaim_db}",
            "@postgres:5432/mlflow": f"@{pg}/{mlflow_db}",
            "http://mlflow:5000": f"http://127.0.0.1:{self.ports['mlflow']}",
            "mlflow:5000": f"127.0.0.1:{self.ports['mlflow']}",
            "http://api:8000": f"http://127.0.0.1:{self.ports['api']}",
            "/artifacts": str(tmp / "artifacts"),
            "/data/export": str(tmp / "export"),
            "0.0.0.0": "127.0.0.1",
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def _map(self, value: str) -> str:
        for theirs, ours in self.local.items():
            value = value.replace(theirs, ours)
        return value

    def command(self, name: str, **extra_env: str) -> tuple[list[str], dict[str, str]]:
        """Service ``name``'s argv and environment, here."""
        svc = compose.service(self.spec, name, self.dotenv)
        argv = [self._map(a) for a in svc.argv]
        argv[0] = str(BIN / argv[0])
        if "--port" in argv:  # the port a service listens on: a free one here
            port = {"mlflow": self.ports["mlflow"], "api": self.ports["api"]}[name]
            argv[argv.index("--port") + 1] = str(port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECLAIM_")}
        env |= self.dotenv if svc.env_file else {}
        env |= {k: self._map(v) for k, v in svc.environment.items()}
        env |= extra_env
        return argv, env

    def run(self, name: str, *more: str, **extra_env: str) -> str:
        """Run a one-shot service (or a command with a service's environment) to its end."""
        argv, env = self.command(name, **extra_env)
        done = subprocess.run([*argv, *more], env=env, capture_output=True, text=True,
                              timeout=600, cwd=self.tmp)  # fmt: skip
        assert done.returncode == 0, f"{name} {more}: {done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def start(self, name: str, as_name: str | None = None, **extra_env: str) -> None:
        argv, env = self.command(name, **extra_env)
        log = self.tmp / f"{as_name or name}.log"
        self.logs[as_name or name] = log
        self.processes[as_name or name] = subprocess.Popen(
            argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=self.tmp,
            start_new_session=True,
        )  # fmt: skip

    def wait_http(self, name: str, url: str, timeout: float = 180) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            assert process.poll() is None, f"{name} ended: {self.logs[name].read_text()[-3000:]}"
            try:
                answer = httpx.get(url, timeout=5)
                if answer.status_code == 200:
                    return answer
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{name} not ready: {self.logs[name].read_text()[-3000:]}")

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _leader_pid(engine: sa.Engine) -> int | None:
    with engine.connect() as conn:
        holder = conn.execute(
            sa.select(t.scheduler_leader.c.holder, t.scheduler_leader.c.expires_at)
        ).first()
    if holder is None or repo.aware(holder.expires_at) < datetime.now(UTC):
        return None
    return int(holder.holder.split(":")[1])


def test_compose_topology_fails_over_rolls_back_and_charges_each_retry_once(
    tmp_path, trained, databases
) -> None:
    secrets = {"platform": "whsec_deploy_p", "connect": "whsec_deploy_c"}
    clock = Clock(speed=72_000.0, origin=datetime(2026, 6, 1, 12, tzinfo=UTC),
                  wall_origin=datetime.now(UTC))  # fmt: skip
    given, _ = compose.env_example()
    with StripeStandIn(outcome=_outcome_by_hash(0.3), now=clock.now) as standin:
        # .env as an operator fills it in from .env.example: every line it leaves to fill
        dotenv = {
            "POSTGRES_USER": PG_URL.split("//")[1].split("@")[0],
            "POSTGRES_PASSWORD": "unused-with-trust-auth",
            "RECLAIM_STRIPE_API_KEY": standin.api_key,
            "RECLAIM_STRIPE_WEBHOOK_SECRET_PLATFORM": secrets["platform"],
            "RECLAIM_STRIPE_WEBHOOK_SECRET_CONNECT": secrets["connect"],
            "RECLAIM_DASHBOARD_SESSION_SECRET": "a-long-random-session-secret-for-the-test",
            "RECLAIM_SCORING_API_KEY": "",  # made below, as the runbook says
        }
        assert set(given) == set(dotenv), "the test fills every line .env.example leaves"
        top = Topology(tmp_path, databases, dotenv)
        # this machine's stand-ins for what production has: the Stripe stand-in, simulated
        # time for the schedulers, short lease and reload times so the test does not wait
        here = {"RECLAIM_STRIPE_API_BASE": standin.url, "RECLAIM_LOG_LEVEL": "INFO"}
        fast = {"RECLAIM_SCHEDULER_LEASE_SECONDS": "2", "RECLAIM_STRIPE_TIMEOUT_SECONDS": "2",
                "RECLAIM_CLOCK_SPEED": str(clock.speed),
                "RECLAIM_CLOCK_ORIGIN": clock.origin.isoformat(),
                "RECLAIM_CLOCK_WALL_ORIGIN": clock.wall_origin.isoformat()}  # fmt: skip
        try:
            (tmp_path / "artifacts").mkdir()
            # the platform's export: 30% of the trained history's payments, whole (the
            # topology is under test here, not the model; training on all of them took 40 s)
            history = contract.read_tables(trained.data_dir)
            contract.write_tables(sample_payments(history, 0.3), tmp_path / "export")
            top.start("mlflow")  # it migrates its own database while Reclaim's migrates
            migrated = top.run("migrate", **here)
            assert "migrated the store from an empty database to" in migrated
            assert "already at migration" in top.run("migrate", **here)  # once is enough
            top.wait_http("mlflow", f"http://127.0.0.1:{top.ports['mlflow']}/health")

            trained_out = top.run("train", "--gate-payments", "500", **here)
            assert "gate: champion" in trained_out, trained_out[-3000:]
            server = MlflowClient(f"http://127.0.0.1:{top.ports['mlflow']}")
            first = registry.champion(server)
            assert first is not None
            # artifacts are served by the MLflow server, stored on its volume
            assert any((tmp_path / "artifacts").rglob("MLmodel"))

            keys = top.command("migrate", **here)[1]  # the runbook: keys in the store
            created = subprocess.run(
                [str(BIN / "reclaim"), "keys", "create", "--role", "scheduler"], env=keys,
                capture_output=True, text=True, check=True, cwd=tmp_path,
            ).stdout  # fmt: skip
            scheduler_key = created.strip().splitlines()[-1]
            admin_key = subprocess.run(
                [str(BIN / "reclaim"), "keys", "create", "--role", "admin"], env=keys,
                capture_output=True, text=True, check=True, cwd=tmp_path,
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            assert len(scheduler_key) > 20 and " " not in scheduler_key, created
            top.dotenv["RECLAIM_SCORING_API_KEY"] = scheduler_key
            api_url = f"http://127.0.0.1:{top.ports['api']}"

            top.start("api", **here, RECLAIM_POLICY_RELOAD_SECONDS="2")
            ready = top.wait_http("api", f"{api_url}/readyz", timeout=240)
            assert ready.json()["policy_version"] == first
            httpx.put(
                f"{api_url}/v1/accounts/*/config", json={"max_retries": 2, "allowed_channels": []},
                headers={"Authorization": f"Bearer {admin_key}"},
            ).raise_for_status()  # fmt: skip

            metrics = {name: str(_free_port()) for name in ("scheduler-a", "scheduler-b")}
            for name in ("scheduler-a", "scheduler-b"):
                top.start(name, **here, **fast, RECLAIM_SCHEDULER_METRICS_PORT=metrics[name])
            engine = make_engine(top.command("migrate")[1]["RECLAIM_DATABASE_URL"])
            deadline = time.monotonic() + 60
            while _leader_pid(engine) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            leader = _leader_pid(engine)
            assert leader is not None, top.logs["scheduler-a"].read_text()[-2000:]

            # failed payments arrive as Stripe sends them: signed webhooks to both endpoints
            standin.webhooks = {
                k: (f"{api_url}/v1/webhooks/stripe/{k}", v) for k, v in secrets.items()
            }
            payments = trained.market.payments.head(16).copy()
            payments["failed_at"] = pd.Timestamp(clock.now())
            tables = contract.ContractTables(
                payments=payments, attempts=contract.first_failures(payments),
                messages=contract.empty(contract.MESSAGES),
            )  # fmt: skip
            objects = to_stripe_objects(tables)
            standin.load(objects)
            for event in _failure_events(objects, clock.now()):
                standin.send_event(event)
            loop = Loop(api_url, scheduler_key, admin_key, str(engine.url), engine, standin,
                        clock, payments)  # fmt: skip

            # the leader works; killed mid-run, the standby takes the lease and finishes
            deadline = time.monotonic() + 120
            while sum(standin.executed.values()) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert standin.executed, "nothing was charged before the kill"
            killed = next(n for n, p in top.processes.items() if p.pid == leader)
            os.killpg(leader, signal.SIGKILL)
            top.processes[killed].wait(10)
            assert loop.open_work() > 0, "the kill came after all the work: it tested nothing"
            standby = next(n for n in metrics if n != killed)
            loop.wait_until_done(timeout=180)
            assert _leader_pid(engine) == top.processes[standby].pid
            assert "leading as" in top.logs[standby].read_text()
            leading = httpx.get(f"http://127.0.0.1:{metrics[standby]}/metrics").text
            assert re.search(r"^reclaim_scheduler_leading 1\.0$", leading, re.M), leading[-800:]
            check_exactly_once(loop, max_retries=2)

            # nothing acknowledged was lost: every event the API answered 2xx is stored and
            # done with, and every payment sent is stored
            with engine.connect() as conn:
                events = dict(conn.execute(
                    sa.select(t.stripe_events.c.event_id, t.stripe_events.c.status)
                ).all())  # fmt: skip
            acknowledged = {eid for eid, _, status in standin.delivered if 200 <= status < 300}
            assert acknowledged and acknowledged <= set(events)
            assert {events[e] for e in acknowledged} <= {"processed", "ignored"}
            assert loop.stored_payments() == len(payments)

            # a new champion by hand, then rolled back: the API serves what the alias names
            source = server.get_model_version(registry.MODEL_NAME, first)
            second = server.create_model_version(
                registry.MODEL_NAME,
                source.source,
                run_id=source.run_id,
                model_id=source.model_id or source.source.rsplit("/", 1)[-1],
            ).version  # the same model again: a second version to promote and roll back
            for args, want in ((["promote", str(second)], str(second)), (["rollback"], first)):
                argv, env = top.command("train", **here)
                subprocess.run([argv[0], "models", *args], env=env, check=True,
                               capture_output=True, cwd=tmp_path)  # fmt: skip
                deadline = time.monotonic() + 60
                served: set[str] = set()
                while time.monotonic() < deadline:
                    # the two workers answer in turn: both must serve it
                    served = {httpx.get(f"{api_url}/readyz").json().get("policy_version")
                              for _ in range(8)}  # fmt: skip
                    if served == {want}:
                        break
                    time.sleep(0.5)
                assert served == {want}, (args, served)

            # the logs are JSON lines; the API's carry request ids, the scheduler's action ids
            api_lines = [json.loads(x) for x in top.logs["api"].read_text().splitlines()
                         if x.startswith("{")]  # fmt: skip
            assert any("request_id" in x for x in api_lines)
            work = [json.loads(x) for x in top.logs[standby].read_text().splitlines()
                    if x.startswith("{")]  # fmt: skip
            assert work and all({"time", "level", "message"} <= set(x) for x in work)
        finally:
            top.stop_all()
