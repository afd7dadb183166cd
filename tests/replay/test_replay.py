"""The whole loop as the demo runs it: the API as its own process, the scheduler, the stand-in
answering from the simulator's truth, an A/B test in simulated time; and the dashboard and
the A/B report over what it stored, in a real browser."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from reclaim.replay import ReplayConfig, run_replay
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.store import tables as t
from reclaim.serving.store.repository import make_engine
from reclaim.settings import Settings
from reclaim.simulator.config import SimulatorConfig

from ..serving.conftest import _free_port, _serve, chromium, needs_chromium

CONFIG = ReplayConfig(payments=40, horizon_days=20, failure_days=10)


@pytest.fixture(scope="module")
def first(tmp_path_factory, trained) -> tuple[pd.DataFrame, Path]:
    """A small replay, played once for this file: its table and its folder (``reclaim.db``)."""
    folder = tmp_path_factory.mktemp("replay") / "first"
    return run_replay(trained.market, trained.tracking_uri, folder, CONFIG), folder


def test_a_replay_runs_both_arms_charges_each_key_once_and_repeats_for_its_seed(
    tmp_path, trained, first
):
    """Played again in two parts at once (split by account, each with its own API and store),
    it gives the same result, payment by payment, and one merged store."""
    config = CONFIG
    table, first_folder = first
    assert list(table.index) == ["stripe_like", "learned"]
    # a payment is in an arm from its first decision; one its customer paid before the
    # scheduler asked for a decision is in neither. In simulated time the scheduler decides at
    # the moment of the failure, so every payment is decided for.
    assert table["payments"].sum() + table.attrs["undecided"] == 40
    assert table.attrs["undecided"] == 0
    assert table.attrs["charges"] > 0 and table.attrs["most_per_key"] == 1
    assert (table["recovered"] == table["by_retry"] + table["by_customer"]).all()
    assert (table["retries"] > 0).all()  # both arms' decisions were carried out
    assert table.attrs["messages"] > 0  # the policies messaged and the customer heard them
    # what reached the store through webhooks, reads and the scheduler's records is what the
    # simulator drew: the same declines, cards and network codes, and no hard decline retried
    mix = table.attrs["data_path"].dropna()
    assert (mix["simulated"] - mix["stored"]).abs().max() < 1e-12, mix
    assert table.attrs["hard_retries"] == 0

    again = run_replay(
        trained.market, trained.tracking_uri, tmp_path / "second", replace(config, shards=2)
    )
    pd.testing.assert_frame_equal(table, again)
    pd.testing.assert_frame_equal(table.attrs["per_payment"], again.attrs["per_payment"])
    pd.testing.assert_frame_equal(table.attrs["data_path"], again.attrs["data_path"])
    frames = ("per_payment", "data_path")
    assert {k: v for k, v in table.attrs.items() if k not in frames} == {
        k: v for k, v in again.attrs.items() if k not in frames
    }
    # the merged store holds what the one store of the first replay holds: the payments with
    # the columns its triggers keep, the attempts, decisions and the rollups
    one, merged = (_store(f / "reclaim.db") for f in (first_folder, tmp_path / "second"))
    for name, key in _COMPARED.items():
        pd.testing.assert_frame_equal(one[name], merged[name], obj=name)
        assert len(one[name]) > 0 and one[name].set_index(key).index.is_unique, name
    pd.testing.assert_frame_equal(one["decision_log"], merged["decision_log"])


_COMPARED = {  # table: its key
    "payments": ["payment_id"],
    "attempts": ["payment_id", "attempt_number"],
    "experiment_assignments": ["payment_id"],
    "scheduled_actions": ["action_id"],
    "stats_days": ["day", "currency"],
    "stats_account_months": ["month", "account_id", "currency"],
    "stats_groups": ["day", "dimension", "key"],
}


def _store(path) -> dict[str, pd.DataFrame]:
    """The compared tables of a replay's store, sorted by key (``updated_at``: wall time)."""
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            frames = {
                name: pd.read_sql(sa.select(t.metadata.tables[name]), conn)
                .drop(columns=["updated_at"], errors="ignore")
                .sort_values(key)
                .reset_index(drop=True)
                for name, key in _COMPARED.items()
            }
        with engine.connect() as conn:
            d = t.decision_log.c
            log = pd.read_sql(sa.select(t.decision_log).order_by(d.payment_id, d.decided_at), conn)
        frames["decision_log"] = log.drop(columns=["decision_id"]).reset_index(drop=True)
        return frames
    finally:
        engine.dispose()


def test_a_replay_in_the_future_of_the_machines_clock_is_refused_before_it_starts(
    tmp_path, trained
):
    """The API refuses events dated more than a day ahead of its clock: a replay whose
    simulated time runs past it says so at once instead of losing every event."""
    later = trained.market.payments.assign(
        failed_at=trained.market.payments["failed_at"] + pd.Timedelta(days=3650)
    )
    market = replace(trained.market, payments=later)
    with pytest.raises(ValueError, match="more than a day after this machine's clock"):
        run_replay(market, trained.tracking_uri, tmp_path, ReplayConfig(payments=20))
    assert not (tmp_path / "reclaim.db").exists()


SHOTS = Path(__file__).parents[2] / "docs" / "replay-dashboard"
# what no page may show: scientific notation, a missing value written by the machine
NOT_FOR_PEOPLE = re.compile(r"\d\.?\d*e[+-]\d\d|\bnan\b|NaN|\bNone\b")


@needs_chromium
def test_every_page_after_a_small_replay_opens_on_its_data(tmp_path, trained, first) -> None:
    """Issue 28: the dashboard and the A/B report as an analyst meets them after a small
    replay — data that came in through Stripe's webhooks, the API and the scheduler, in the
    past of the machine's clock — opened in Debian's chromium with no dates chosen, every page
    screenshotted (docs/replay-dashboard/)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from reclaim.serving.store import experiments
    from reclaim.serving.store import repository as repo
    from reclaim.training.ab_publish import to_html
    from reclaim.training.ab_report import build_report

    _, folder = first
    fx = dict(SimulatorConfig().usd_per_unit)
    app = create_app(
        Settings(
            database_url=f"sqlite:///{folder / 'reclaim.db'}",
            mlflow_tracking_uri=trained.tracking_uri,
            report_fx=fx,
            policy_reload_seconds=3600,
        )
    )
    port = _free_port()
    server = _serve(app, port)
    engine = app.state.engine
    _, analyst = create_key(engine, "analyst")
    with engine.connect() as conn:
        account, payment = conn.execute(
            sa.select(t.payments.c.account_id, t.payments.c.payment_id)
            .order_by(t.payments.c.failed_at)
            .limit(1)
        ).one()
        shop = conn.execute(
            sa.select(t.account_profiles.c.display_name).where(
                t.account_profiles.c.account_id == account
            )
        ).scalar()
    assert shop, "the replay's account.updated events named the accounts"

    driver = chromium()
    base = f"http://localhost:{port}/dashboard"
    SHOTS.mkdir(exist_ok=True)
    try:
        driver.get(f"{base}/login")
        driver.find_element(By.ID, "key").send_keys(analyst)
        driver.find_element(By.ID, "sign-in").click()
        WebDriverWait(driver, 30).until(lambda d: d.title.startswith("Overview"))
        pages = {
            "overview": "",
            "accounts": "/accounts",
            "account": f"/accounts/{account}",
            "payments": "/payments",
            "payment": f"/payments/{payment}",
            "declines": "/declines",
            "experiments": "/experiments",
            "experiment": "/experiments/replay",
            "operations": "/operations",
        }
        for name, path in pages.items():
            driver.get(f"{base}{path}")
            WebDriverWait(driver, 60).until(
                lambda d: (
                    d.find_elements(By.TAG_NAME, "h1")
                    and "computing" not in d.find_element(By.TAG_NAME, "body").text.lower()
                )
            )
            body = driver.find_element(By.TAG_NAME, "body").text
            assert not NOT_FOR_PEOPLE.search(body), (name, NOT_FOR_PEOPLE.search(body), body[:800])
            assert "No failed payments in this period" not in body, name
            assert "not found" not in driver.find_element(By.TAG_NAME, "h1").text.lower(), name
            driver.save_screenshot(str(SHOTS / f"{name}.png"))
        # the overview opened on the replay's month, and said it is not today's
        driver.get(base)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "The newest failed payment is from" in body
        assert driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.recovered")
        # a payment names its account as Stripe does, and links to it
        driver.get(f"{base}/payments/{payment}")
        assert f"Account {account} {shop}" in driver.find_element(By.TAG_NAME, "body").text
        driver.find_element(By.LINK_TEXT, account).click()
        WebDriverWait(driver, 30).until(lambda d: d.title.startswith(shop))
        # the payments list shows the replay's payments; the experiment its verdict
        driver.get(f"{base}/payments")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#listed tbody tr")) > 10
        driver.get(f"{base}/experiments/replay")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "p.verdict"))
        assert driver.find_element(By.CSS_SELECTOR, "p.verdict").text.startswith("Verdict:")

        # the A/B report of the replay, as `reclaim report --experiment replay --html` writes
        _, assignments, opted_out, pre = experiments.report_inputs(engine, "replay")
        report = build_report(
            "replay", repo.load_contract(engine), assignments, fx, "usd", opted_out=opted_out,
            pre=pre,
        )  # fmt: skip
        page = tmp_path / "ab_report.html"
        page.write_text(to_html(report))
        driver.get(page.as_uri())
        first = driver.find_element(By.CSS_SELECTOR, "body > *:nth-child(2)")
        assert first.get_attribute("id") == "verdicts" and first.text.startswith("Verdict:")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert not NOT_FOR_PEOPLE.search(body), NOT_FOR_PEOPLE.search(body)
        driver.save_screenshot(str(SHOTS / "ab-report.png"))
    finally:
        driver.quit()
        server.should_exit = True
