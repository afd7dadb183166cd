"""Issue 28: the dashboard and the A/B report as an analyst meets them after a small replay —
data that came in through Stripe's webhooks, the API and the scheduler, in the past of the
machine's clock — opened in Debian's chromium with no dates chosen, every page screenshotted
(docs/replay-dashboard/)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from reclaim.replay import ReplayConfig, run_replay
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.store import tables as t
from reclaim.settings import Settings
from reclaim.simulator.config import SimulatorConfig

from ..serving.conftest import _free_port, _serve

SHOTS = Path(__file__).parents[2] / "docs" / "replay-dashboard"
# what no page may show: scientific notation, a missing value written by the machine
NOT_FOR_PEOPLE = re.compile(r"\d\.?\d*e[+-]\d\d|\bnan\b|NaN|\bNone\b")


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="no chromium/chromedriver: `make test` installs Debian's packages where it can",
)
def test_every_page_after_a_small_replay_opens_on_its_data(tmp_path, trained) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from reclaim.serving.store import experiments
    from reclaim.serving.store import repository as repo
    from reclaim.training.ab_publish import to_html
    from reclaim.training.ab_report import build_report

    config = ReplayConfig(payments=120, horizon_days=20, failure_days=10)
    run_replay(trained.market, trained.tracking_uri, tmp_path / "replay", config)
    fx = dict(SimulatorConfig().usd_per_unit)
    app = create_app(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'replay' / 'reclaim.db'}",
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

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
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
