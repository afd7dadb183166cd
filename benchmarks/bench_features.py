"""Build decision rows for 1,000,000 simulated attempts: rows per second and peak memory.

Aim: at least 200,000 decision rows per second on 2 cores. The history is simulated once and
written as contract tables; the measurement then runs in a fresh process (so the simulation's
memory does not count), next to a reference measured in the same process: a plain pandas sort
and group-by over the same attempts table.

    .venv/bin/python benchmarks/bench_features.py [--attempts N] [--repeats K]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

from _util import peak_rss_mib, timed


def measure(folder: str, repeats: int) -> None:
    from reclaim import contract
    from reclaim.features.decisions import build_decision_rows

    tables = contract.read_tables(folder)
    loaded = peak_rss_mib()
    a = tables.attempts
    t_ref, _ = timed(
        lambda: (
            a.sort_values(["payment_id", "attempted_at"])
            .groupby("payment_id", sort=False)
            .cumcount()
        ),
        repeats,
    )
    t_rows, (keys, _) = timed(lambda: build_decision_rows(tables), repeats)
    rate = len(keys) / t_rows
    print(
        f"features benchmark: {len(a):,} attempts, {len(tables.payments):,} payments, "
        f"median of {repeats} runs"
    )
    print(f"  reference (pandas sort + group-by cumcount):  {t_ref:7.2f} s")
    print(
        f"  build_decision_rows:                          {t_rows:7.2f} s "
        f"= {t_rows / t_ref:.1f}x reference"
    )
    print(f"  decision rows: {len(keys):,} -> {rate:,.0f} rows/s (aim >= 200,000)")
    print(
        f"  peak memory: {peak_rss_mib():,.0f} MiB "
        f"({peak_rss_mib() - loaded:,.0f} MiB above the loaded tables)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.repeats)
        return

    from reclaim import contract
    from reclaim.reference import RandomizedLogging
    from reclaim.simulator import generate, rollout

    payments = int(args.attempts / 4.7)  # the logging policy makes ~4.7 attempts a payment
    tables = rollout(generate(1_000, payments, seed=3), RandomizedLogging(), seed=3).tables
    with tempfile.TemporaryDirectory() as tmp:
        contract.write_tables(tables, tmp)
        subprocess.run(
            [sys.executable, __file__, "--measure", tmp, "--repeats", str(args.repeats)], check=True
        )


if __name__ == "__main__":
    main()
