"""The report's intervals against known truth: synthetic experiments
(:mod:`reclaim.simulator.experiments`) with a known uplift, run through the same
:func:`~reclaim.training.ab_report.build_report` that ``reclaim report`` uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reclaim.simulator.experiments import synthetic_experiment
from reclaim.training.ab_report import build_report

N_EXPERIMENTS = 100
N_BY_ACCOUNT = 50
N_AA = 100


def _run(seeds: range, uplift: float, unit: str = "customer", accounts: int = 40) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        e = synthetic_experiment(
            n_accounts=accounts, n_payments=3000, uplift=uplift, seed=seed, unit=unit
        )
        effects = build_report("coverage", e.tables, e.assignments, e.fx).effects
        for name, row in effects.iterrows():
            truth = e.true_rate_uplift if name.startswith("recovery") else e.true_revenue_uplift
            rows.append(
                {
                    "seed": seed,
                    "effect": name,
                    "covered": row["lo"] <= truth <= row["hi"],
                    "width": row["hi"] - row["lo"],
                    "significant": row["p_value"] < 0.05,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def with_uplift() -> pd.DataFrame:
    return _run(range(1000, 1000 + N_EXPERIMENTS), uplift=0.04)


@pytest.fixture(scope="module")
def a_a() -> pd.DataFrame:
    return _run(range(500, 500 + N_AA), uplift=0.0)


def test_the_95_percent_intervals_cover_the_true_uplift(with_uplift):
    coverage = with_uplift.groupby("effect")["covered"].mean()
    print(f"\ncoverage over {N_EXPERIMENTS} experiments with a 4-point uplift:\n{coverage}")
    assert (coverage >= 0.90).all(), coverage


def test_the_intervals_cover_the_truth_when_whole_accounts_are_randomized():
    runs = _run(range(2000, 2000 + N_BY_ACCOUNT), uplift=0.04, unit="account", accounts=100)
    coverage = runs.groupby("effect")["covered"].mean()
    print(f"\ncoverage over {N_BY_ACCOUNT} account-randomized experiments:\n{coverage}")
    assert (coverage >= 0.90).all(), coverage


def test_a_a_experiments_are_significant_at_no_more_than_the_nominal_rate(a_a):
    rate = a_a.groupby("effect")["significant"].mean()
    # 5% nominal; allowance of two binomial standard errors for N_AA experiments
    allowance = 0.05 + 2 * np.sqrt(0.05 * 0.95 / N_AA)
    print(f"\nshare significant over {N_AA} A/A experiments (allowed {allowance:.3f}):\n{rate}")
    assert (rate <= allowance).all(), rate


def test_cuped_narrows_the_interval_where_the_pre_period_predicts(with_uplift):
    width = with_uplift.pivot(index="seed", columns="effect", values="width")
    ratios = {
        m: float((width[f"{m}_cuped"] / width[m]).median())
        for m in ("recovery_rate", "revenue_per_payment")
    }
    print(f"\nCUPED interval width / plain width (median over experiments): {ratios}")
    assert ratios["recovery_rate"] < 0.97
    assert ratios["revenue_per_payment"] < 1.0
