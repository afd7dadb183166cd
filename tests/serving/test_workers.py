"""``reclaim serve --workers 2``: two uvicorn worker processes sharing PostgreSQL, each
deciding with its own policy and batcher, both following the registry's alias, and
``/metrics`` summing both; two accounts racing to store the same new payment id each get
their own payment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from prometheus_client.multiprocess import MultiProcessCollector

from reclaim.serving.auth import create_key
from reclaim.serving.store import tables as t
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.training.pipeline import MODEL_NAME

from .conftest import _free_port, stop_process

REQUESTS = 32
RACES = 150  # pairs of accounts posting the same new payment id at once


def _decisions_counted(text: str) -> float:
    return sum(
        float(v) for v in re.findall(r"^reclaim_decisions_total\{[^}]*\} (\S+)$", text, re.M)
    )


def _per_worker(folder: Path) -> dict[str, float]:
    """Decisions each worker process counted, from its own file."""
    out = {}
    for path in folder.glob("counter_*.db"):
        metrics = MultiProcessCollector.merge([str(path)], accumulate=True)
        out[path.stem.removeprefix("counter_")] = sum(
            s.value
            for m in metrics
            if m.name == "reclaim_decisions"
            for s in m.samples
            if s.name == "reclaim_decisions_total"
        )
    return out


def _race_two_accounts(base: str, store_url: str, inline_payment) -> None:
    """Accounts A and B, each with its own scoped key, post the same new payment id at once
    (one failed retry from A, one succeeded from B), 150 times across both workers: every
    payment holds its own account's attempts only (issue 27: 15 of 150 races crossed
    when ids were one namespace)."""
    a, b = "acct_race_a", "acct_race_b"
    engine = make_engine(store_url)
    keys = {acct: create_key(engine, "scheduler", [acct])[1] for acct in (a, b)}
    outcome = {a: "failed", b: "succeeded"}

    def post(job: tuple[int, str]) -> int:
        i, acct = job
        attempt = {"attempt_number": 1, "attempted_at": "2026-05-21T14:00:00Z",
                   "outcome": outcome[acct],
                   "decline_code": "insufficient_funds" if acct == a else None}  # fmt: skip
        body = {"payment": {**inline_payment(i % 20), "payment_id": f"in_race_{i}",
                            "account_id": acct},
                "attempts": [attempt], "now": "2026-05-22T14:00:00Z"}  # fmt: skip
        headers = {"Authorization": f"Bearer {keys[acct]}"}
        r = httpx.post(f"{base}/v1/decisions", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["account_id"] == acct
        return r.status_code

    jobs = [(i, acct) for i in range(RACES) for acct in (a, b)]  # each pair side by side
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(post, jobs)) == {200}
    at = t.attempts.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(at.account_id, at.payment_id, at.attempt_number, at.outcome).where(
                at.payment_id.like("in_race_%")
            )
        ).all()
        held = conn.execute(
            sa.select(t.payments.c.account_id, sa.func.count())
            .where(t.payments.c.payment_id.like("in_race_%"))
            .group_by(t.payments.c.account_id)
        ).all()
    engine.dispose()
    assert dict(held) == {a: RACES, b: RACES}
    assert len(rows) == 2 * RACES * 2  # each payment: its first failure and its own retry
    crossed = [r for r in rows if r.attempt_number == 1 and r.outcome != outcome[r.account_id]]
    assert crossed == [], f"{len(crossed)} of {RACES} races left another account's attempt"


@pytest.mark.postgres
def test_two_workers_share_postgresql_follow_the_alias_and_metrics_sum_them(
    postgres_url, trained, inline_payment, tmp_path
) -> None:
    store_url = postgres_url
    # a copy of the registry, so the session's champion stays version 1 for other tests
    registry_db = tmp_path / "mlflow.db"
    shutil.copy(trained.tracking_uri.removeprefix("sqlite:///"), registry_db)
    tracking = f"sqlite:///{registry_db}"
    upgrade(store_url)
    engine = make_engine(store_url)
    _, key = create_key(engine, "scheduler")
    engine.dispose()
    port = _free_port()
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"")  # an earlier run's file: removed
    env = {
        **os.environ,
        "RECLAIM_DATABASE_URL": store_url,
        "RECLAIM_MLFLOW_TRACKING_URI": tracking,
        "RECLAIM_POLICY_RELOAD_SECONDS": "0.5",
        "RECLAIM_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        # several workers must share one secret for dashboard sessions (serve refuses else)
        "RECLAIM_DASHBOARD_SESSION_SECRET": "workers-test-session-secret-0123456789",
    }
    reclaim = Path(sys.executable).with_name("reclaim")
    server = subprocess.Popen(
        [str(reclaim), "serve", "--workers", "2", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 4 and time.monotonic() < deadline:  # both workers load the policy
            try:
                ready = ready + 1 if httpx.get(f"{base}/readyz").status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            time.sleep(0.25)
        assert ready, "the workers did not become ready"
        headers = {"Authorization": f"Bearer {key}"}

        def ask(i: int) -> dict:
            body = {"payment": {**inline_payment(i % 20), "payment_id": f"in_workers_{i}"},
                    "now": "2026-05-20T14:00:00Z"}  # fmt: skip
            # a new connection each time, so the kernel hands them to both workers
            r = httpx.post(f"{base}/v1/decisions", json=body, headers=headers, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(REQUESTS)))
        assert [a["payment_id"] for a in answers] == [f"in_workers_{i}" for i in range(REQUESTS)]
        # the alias moves: every worker swaps to the new version on its own
        registry = MlflowClient(tracking, registry_uri=tracking)
        v1 = registry.get_model_version_by_alias(MODEL_NAME, "champion")
        assert {a["model_version"] for a in answers} == {str(v1.version)}

        # the logged model's own folder as the source: a ``models:/`` source is looked up
        # through MLflow's global tracking URI, which other tests in this process move
        model = registry.get_logged_model(v1.source.removeprefix("models:/"))
        v2 = registry.create_model_version(MODEL_NAME, model.artifact_location, run_id=v1.run_id)
        registry.set_registered_model_alias(MODEL_NAME, "champion", v2.version)
        asked, deadline = REQUESTS, time.monotonic() + 90
        with ThreadPoolExecutor(16) as pool:
            while time.monotonic() < deadline:
                round_ = list(pool.map(ask, range(asked, asked + 16)))
                asked += 16
                if {a["model_version"] for a in round_} == {str(v2.version)}:
                    break
                time.sleep(0.5)
        # (the store may hold versions other tests registered: the new one is v2.version)
        assert {a["model_version"] for a in round_} == {str(v2.version)}, "a worker kept v1"

        counted = _per_worker(folder)
        assert "999999" not in counted
        assert len(counted) == 2 and sum(counted.values()) == asked, counted
        for _ in range(4):  # whichever worker answers reports both
            assert _decisions_counted(httpx.get(f"{base}/metrics").text) == asked

        engine = make_engine(store_url)
        with engine.connect() as conn:
            logged = conn.execute(
                sa.select(sa.func.count())
                .select_from(t.decision_log)
                .where(t.decision_log.c.payment_id.like("in_workers_%"))
            ).scalar()
        engine.dispose()
        assert logged == asked
        _race_two_accounts(base, store_url, inline_payment)
    finally:
        out = stop_process(server)
    assert "Traceback" not in out, out
