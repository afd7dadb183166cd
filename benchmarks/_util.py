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
