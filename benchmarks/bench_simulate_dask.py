"""The reference policies and the oracle rolled out over one marketplace in one process and
on a ``--dask local`` cluster (what `reclaim simulate --evaluate --dask local` does): wall
time of each and whether every policy's tables came out equal.

The one-process run is the reference measured in the same run; the marketplace is drawn once
and shared by both.

    .venv/bin/python benchmarks/bench_simulate_dask.py [--payments N] [--workers W]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

TABLES = ("payments", "attempts", "messages", "decisions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=50_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from reclaim.cluster import connect
    from reclaim.simulator import compare, generate, reference_policies

    market = generate(args.accounts, args.payments, seed=7)
    policies = reference_policies(market)
    print(
        f"{args.payments:,} payments, {args.accounts:,} accounts; policies: {', '.join(policies)}"
    )

    start = time.perf_counter()
    table, one = compare(market, policies, seed=7)
    single = time.perf_counter() - start
    with connect("local", args.workers, "4GiB") as client:
        start = time.perf_counter()
        spread_table, spread = compare(market, policies, seed=7, client=client)
        on_dask = time.perf_counter() - start
    same = spread_table.equals(table) and all(
        getattr(spread[n].tables, t).equals(getattr(one[n].tables, t))
        and spread[n].outcomes.equals(one[n].outcomes)
        for n in policies
        for t in TABLES
    )
    attempts = sum(len(r.tables.attempts) for r in one.values())
    print(
        pd.DataFrame(
            {
                "run": ["one process", f"--dask local, {args.workers} workers"],
                "seconds": [round(single, 1), round(on_dask, 1)],
                "attempts/s": [round(attempts / single), round(attempts / on_dask)],
            }
        ).to_string(index=False)
    )
    print(f"speed-up {single / on_dask:.2f}x; every table and figure equal: {same}")


if __name__ == "__main__":
    main()
