"""Shared helpers for the benchmarks: medians of repeated timings, peak memory, and a fresh
schema on the local PostgreSQL."""

from __future__ import annotations

import resource
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class NoPostgres(RuntimeError):
    """No PostgreSQL server answers at :data:`PG_URL`."""


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL for one run: yields its URL, dropped after.
    :class:`NoPostgres` where no server answers."""
    import sqlalchemy as sa

    schema = f"reclaim_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'create schema "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        raise NoPostgres(f"no server at {PG_URL} ({type(exc).__name__})") from exc
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
        admin.dispose()


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn`` and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def registered_policy_args(description: str) -> Any:
    """An argument parser for a benchmark of a registered policy on fresh simulated payments:
    ``--tracking-uri`` (required), ``--model``, ``--payments``, ``--seed``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model", default="models:/reclaim-policy@champion")
    parser.add_argument("--payments", type=int, default=8_000)
    parser.add_argument("--seed", type=int, default=8)
    return parser


def registered_policy_market(args: Any) -> tuple[Any, Any]:
    """The registered policy ``args.model`` and ``args.payments`` fresh payments (seed
    ``args.seed``) of the marketplace it was trained on."""
    import mlflow

    from reclaim.simulator import fresh_payments
    from reclaim.training.evaluate import simulated_market

    mlflow.set_tracking_uri(args.tracking_uri)
    model = mlflow.pyfunc.load_model(args.model)
    market = fresh_payments(simulated_market(model, args.model), args.payments, args.seed)
    return model.unwrap_python_model().policy, market
