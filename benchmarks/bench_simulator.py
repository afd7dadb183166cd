"""How long simulating and rolling out 100,000 failed payments takes (aim: under 60 s, 2 cores),
and how long the oracle (the ceiling, which plans every payment) takes over the same payments.

Prints medians over repeated runs, next to a reference measured in the same run on the same
machine (a plain pandas sort + group-by over a frame of the same size), because these machines
are shared and noisy: compare the ratio, not just the seconds.

    .venv/bin/python benchmarks/bench_simulator.py [--payments N] [--repeats K]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import pandas as pd
from _util import peak_rss_mib, timed

from reclaim import contract
from reclaim.reference import FixedSchedule, RandomizedLogging
from reclaim.simulator import Oracle, generate, rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.payments

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"k": rng.integers(0, n // 5, n * 5), "v": rng.random(n * 5)})
    t_ref, _ = timed(
        lambda: frame.sort_values("k").groupby("k")["v"].agg(["sum", "max"]), args.repeats
    )

    t_gen, market = timed(lambda: generate(args.accounts, n, seed=1), args.repeats)
    t_log, history = timed(lambda: rollout(market, RandomizedLogging(), seed=1), args.repeats)
    t_fixed, _ = timed(lambda: rollout(market, FixedSchedule(), seed=1), args.repeats)
    t_oracle, _ = timed(lambda: rollout(market, Oracle(market), seed=1), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        t_write, _ = timed(lambda: contract.write_tables(history.tables, tmp), args.repeats)

    total = t_gen + t_log + t_write
    rows = len(history.tables.attempts) + len(history.tables.decisions)
    print(
        f"simulator benchmark: {n:,} payments, {args.accounts} accounts, "
        f"median of {args.repeats} runs"
    )
    print(f"  reference (pandas sort+groupby, {len(frame):,} rows): {t_ref:8.2f} s")
    print(f"  generate marketplace:                         {t_gen:8.2f} s")
    print(
        f"  roll out logging policy (the simulate job):   {t_log:8.2f} s "
        f"({rows:,} attempt+decision rows)"
    )
    print(f"  roll out fixed_schedule:                      {t_fixed:8.2f} s")
    print(
        f"  roll out the oracle (plans every payment):    {t_oracle:8.2f} s "
        f"= {t_oracle / t_fixed:.1f}x fixed_schedule"
    )
    print(f"  validate + write contract tables:             {t_write:8.2f} s")
    print(
        f"  simulate total (generate+rollout+write):      {total:8.2f} s "
        f"= {total / t_ref:.0f}x reference; aim < 60 s"
    )
    print(f"  peak memory: {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
