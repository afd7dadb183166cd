"""The experiment report: attribution to the cent, clear errors for bad input, and the
``reclaim report`` command on contract tables (HTML and MLflow) and on the store."""

from __future__ import annotations

import re

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from reclaim import contract
from reclaim.cli import app
from reclaim.simulator.experiments import synthetic_experiment
from reclaim.training.ab_report import ReportError, build_report

runner = CliRunner()


@pytest.fixture(scope="module")
def experiment():
    return synthetic_experiment(n_accounts=12, n_payments=1500, uplift=0.05, seed=7)


def test_attribution_adds_up_to_the_recovered_revenue_to_the_cent(experiment):
    report = build_report("attr", experiment.tables, experiment.assignments, experiment.fx)
    # independently: the amounts of assigned payments with a success inside their window
    p = experiment.tables.payments.set_index("payment_id")
    a = experiment.tables.attempts
    ok = a[a["outcome"] == "succeeded"].groupby("payment_id")["attempted_at"].min()
    assigned = experiment.assignments.set_index("payment_id")
    window_end = p["failed_at"] + pd.Timedelta(days=30)
    recovered = [pid for pid in assigned.index if pid in ok.index and ok[pid] <= window_end[pid]]
    expected = (
        p.loc[recovered]
        .assign(arm=assigned.loc[recovered, "arm"])
        .groupby(["arm", "currency"], observed=True)["amount"]
        .sum()
    )
    total = report.attribution["total"]
    assert total["recovered"].to_dict() == expected.astype("int64").to_dict()
    for name, table in report.attribution.items():
        assert (table["recovered"] == table["platform_fee"] + table["account_share"]).all(), name
        assert table.dtypes.eq("int64").all(), name
        sums = table.groupby(level=["arm", "currency"]).sum()
        pd.testing.assert_frame_equal(sums, total, check_names=False, obj=name)
    fees = p.loc[recovered, "application_fee_amount"].sum()
    assert int(total["platform_fee"].sum()) == int(fees)


def test_bad_input_is_refused_with_what_is_wrong(experiment):
    tables, assignments = experiment.tables, experiment.assignments
    ghost = pd.concat(
        [assignments, pd.DataFrame([{"payment_id": "in_ghost", "unit_id": "c", "arm": "control"}])]
    )
    with pytest.raises(ReportError, match="not stored, e.g. \\['in_ghost'\\]"):
        build_report("x", tables, ghost, experiment.fx)
    with pytest.raises(ReportError, match="unknown arm\\(s\\) \\['blue'\\]"):
        build_report("x", tables, assignments.assign(arm="blue"), experiment.fx)
    with pytest.raises(ReportError, match="no exchange rate for \\['aud'"):
        build_report("x", tables, assignments, {"usd": 1.0, "eur": 1.1})
    with pytest.raises(ReportError, match="lack column"):
        build_report("x", tables, assignments.drop(columns="arm"), experiment.fx)


def test_report_command_on_contract_tables_writes_html_and_logs_to_mlflow(experiment, tmp_path):
    folder = tmp_path / "tables"
    contract.write_tables(experiment.tables, folder)
    experiment.assignments.to_parquet(folder / "assignments.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    html = tmp_path / "out" / "report.html"
    result = runner.invoke(
        app,
        ["report", "--experiment", "synthetic", "--tables", str(folder), "--fx", "simulator",
         "--html", str(html), "--tracking-uri", uri],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Effects (treatment - control)" in result.output
    assert result.output.startswith("Verdict: "), result.output[:200]
    page = html.read_text()
    for section in ("Uplift per connected account", "Guardrails", "Recovery by decline category",
                    "Attribution by channel", "data:image/png;base64,",
                    'download="per_account_uplift.csv"'):  # fmt: skip
        assert section in page
    # the verdict comes first; numbers are written for people, in the page and the terminal
    assert page.index('class="verdict"') < page.index("<h2>Arms</h2>")
    text = re.sub(r'(src|href)="data:[^"]*"', "", page)
    for shown in (text, result.output):
        assert not re.search(r"\d\.?\d*e[+-]\d\d", shown), "scientific notation"
        assert not re.search(r"\bnan\b|\bNaN\b", shown), "a missing figure as nan"
    assert re.search(r"Recovery rate</td><td>\d+\.\d%</td><td>\d+\.\d%</td><td>[+-]\d+\.\d pts "
                     r"\(95% CI [+-]\d+\.\d to [+-]\d+\.\d\)</td>", text)  # fmt: skip
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["ab-synthetic"], output_format="list")[0]
    assert "recovery_rate_diff" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {"report.html", "recovered_over_time.png", "account_uplift.png"} <= artifacts

    bad = runner.invoke(
        app, ["report", "--experiment", "x", "--tables", str(folder), "--fx", "usd=1"]
    )
    assert bad.exit_code == 2 and "no exchange rate" in bad.output


def test_a_report_on_payments_never_messaged(experiment):
    tables = contract.ContractTables(
        experiment.tables.payments,
        experiment.tables.attempts,
        contract.empty(contract.MESSAGES),
    )
    report = build_report("silent", tables, experiment.assignments, experiment.fx)
    assert set(report.frame["channel"]) == {"none"}
    assert list(report.breakdowns["channel"].index) == ["none"]
    assert (report.arms["messages_per_payment"] == 0).all()


def test_attribution_is_shown_in_major_units_per_currency() -> None:
    import pandas as pd

    from reclaim.training.ab_publish import in_major_units

    index = pd.MultiIndex.from_tuples(
        [("control", "usd"), ("control", "jpy")], names=["arm", "currency"]
    )
    table = pd.DataFrame(
        {"recovered": [114_693, 4_900], "platform_fee": [11_469, 490],
         "account_share": [103_224, 4_410], "payments": [3, 1]},
        index=index,
    )  # fmt: skip
    shown = in_major_units(table)
    assert shown.loc[("control", "usd"), "recovered"] == "1,146.93"
    assert shown.loc[("control", "jpy"), "recovered"] == "4,900"
    assert shown.loc[("control", "usd"), "payments"] == 3
