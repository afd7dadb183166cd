"""``reclaim report`` on the operational store, SQLite and PostgreSQL: assignments and
contract rows read back, the account configuration's opt-outs, a clear error for an
experiment with no assignments."""

from __future__ import annotations

from datetime import UTC, datetime

from typer.testing import CliRunner

from reclaim.cli import app
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.settings import get_settings
from reclaim.simulator.experiments import synthetic_experiment

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
    assert "recovery_rate_cuped" in ok.output
    assert missing.exit_code == 2 and "stored experiments: {'stored': 750}" in missing.output
