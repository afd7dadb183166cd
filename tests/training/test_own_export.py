"""A platform's own export — CSV, no randomized log, no propensities — validated, trained on
and evaluated through the command line, with the caveats such data needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reclaim import contract
from reclaim.cli import app
from reclaim.reference import RandomizedLogging
from reclaim.settings import get_settings
from reclaim.simulator import generate, rollout
from reclaim.training.pipeline import _gate, per_account_uplift, revenue_uplift_by_currency

runner = CliRunner()


def _csv(tables: contract.ContractTables, folder: Path) -> None:
    """Write the tables as a platform would export them: CSV, times as ISO 8601 text, no
    decisions table, no logging policy or propensities."""
    folder.mkdir(parents=True)
    for table in (contract.PAYMENTS, contract.ATTEMPTS, contract.MESSAGES):
        df = getattr(tables, table.name).copy()
        if "propensity" in df:
            df["propensity"], df["policy"] = np.nan, None
        for c in table.columns:
            if c.kind == "timestamp":
                df[c.name] = df[c.name].dt.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
        df.to_csv(folder / f"{table.name}.csv", index=False)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    market = generate(25, 8_000, seed=21)
    folder = tmp_path_factory.mktemp("own") / "export"
    _csv(rollout(market, RandomizedLogging(), seed=21).tables, folder)
    return folder


def test_validate_train_and_evaluate_an_export_without_a_randomized_log(
    export, tmp_path, monkeypatch
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("RECLAIM_MLFLOW_ARTIFACT_URI", str(tmp_path / "artifacts"))
    get_settings.cache_clear()  # the settings are read once per process

    valid = runner.invoke(app, ["validate", str(export)])
    assert valid.exit_code == 0, valid.output
    assert "valid: 8,000 payments" in valid.output and "no decisions table" in valid.output

    trained = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(export),
            "--tracking-uri",
            uri,
            "--experiment",
            "own",
            "--gate-payments",
            "1000",
        ],
    )
    get_settings.cache_clear()
    assert trained.exit_code == 0, trained.output
    text = " ".join(trained.output.split())
    assert "caveat: no randomized log" in text and "propensities were estimated" in text
    assert "caveat: overlap:" in text
    assert "first-message value, dr" in text and "(95% CI" in text
    assert "champion:" in text
    assert any((tmp_path / "artifacts").rglob("MLmodel")), "artifacts where the setting says"

    evaluated = runner.invoke(
        app, ["evaluate", "--data", str(export), "--tracking-uri", uri, "--model",
              "models:/reclaim-policy/1"],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    text = " ".join(evaluated.output.split())
    for name in ("no_retry", "stripe_like", "rules", "vs logging"):
        assert name in text
    assert "pts (95% CI" in text and "caveat: no randomized log" in text

    refused = runner.invoke(
        app, ["evaluate", "--data", str(export), "--tracking-uri", uri, "--model",
              "models:/reclaim-policy/1", "--min-ess", "1000000"],
    )  # fmt: skip
    assert refused.exit_code == 0, refused.output
    assert " ".join(refused.output.split()).count("refused: effective sample") == 5


def test_every_problem_of_a_bad_export_in_one_run(export, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    payments = pd.read_csv(export / "payments.csv", dtype=str)
    payments.loc[3, "charge_model"] = "on_behalf"  # not a charge model
    payments.to_csv(folder / "payments.csv", index=False)
    attempts = pd.read_csv(export / "attempts.csv", dtype=str)
    attempts["attempted_at"] = attempts["attempted_at"].str.slice(0, 19)  # offset dropped
    attempts.to_csv(folder / "attempts.csv", index=False)
    pd.read_csv(export / "messages.csv", dtype=str).drop(columns=["sender"]).to_csv(
        folder / "messages.csv", index=False
    )
    out = runner.invoke(app, ["validate", str(folder)])
    text = " ".join(out.output.split())
    assert out.exit_code == 1
    assert "invalid: 3 problems" in text
    assert "payments.csv, column 'charge_model': unknown value(s) ['on_behalf']" in text
    assert "attempts.csv, column 'attempted_at'" in text and "with an offset" in text
    assert "2026-" in text.split("attempted_at")[2][:200], "example rows are shown"
    assert "messages.csv, column 'sender': missing column" in text


def test_one_run_tells_columns_rows_and_warnings_with_hints(export, tmp_path):
    """Issue 28: a renamed column does not hide the other tables' row problems or the
    warnings; a renamed column gets a "did you mean"; exact duplicates are told from
    conflicting ones; decimal amounts get the ×100 hint."""
    folder = tmp_path / "one-run"
    folder.mkdir()
    payments = pd.read_csv(export / "payments.csv", dtype=str)
    payments.rename(columns={"customer_id": "customer"}).to_csv(
        folder / "payments.csv", index=False
    )
    attempts = pd.read_csv(export / "attempts.csv", dtype=str)
    pd.concat([attempts, attempts.head(2)]).to_csv(folder / "attempts.csv", index=False)
    messages = pd.read_csv(export / "messages.csv", dtype=str)
    other = messages.head(1).assign(channel="sms" if messages["channel"][0] != "sms" else "email")
    pd.concat([messages, other]).to_csv(folder / "messages.csv", index=False)
    out = runner.invoke(app, ["validate", str(folder)])
    text = " ".join(out.output.split())
    assert out.exit_code == 1 and "invalid: 3 problems" in text, text
    assert "missing column(s) ['customer_id'] (did you mean 'customer' for 'customer_id'?)" in text
    assert "attempts.csv, column 'payment_id, attempt_number': duplicate ids: rows repeated " \
        "exactly (drop the copies) e.g. 4 rows" in text  # fmt: skip
    assert "messages.csv, column 'message_id': duplicate ids with different values" in text

    payments["amount"] = (payments["amount"].astype(int) / 100 + 0.01).astype(str)  # 49.01
    payments.to_csv(folder / "payments.csv", index=False)
    bad_time = attempts.copy()
    bad_time.loc[0, "attempted_at"] = "1999-12-31T00:00:00Z"
    bad_time.to_csv(folder / "attempts.csv", index=False)
    messages.to_csv(folder / "messages.csv", index=False)
    text = " ".join(runner.invoke(app, ["validate", str(folder)]).output.split())
    assert "multiply major units by 100 (49.99 → 4999" in text, text
    assert "attempts.csv, column 'attempted_at': times must be from 2000-01-01" in text

    # warnings are given beside problems, in the same run
    payments = pd.read_csv(export / "payments.csv", dtype=str)
    payments.loc[:4, "decline_code"] = "issuer_said_no"
    payments.to_csv(folder / "payments.csv", index=False)
    text = " ".join(runner.invoke(app, ["validate", str(folder)]).output.split())
    assert "invalid: " in text and "times must be from 2000-01-01" in text
    assert "warning: payments, column 'decline_code': 5 row(s)" in text, text


def test_major_units_and_unknown_decline_codes_are_warned_about(export, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    payments = pd.read_csv(export / "payments.csv", dtype={"amount": float})
    usd = payments["currency"] == "usd"
    for col in ("amount", "application_fee_amount"):  # $49 as 49.0
        payments.loc[usd, col] = (payments.loc[usd, col] / 100).round()
    payments.loc[usd, "amount"] = payments.loc[usd, "amount"].clip(lower=1)
    payments.loc[:9, "decline_code"] = "issuer_said_no"
    payments.to_csv(folder / "payments.csv", index=False)
    for name in ("attempts", "messages"):
        (folder / f"{name}.csv").write_bytes((export / f"{name}.csv").read_bytes())
    out = runner.invoke(app, ["validate", str(folder)])
    text = " ".join(out.output.split())
    assert out.exit_code == 0, text
    assert "warning: payments, column 'amount': the median amount is below 100" in text
    assert "usd (" in text and "look like major units" in text
    assert "10 row(s) with 1 decline code(s) Reclaim does not know: issuer_said_no (10)" in text
    assert "treated as hard declines" in text
    # training refuses such data unless told to take it as it is (issue 28: on major units it
    # trained, promoted, and logged a revenue uplift 100 times too small)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refused = runner.invoke(app, ["train", "--data", str(folder), "--tracking-uri", uri])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "--accept-warnings" in said and "major units" in said
    assert "--amounts major" in said, "it says how to treat major units, not only to accept"
    assert "Traceback" not in refused.output and "Created version" not in refused.output
    from reclaim.training.prepared import TrainConfig, prepare

    accepted = prepare(folder, TrainConfig(accept_warnings=True))  # what --accept-warnings does
    assert any("look like major units" in w for w in accepted.warnings)


def test_an_export_in_major_units_is_read_as_such_when_told(export, tmp_path):
    """Issue 28: `--amounts major` turns an export's amounts from major units (49.99; yen as
    they are) into the contract's minor units as it is read: the same payments as the
    minor-unit export, no warning left, and training told so in its caveats."""
    from reclaim import contract
    from reclaim.training.prepared import TrainConfig, prepare

    folder = tmp_path / "major"
    folder.mkdir()
    payments = pd.read_csv(export / "payments.csv", dtype={"amount": float})
    scale = 10.0 ** payments["currency"].map(contract.decimals)
    for col in ("amount", "application_fee_amount"):
        payments[col] = payments[col] / scale
    assert (payments.loc[payments["currency"] == "usd", "amount"] % 1 != 0).any(), "cents"
    payments.to_csv(folder / "payments.csv", index=False)
    for name in ("attempts", "messages"):
        (folder / f"{name}.csv").write_bytes((export / f"{name}.csv").read_bytes())

    as_major = runner.invoke(app, ["validate", str(folder), "--amounts", "major"])
    text = " ".join(as_major.output.split())
    assert as_major.exit_code == 0 and "valid: " in text and "warning" not in text, text
    as_is = " ".join(runner.invoke(app, ["validate", str(folder)]).output.split())
    assert "major units" in as_is, "read as minor units, the same file is warned about"

    original = contract.read_tables(export).payments.set_index("payment_id")
    read = contract.read_tables(folder, "major").payments.set_index("payment_id")
    for col in ("amount", "application_fee_amount"):
        pd.testing.assert_series_equal(read[col], original[col].loc[read.index], obj=col)
    assert prepare(folder, TrainConfig(amounts="major")).warnings == []

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dask = runner.invoke(
        app, ["train", "--data", str(folder), "--amounts", "major", "--dask", "local",
              "--tracking-uri", uri],
    )  # fmt: skip
    assert dask.exit_code == 2 and "minor units first" in " ".join(dask.output.split())


def test_uplift_is_never_summed_across_currencies_and_rates_stay_in_0_1():
    terms = pd.DataFrame(
        {
            "payment_id": [f"p{i}" for i in range(6)],
            "account_id": ["a", "a", "a", "b", "b", "b"],
            "currency": ["usd", "usd", "jpy", "jpy", "jpy", "jpy"],
            "amount": [49.0, 20.0, 5000.0, 900.0, 1200.0, 3000.0],
            "logged": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
            "dr": [1.7, -0.4, 1.3, 0.2, 0.9, -0.6],  # DR terms leave [0, 1]
        }
    )
    table = per_account_uplift(terms)
    assert set(zip(table["account_id"], table["currency"], strict=True)) == {
        ("a", "usd"), ("a", "jpy"), ("b", "jpy"),
    }  # fmt: skip
    for col in ("policy_recovery_rate_dr", "policy_recovery_rate_lo", "policy_recovery_rate_hi"):
        assert table[col].between(0, 1).all(), col
    totals = revenue_uplift_by_currency(table)
    assert set(totals) == {"revenue_uplift_dr_usd", "revenue_uplift_dr_jpy"}


def _whole(lo: float, value: float, hi: float) -> Any:
    from reclaim.training.ope import Estimate
    from reclaim.training.whole_policy import WholePolicyValue

    up = Estimate(value, lo, hi, (hi - lo) / 3.92)
    return WholePolicyValue(0.5 + value, 0.5, up, 4_000, 72.0, 48.0, 3.0, 4.0)


@pytest.mark.parametrize(
    ("whole", "first", "outcome", "said"),
    [
        # the whole policy's lower bound is below zero: not enough to promote
        ((-0.002, 0.01, 0.02), (-0.01, 0.0, 0.01), "challenger", "lower bound"),
        # worse than the history with confidence, on the whole or at the first message
        ((-0.05, -0.03, -0.01), (-0.01, 0.0, 0.01), "none", "worse than the history's"),
        ((0.01, 0.02, 0.03), (-0.06, -0.04, -0.02), "none", "first message is worse"),
        # a first message a little worse (exploration's price) does not stop the challenger
        ((-0.002, 0.01, 0.02), (-0.003, -0.002, -0.001), "challenger", "lower bound"),
    ],
)
def test_the_gate_says_which_of_three_happened_and_why(whole, first, outcome, said):
    """Issue 30: the gate values the whole policy with a lower bound; promotion needs it
    above zero (that path is the demo's and ``test_pipeline``'s, on a real MLflow store)."""
    from reclaim.training.ope import Estimate

    lo, value, hi = first
    got, reason = _gate(None, "7", _whole(*whole), Estimate(value, lo, hi, 0.01), None, None)
    assert got == outcome and said in reason and "version 7" in reason
    assert "95% CI" in reason and "later payments (model rollout)" in reason


def test_a_message_the_history_always_sent_is_not_identified():
    """Identification before estimation (issue 30): a logger that emails at every first
    failure leaves nothing to compare the email with there; one that emails some decisions of
    every decline category at random does."""
    from reclaim.training.pipeline import identification

    rng = np.random.default_rng(3)
    n = 4_000
    features = pd.DataFrame(
        {
            "decline_category": rng.choice(["soft", "hard", "fraud"], n),
            "decision_number": np.repeat([0, 1], n // 2),
        }
    )
    first = features["decision_number"].to_numpy() == 0
    fixed = pd.Series(np.where(first, "email", "none"))
    why = identification(features, fixed, first, "email")
    assert why is not None and "every decision here got email" in why
    assert "never sent" in identification(features, fixed, ~first, "email")
    random = pd.Series(rng.choice(["email", "none", "sms"], n))
    assert identification(features, random, first, "email") is None
    # sent in one category only, and there always: no stratum shows both sides
    tied = pd.Series(np.where(features["decline_category"] == "soft", "email", "none"))
    assert "within each decline category" in identification(features, tied, first, "email")


def test_a_fixed_schedules_plain_history_gives_a_challenger_within_its_support(tmp_path):
    """Issue 30: a platform that ran stripe_like (retries a day apart or more, an email at
    every first failure) and exports it plainly. Training registers a version (champion or
    challenger), retries no sooner than the history did, keeps the first email whose effect
    the history cannot tell, and prints that effect as not identified, not as an estimate."""
    from mlflow import MlflowClient

    from reclaim.reference import StripeLike
    from reclaim.simulator import platform_export
    from reclaim.training.pipeline import CHALLENGER, CHAMPION, MODEL_NAME, train

    market = generate(20, 4_000, seed=5)
    history = platform_export(rollout(market, StripeLike(), seed=5).tables)
    contract.write_tables(history, tmp_path / "plain")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(tmp_path / "plain", uri)
    caveats = " ".join(result.caveats)
    assert "email (first decision): not identified from this history" in caveats
    assert "uplift_email_first" not in result.metrics, "no estimate of what is not identified"
    assert result.policy.delays_hours.min() >= 18, "no retry sooner than the history's 24 h"
    assert result.policy.channel_calibration["email"].keep_first
    # retries as far apart and as many as the history's: the gaps its rollout chose, and
    # the retry count (stripe_like: 8 retries, after decisions 0 to 7)
    m = result.metrics
    assert m["whole_median_gap_hours"] >= 18 <= m["history_median_gap_hours"], m
    assert result.policy.last_retry is not None and max(result.policy.last_retry.values()) <= 7
    assert m["whole_retries_per_payment"] <= 8
    assert 0 <= m["whole_policy"] <= 1 and 0 <= m["whole_history"] <= 1
    assert (
        "whole policy" in result.reason
        and "lower bound" not in result.reason
        or ("not promoted" in result.reason)
    )
    # the run names its data and reports recovery per currency; the version says what it is
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    (dataset,) = [i.dataset for i in run.inputs.dataset_inputs]
    assert dataset.name == "plain" and dataset.digest == run.data.params["data_digest"]
    rates = {k: v for k, v in run.data.metrics.items() if k.startswith("logged_recovery_rate_")}
    assert rates and all(0 <= v <= 1 for v in rates.values())
    assert "logged_recovered_usd" in run.data.metrics
    version = client.get_model_version(MODEL_NAME, result.model_version)
    assert version.tags["data_kind"] == "observational" and version.tags["gate"] == result.gate
    assert "pts (95% CI" in version.tags["whole_uplift"] and "Observational" in version.description
    aliases = MlflowClient(uri).get_registered_model(MODEL_NAME).aliases
    assert str(aliases.get(CHAMPION, aliases.get(CHALLENGER))) == result.model_version, (
        result.reason
    )
