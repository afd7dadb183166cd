"""Scheduler benchmark: 10,000 due retries carried out against the Stripe stand-in.

Stores 10,000 failed payments (SQLite) with one scheduled retry each, due spread over
``--spread`` seconds from the start, loads their Stripe objects into the stand-in, and runs
the scheduler (APScheduler, its job store in the same database, ``--workers`` threads) until
every action is done. Each action goes the whole way: re-check against the store and the
network rules, ``invoices.pay`` / ``payment_intents.confirm`` through the official SDK over
HTTP with its idempotency key, the attempt recorded; a declined payment is then planned again.
Decisions are out of scope here (``bench_api.py`` measures them): the decider answers
"no retry" at once, so each payment is retried exactly once.

Prints actions per second and the delay from each action's due time to its completion
(p50, p99), beside the stand-in's own round trip for one ``pay`` measured in the same run.

    .venv/bin/python benchmarks/bench_scheduler.py [--actions 10000] [--workers 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
import stripe
from rich.progress import Progress

from reclaim import contract
from reclaim.serving.clock import Clock
from reclaim.serving.leader import Lease, holder_id
from reclaim.serving.scheduler import NoRetry, Scheduler, action_row
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.store.migrate import upgrade
from reclaim.simulator import generate
from reclaim.simulator.stripe_export import to_stripe_objects
from reclaim.simulator.stripe_standin import StripeStandIn


def _prepare(engine: sa.Engine, n: int, start: datetime, spread: float) -> pd.DataFrame:
    payments = generate(50, n, seed=9).payments.copy()
    # failed twelve days ago: past every network wait (Mastercard advice codes 28-30 ask days)
    payments["failed_at"] = pd.Timestamp(start - timedelta(days=12))
    tables = contract.ContractTables(
        payments=payments,
        attempts=contract.first_failures(payments),
        messages=contract.empty(contract.MESSAGES),
    )
    repo.save_contract(engine, tables)
    due = [start + timedelta(seconds=spread * i / n) for i in range(n)]
    decided = start - timedelta(hours=1)
    rows = [
        action_row(p.payment_id, p.account_id, 0, 0, decided, at, "bench", 1.0)
        for p, at in zip(payments.itertuples(), due, strict=True)
    ]
    with engine.begin() as conn:
        conn.execute(t.scheduled_actions.insert(), rows)
    return payments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--spread", type=float, default=30.0, help="seconds over which they fall due"
    )
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        StripeStandIn(
            outcome=lambda scope, resource, obj, at: (
                None if zlib.crc32(obj["id"].encode()) % 3 == 0 else "insufficient_funds"
            )
        ) as standin,
    ):
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = repo.make_engine(url)
        start = datetime.now(UTC) + timedelta(seconds=20)
        print(f"preparing {args.actions:,} payments and their scheduled retries ...", flush=True)
        payments = _prepare(engine, args.actions, start, args.spread)
        objects = to_stripe_objects(
            contract.ContractTables(
                payments, contract.first_failures(payments), contract.empty(contract.MESSAGES)
            )
        )
        standin.load(objects)
        client = stripe.StripeClient(
            standin.api_key,
            base_addresses={"api": standin.url},
            http_client=stripe.RequestsClient(timeout=10),
        )
        # reference: one read round trip through the SDK to the stand-in, same run
        probe = payments.iloc[0]
        ref = []
        for _ in range(50):
            s = time.perf_counter()
            try:
                client.v1.customers.retrieve(
                    probe["customer_id"],
                    None,
                    {"stripe_account": probe["account_id"]}
                    if probe["charge_model"] == "direct"
                    else {},
                )
            except stripe.StripeError:
                pass
            ref.append(time.perf_counter() - s)
        runner = Scheduler(
            engine,
            client,
            NoRetry(),
            {},
            Clock(),
            Lease(engine, holder_id()),
            workers=args.workers,
            poll_seconds=0.5,
        )
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        a = t.scheduled_actions.c
        with Progress() as progress:
            task = progress.add_task("actions done", total=args.actions)
            done = 0
            while done < args.actions:
                time.sleep(0.5)
                with engine.connect() as conn:
                    done = conn.execute(
                        sa.select(sa.func.count())
                        .where(a.after_attempt == 0)
                        .where(a.status.not_in(["scheduled", "in_flight"]))
                    ).scalar()
                progress.update(task, completed=done)
        stop.set()
        thread.join(60)
        with engine.connect() as conn:
            rows = pd.read_sql(
                sa.select(a.retry_at, a.updated_at, a.outcome).where(a.after_attempt == 0), conn
            )
    due = pd.to_datetime(rows["retry_at"], utc=True)
    finished = pd.to_datetime(rows["updated_at"], utc=True)
    delay = (finished - due).dt.total_seconds().to_numpy()
    span = (finished.max() - due.min()).total_seconds()
    charged = sum(standin.executed.values())
    print(
        f"\nScheduler benchmark: {args.actions:,} due retries, {args.workers} workers, SQLite, "
        f"stand-in over HTTP; due over {args.spread:.0f} s"
    )
    print(f"  outcomes: {rows['outcome'].value_counts().to_dict()}")
    print(
        f"  charges executed by the stand-in: {charged:,}; "
        f"most for one key: {max(standin.executed.values())}"
    )
    print(
        f"  throughput: {args.actions / span:,.0f} actions/s (first due to last done: {span:.1f} s)"
    )
    print(
        f"  due -> done delay: p50 {np.percentile(delay, 50) * 1e3:,.0f} ms, "
        f"p99 {np.percentile(delay, 99) * 1e3:,.0f} ms"
    )
    print(
        f"  reference, one SDK round trip to the stand-in: "
        f"median {statistics.median(ref) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
