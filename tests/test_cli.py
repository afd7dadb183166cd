"""The command line, end to end through Typer's runner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from reclaim import contract
from reclaim.cli import app

runner = CliRunner()


def test_simulate_writes_valid_tables_and_prints_the_policy_table(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--accounts",
            "5",
            "--payments",
            "300",
            "--seed",
            "1",
            "--out",
            str(out),
            "--evaluate",
        ],
    )
    assert result.exit_code == 0, result.output
    tables = contract.read_tables(out)
    assert len(tables.payments) == 300
    for name in ("no_retry", "fixed_schedule", "stripe_like", "rules", "oracle"):
        assert name in result.output
    assert "95% CI" in result.output


def test_simulate_rejects_bad_arguments(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--payments", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "--payments" in result.output and not (tmp_path / "x").exists()


def test_simulate_writes_a_reference_policys_history_as_a_plain_export(tmp_path: Path) -> None:
    """A fixed schedule's history, written as a platform exports it: no decisions table, no
    policy or propensity; the schedule's own retries (stripe_like: day 1, 2, 3, 5, …)."""
    out = tmp_path / "plain"
    result = runner.invoke(
        app,
        ["simulate", "--accounts", "5", "--payments", "300", "--seed", "2", "--out", str(out),
         "--history-policy", "stripe_like", "--plain"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tables = contract.read_tables(out)
    assert tables.decisions.empty
    assert tables.attempts["policy"].isna().all() and tables.attempts["propensity"].isna().all()
    assert tables.messages["policy"].isna().all() and tables.messages["propensity"].isna().all()
    a = tables.attempts
    retries = a[(a["attempt_number"] == 1) & (a["initiator"] == "merchant")]
    first = tables.payments.set_index("payment_id")["failed_at"]
    gaps = retries["attempted_at"].to_numpy() - first.loc[retries["payment_id"]].to_numpy()
    days = pd.Series(gaps).dt.total_seconds() / 86_400
    # a day on, unless the networks' rules moved it later
    assert not retries.empty and days.median() == 1.0 and (days >= 1.0).all()
    unknown = runner.invoke(app, ["simulate", "--history-policy", "sometimes", "--out", str(out)])
    assert unknown.exit_code == 2 and "stripe_like" in unknown.output


def test_validate_reports_the_problem(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    assert (
        runner.invoke(
            app, ["simulate", "--accounts", "3", "--payments", "50", "--out", str(out)]
        ).exit_code
        == 0
    )
    ok = runner.invoke(app, ["validate", str(out)])
    assert ok.exit_code == 0 and "valid: 50 payments" in ok.output
    (out / "payments.parquet").unlink()
    bad = runner.invoke(app, ["validate", str(out)])
    assert bad.exit_code == 1 and "payments.parquet: file not found" in bad.output


def test_ingest_stripe_backfills_from_the_stand_in(tmp_path: Path, monkeypatch) -> None:
    from reclaim.reference import NoRetry
    from reclaim.settings import get_settings
    from reclaim.simulator import generate, rollout
    from reclaim.simulator.stripe_export import to_stripe_objects
    from reclaim.simulator.stripe_standin import StripeStandIn

    simulated = rollout(generate(3, 40, seed=2), NoRetry()).tables
    with StripeStandIn() as standin:
        standin.load(to_stripe_objects(simulated))
        monkeypatch.setenv("RECLAIM_STRIPE_API_KEY", standin.api_key)
        monkeypatch.setenv("RECLAIM_STRIPE_API_BASE", standin.url)
        get_settings.cache_clear()
        out = tmp_path / "export"
        result = runner.invoke(
            app, ["ingest", "stripe", "--since", "2025-12-01", "--out", str(out)]
        )
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "wrote 40 payments" in result.output
    assert len(contract.read_tables(out).payments) == 40


def test_ingest_stripe_without_a_key_names_the_variable(tmp_path: Path, monkeypatch) -> None:
    from reclaim.settings import get_settings

    monkeypatch.delenv("RECLAIM_STRIPE_API_KEY", raising=False)
    get_settings.cache_clear()
    result = runner.invoke(
        app, ["ingest", "stripe", "--since", "2026-01-01", "--out", str(tmp_path / "x")]
    )
    get_settings.cache_clear()
    assert result.exit_code == 2 and "RECLAIM_STRIPE_API_KEY" in result.output


def test_the_replay_verdict_in_plain_words():
    from reclaim.cli import replay_verdict
    from reclaim.training.ab_stats import Difference

    def diff(d: float, lo: float, hi: float, p: float) -> Difference:
        return Difference(50.0, 50.0 + d, d, (hi - lo) / 3.92, lo, hi, p, 500, 500, "welch")

    assert "recovered more" in replay_verdict(diff(9.0, 2.0, 16.0, 0.01), "stripe_like")
    assert "recovered less" in replay_verdict(diff(-9.0, -16.0, -2.0, 0.01), "stripe_like")
    unclear = replay_verdict(diff(0.71, -12.31, 13.73, 0.91), "stripe_like")
    assert "no significant difference" in unclear
    assert "detect a difference of $18.6" in unclear and "per payment (80% power)" in unclear
    # 0.71 against a standard error of 6.6 would need ~680,000 payments: not a practical size
    assert "the observed +$0.71 per payment is too small to detect at any practical" in unclear
    closer = replay_verdict(diff(5.0, -2.0, 12.0, 0.16), "stripe_like")
    assert "the observed +$5.00 per payment would need about 4,000 payments" in closer, closer


def test_every_option_is_described_and_defaults_are_shown() -> None:
    import typer.main

    def walk(command, path):
        for param in command.params:
            if param.name != "help" and hasattr(param, "help"):
                assert param.help, f"{path} --{param.name} has no help"
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "reclaim")
    shown = runner.invoke(app, ["simulate", "--help"]).output
    assert "[default: DATA_DIR/sim]" in " ".join(shown.split())  # not eaten as markup
    assert "[default: 20000; x>=1]" in shown


def test_evaluate_writes_its_figures_as_json(tmp_path: Path, trained) -> None:
    """``evaluate --json``: each policy's figures by the name the table prints, for scripts."""
    import json

    out = tmp_path / "evaluate.json"
    result = runner.invoke(
        app,
        ["evaluate", "--simulator", "--payments", "300", "--seed", "3",
         "--tracking-uri", trained.tracking_uri, "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads(out.read_text())
    assert {"learned", "stripe_like", "oracle"} <= set(found["policies"])
    for figures in found["policies"].values():
        assert 0.0 <= figures["recovery_rate"] <= 1.0
        assert (
            figures["recovery_rate_lo"] <= figures["recovery_rate"] <= figures["recovery_rate_hi"]
        )
        assert figures["payments"] == 300
        assert {"usd_per_payment", "retries_per_payment", "messages_per_payment"} <= set(figures)
        net = figures["net_revenue"]
        assert net["usd_lo"] <= net["usd"] <= net["usd_hi"]
        assert net["share_of_failed"] == pytest.approx(net["usd"] / found["failed_usd"])
        assert "hard" in net["share_of_failed_by_decline_kind"]
    policies = found["policies"]
    ceiling = policies["oracle"]["net_revenue"]["usd"]
    assert all(p["net_revenue"]["usd"] <= ceiling for p in policies.values())
    fixed = policies["fixed_schedule"]["net_revenue"]["usd"]
    learned = policies["learned"]["net_revenue"]["usd"]
    assert found["gap_closed"] == pytest.approx((learned - fixed) / (ceiling - fixed))
    assert found["ceiling"] == "oracle" and found["currency"] == "USD"
    assert "by decline" in result.output and "insufficient funds" in result.output
    # no --model: the champion, said so
    assert "evaluating models:/reclaim-policy@champion: the champion" in " ".join(
        result.output.split()
    )
    assert found["model"] == "models:/reclaim-policy@champion"


def test_evaluate_and_replay_mistakes_end_in_one_line_naming_the_fix(
    tmp_path: Path, trained, monkeypatch
) -> None:
    """Issue 28: a store that does not exist is named with how to choose another, and is not
    created; an empty store says to train; an unknown model is one line, not a traceback."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    for command in (["evaluate", "--simulator"], ["replay"]):
        result = runner.invoke(app, command)  # the default store: data/mlflow.db, absent
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "no MLflow store at data/mlflow.db" in text, text
        assert "--tracking-uri" in text and "Traceback" not in text
        assert not list(tmp_path.iterdir()), "nothing created unasked"
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(empty).search_experiments()  # an MLflow store with nothing registered
    result = runner.invoke(app, ["evaluate", "--simulator", "--tracking-uri", empty])
    assert result.exit_code == 2
    assert "no reclaim-policy is registered" in " ".join(result.output.split())
    unknown = runner.invoke(
        app,
        ["evaluate", "--simulator", "--model", "models:/reclaim-policy@nobody",
         "--tracking-uri", trained.tracking_uri],
    )  # fmt: skip
    assert unknown.exit_code == 2 and "alias nobody not found" in unknown.output
    assert len(unknown.output.strip().splitlines()) <= 4, unknown.output


def test_keys_are_listed_without_secrets_and_a_revoked_key_is_refused(tmp_path, monkeypatch):
    from reclaim.serving.auth import Unauthorized, authenticate
    from reclaim.serving.store.repository import make_engine
    from reclaim.settings import get_settings

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("RECLAIM_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        made = runner.invoke(app, ["keys", "create", "--role", "analyst", "--account", "acct_1"])
        assert made.exit_code == 0, made.output
        said = made.output.splitlines()
        assert said[0] == f"store: {url} (RECLAIM_DATABASE_URL)", "it says where the key went"
        key_id, key = said[1].split()[0], made.output.split()[-1]
        assert authenticate(make_engine(url), key).key_id == key_id
        listed = runner.invoke(app, ["keys", "list"], terminal_width=200)
        assert listed.exit_code == 0 and key_id in listed.output and "acct_1" in listed.output
        assert key not in listed.output and "rk_" not in listed.output
        revoked = runner.invoke(app, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0, revoked.output
        try:
            authenticate(make_engine(url), key)
        except Unauthorized:
            pass
        else:
            raise AssertionError("a revoked key still authenticates")
        again = runner.invoke(app, ["keys", "revoke", key_id])
        assert again.exit_code == 2 and key_id in again.output
        from datetime import UTC, datetime

        today = f"{datetime.now(UTC):%Y-%m-%d}"
        row = runner.invoke(app, ["keys", "list"], terminal_width=200).output
        assert row.count(today) == 2  # created and revoked
    finally:
        get_settings.cache_clear()


def test_serve_with_workers_refuses_to_start_without_a_session_secret(monkeypatch):
    from reclaim.settings import get_settings

    monkeypatch.delenv("RECLAIM_DASHBOARD_SESSION_SECRET", raising=False)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["serve", "--workers", "2"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "RECLAIM_DASHBOARD_SESSION_SECRET" in result.output


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgres://u@127.0.0.1:1/db", "write postgresql+psycopg://"),
        ("mysql://u@127.0.0.1/db", "SQLite or PostgreSQL, not mysql"),
        ("::not a url", "is not a database URL"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/x", "cannot open the store"),
        ("sqlite:////no/such/folder/x.db", "/no/such/folder"),
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line_naming_the_fix(url, said, monkeypatch):
    """Issue 28/29: the commands on the operational store (keys, events, migrate, accounts)
    end a wrong or unreachable RECLAIM_DATABASE_URL in a line or two, never a traceback."""
    from reclaim.settings import get_settings

    monkeypatch.setenv("RECLAIM_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        for command in (["keys", "list"], ["migrate"], ["events", "list"]):
            result = runner.invoke(app, command, terminal_width=200)
            assert result.exit_code == 2, (command, result.output)
            text = " ".join(result.output.split())
            assert said in text and "RECLAIM_DATABASE_URL" in text, (command, text)
            assert "Traceback" not in result.output and len(result.output.splitlines()) <= 3
    finally:
        get_settings.cache_clear()


def test_default_stores_live_in_the_data_folder_and_only_writers_make_them(
    tmp_path: Path, monkeypatch
) -> None:
    """Issue 28: with nothing set, the stores are DATA_DIR/reclaim.db and DATA_DIR/mlflow.db
    (its artifacts in DATA_DIR/mlruns), never loose in the working folder; a command that
    only reads a store that is not there says so and makes nothing; one that writes says
    which store it used and makes it in the data folder."""
    import mlflow

    from reclaim.settings import get_settings
    from reclaim.training.tracking import use_experiment

    for name in ("RECLAIM_DATABASE_URL", "RECLAIM_MLFLOW_TRACKING_URI", "RECLAIM_DATA_DIR",
                 "RECLAIM_MLFLOW_ARTIFACT_URI"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.database_url == "sqlite:///data/reclaim.db"
        assert settings.mlflow_tracking_uri == "sqlite:///data/mlflow.db"
        for command in (["keys", "list"], ["events", "list"],
                        ["report", "--experiment", "replay", "--no-mlflow"]):  # fmt: skip
            result = runner.invoke(app, command, terminal_width=200)
            text = " ".join(result.output.split())
            assert result.exit_code == 2 and "no store at data/reclaim.db" in text, (command, text)
            assert "Traceback" not in result.output
        assert not list(tmp_path.iterdir()), "a reading command made nothing"

        made = runner.invoke(app, ["keys", "create", "--role", "analyst"])
        assert made.exit_code == 0, made.output
        assert made.output.startswith("store: sqlite:///data/reclaim.db")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
        assert (tmp_path / "data" / "reclaim.db").exists()
    finally:
        get_settings.cache_clear()

    # a run logged to a SQLite store keeps its artifacts beside it, not in ./mlruns
    store = tmp_path / "elsewhere" / "mlflow.db"
    store.parent.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    try:
        use_experiment("where-artifacts-go")
        with mlflow.start_run() as run:
            mlflow.log_text("kept", "note.txt")
        assert (store.parent / "mlruns").is_dir()
        assert run.info.artifact_uri.startswith((store.parent / "mlruns").as_uri())
        assert any((store.parent / "mlruns").rglob("note.txt"))
        assert not (tmp_path / "mlruns").exists()
    finally:
        mlflow.set_tracking_uri(None)


def test_services_say_which_stores_they_use_without_passwords(monkeypatch) -> None:
    """Issue 28: a long-running service names its store before it starts (here the scheduler,
    refused for a missing key after saying it), with the password hidden."""
    from reclaim.settings import get_settings

    monkeypatch.setenv("RECLAIM_DATABASE_URL", "postgresql+psycopg://u:s3cret@127.0.0.1:1/db")
    monkeypatch.setenv("RECLAIM_MLFLOW_TRACKING_URI", "postgresql://m:t0ken@127.0.0.1:1/ml")
    monkeypatch.delenv("RECLAIM_SCORING_API_KEY", raising=False)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["scheduler"], terminal_width=200)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "RECLAIM_SCORING_API_KEY" in result.output
    said = "store: postgresql+psycopg://u:***@127.0.0.1:1/db (RECLAIM_DATABASE_URL)"
    assert said in result.output and "s3cret" not in result.output

    from reclaim.cli import _shown

    assert _shown("postgresql://m:t0ken@127.0.0.1:1/ml") == "postgresql://m:***@127.0.0.1:1/ml"
    assert _shown("http://mlflow:5000") == "http://mlflow:5000"
    assert _shown("sqlite:///data/mlflow.db") == "sqlite:///data/mlflow.db"
