"""``reclaim report`` on the operational store, SQLite and PostgreSQL: assignments and
contract rows read back, the account configuration's opt-outs, a clear error for an
experiment with no assignments; the store reads only the experiment's payments and counts the
pre-period in SQL, and the report is the same."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pandas as pd
import pytest
from typer.testing import CliRunner

from reclaim import contract
from reclaim.cli import app
from reclaim.rules import NetworkRules
from reclaim.serving.store import experiments
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.settings import get_settings
from reclaim.simulator.config import SimulatorConfig
from reclaim.simulator.experiments import synthetic_experiment
from reclaim.training import ab_report

runner = CliRunner()


def test_report_command_on_the_operational_store(engine, store_url, monkeypatch):
    experiment = synthetic_experiment(n_accounts=12, n_payments=1500, uplift=0.05, seed=7)
    repo.save_contract(engine, experiment.tables)
    rows = experiment.assignments.assign(
        experiment="stored",
        account_id=lambda f: f["payment_id"].map(
            experiment.tables.payments.set_index("payment_id")["account_id"]
        ),
        assigned_at=datetime.now(UTC),
    )
    with engine.begin() as conn:
        conn.execute(t.experiment_assignments.insert(), rows.to_dict("records"))
    monkeypatch.setenv("RECLAIM_DATABASE_URL", store_url)
    get_settings.cache_clear()
    try:
        ok = runner.invoke(app, ["report", "--experiment", "stored", "--fx", "simulator",
                                 "--no-mlflow"])  # fmt: skip
        missing = runner.invoke(app, ["report", "--experiment", "nope", "--no-mlflow"])
    finally:
        get_settings.cache_clear()
    assert ok.exit_code == 0, ok.output
    assert "adjusted by each account's earlier rate (CUPED)" in ok.output
    assert missing.exit_code == 2 and "stored experiments: {'stored': 750}" in missing.output


def _store_experiment(engine, experiment) -> None:
    repo.save_contract(engine, experiment.tables)
    owner = experiment.tables.payments.set_index("payment_id")["account_id"]
    rows = experiment.assignments.assign(
        experiment="stored",
        account_id=lambda f: f["payment_id"].map(owner),
        assigned_at=datetime.now(UTC),
    )
    with engine.begin() as conn:
        conn.execute(t.experiment_assignments.insert(), rows.to_dict("records"))


def test_the_stores_inputs_give_the_report_of_the_whole_tables(engine):
    """The store reads only the experiment's payments and counts the pre-period in SQL; the
    report is the one computed from every stored table in pandas."""
    experiment = synthetic_experiment(n_accounts=12, n_payments=1500, uplift=0.05, seed=7)
    _store_experiment(engine, experiment)
    tables, assignments, opted_out, pre = experiments.report_inputs(engine, "stored")
    assert set(tables.payments["payment_id"]) == set(assignments["payment_id"])
    whole = repo.load_contract(engine)
    assert len(whole.payments) > len(tables.payments)  # the pre-period was left in the store
    start = whole.payments.set_index("payment_id").loc[assignments["payment_id"], "failed_at"]
    expected_pre = ab_report.pre_period_counts(whole, start.min(), NetworkRules().window_days)
    assert pre.sum().to_dict() == expected_pre.sum().to_dict()
    assert expected_pre["payments"].sum() > 0 and 0 < expected_pre["recovered"].sum()
    pd.testing.assert_frame_equal(pre.sort_index(), expected_pre.sort_index(), check_names=False)

    fx = dict(SimulatorConfig().usd_per_unit)
    mine = ab_report.build_report("stored", tables, assignments, fx, opted_out=opted_out, pre=pre)
    full = ab_report.build_report("stored", whole, assignments, fx, opted_out=opted_out)
    for part in ("arms", "effects", "accounts", "guardrails"):
        pd.testing.assert_frame_equal(getattr(mine, part), getattr(full, part))
    assert "recovery_rate_cuped" in mine.effects.index


def test_a_scoped_report_reads_its_accounts_alone(engine):
    """For a key scoped to some accounts: their assignments, payments and pre-period only; the
    report is the one of the experiment as it ran on those accounts (tables holding nothing
    else)."""
    experiment = synthetic_experiment(n_accounts=12, n_payments=1500, uplift=0.05, seed=7)
    _store_experiment(engine, experiment)
    whole = repo.load_contract(engine)
    mine = set(sorted(whole.payments["account_id"].astype(str).unique())[:3])
    tables, assignments, opted_out, pre = experiments.report_inputs(engine, "stored", accounts=mine)
    assert set(assignments["account_id"]) == mine == set(tables.payments["account_id"])
    assert set(pre.index) == mine

    def only(frame: pd.DataFrame, ids: set) -> pd.DataFrame:
        return frame[frame["payment_id"].isin(ids)].reset_index(drop=True)

    ids = set(whole.payments.loc[whole.payments["account_id"].isin(mine), "payment_id"])
    alone = contract.validate({name: only(getattr(whole, name), ids)
                               for name in ("payments", "attempts", "messages")})  # fmt: skip
    fx = dict(SimulatorConfig().usd_per_unit)
    mine_report = ab_report.build_report("s", tables, assignments, fx, opted_out=opted_out, pre=pre)
    expected = ab_report.build_report("s", alone, assignments, fx, opted_out=opted_out)
    for part in ("arms", "effects", "accounts"):
        pd.testing.assert_frame_equal(getattr(mine_report, part), getattr(expected, part))
    with pytest.raises(LookupError, match="no payments of these accounts"):
        experiments.report_inputs(engine, "stored", accounts={"acct_nobody"})


def test_pre_period_counts_a_recovery_at_the_windows_very_end(engine):
    """A success exactly ``window_days`` after the failure counts, a microsecond later does
    not, whatever the failure's fraction of a second: as pandas counts them."""
    experiment = synthetic_experiment(n_accounts=3, n_payments=200, uplift=0.0, seed=3)
    tables = experiment.tables
    first = (
        tables.payments.set_index("payment_id")
        .loc[experiment.assignments["payment_id"], "failed_at"]
        .min()
    )
    window = pd.Timedelta(days=NetworkRules().window_days)
    base = tables.payments.iloc[0]
    payments, attempts = [], []
    for i, (fraction, late) in enumerate(
        [(0, 0), (0, 1), (999_999, 0), (999_999, 1), (500_000, 0), (1, 1)]
    ):
        pid = f"in_edge_{i}"
        failed = (first - pd.Timedelta(days=40)).floor("s") + pd.Timedelta(microseconds=fraction)
        payments.append({**base.to_dict(), "payment_id": pid, "failed_at": failed})
        for k, (at, outcome) in enumerate(
            [(failed, "failed"), (failed + window + pd.Timedelta(microseconds=late), "succeeded")]
        ):
            attempts.append({"payment_id": pid, "attempt_number": k, "attempted_at": at,
                             "initiator": "merchant", "outcome": outcome,
                             "decline_code": "insufficient_funds" if k == 0 else None,
                             "advice_code": None, "network_decline_code": None,
                             "network_advice_code": None, "policy": None,
                             "propensity": float("nan")})  # fmt: skip
    edges = contract.validate(
        {
            "payments": pd.concat([tables.payments, pd.DataFrame(payments)], ignore_index=True),
            "attempts": pd.concat([tables.attempts, pd.DataFrame(attempts)], ignore_index=True),
            "messages": tables.messages,
        }
    )
    experiment = dataclasses.replace(experiment, tables=edges)
    _store_experiment(engine, experiment)
    pre = experiments.pre_period_counts(engine, "stored", NetworkRules().window_days)
    expected = ab_report.pre_period_counts(edges, first, NetworkRules().window_days)
    pd.testing.assert_frame_equal(pre.sort_index(), expected.sort_index(), check_names=False)
    ids = {p["payment_id"] for p in payments}
    alone = contract.validate(
        {name: frame[frame["payment_id"].isin(ids)].reset_index(drop=True)
         for name, frame in (("payments", edges.payments), ("attempts", edges.attempts),
                             ("messages", edges.messages))}
    )  # fmt: skip
    counted = ab_report.pre_period_counts(alone, first, NetworkRules().window_days)
    assert counted.to_dict("records") == [{"payments": 6, "recovered": 3}]
