"""The dashboard: sign-in by key into a signed, HTTP-only session with CSRF-checked forms;
pages that show each key only its accounts; and the same pages driven in Debian's chromium."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from reclaim.contract import ZERO_DECIMAL
from reclaim.reference import RandomizedLogging
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.store import profiles
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.settings import Settings
from reclaim.simulator import generate, rollout
from reclaim.simulator.config import SimulatorConfig

from .conftest import _free_port, _serve, chromium, needs_chromium

DOCS = Path(__file__).parents[2] / "docs"


@pytest.fixture(scope="module")
def history():
    return rollout(generate(15, 1_200, seed=33), RandomizedLogging(), seed=33).tables


SIM_FX = dict(SimulatorConfig().usd_per_unit)  # the history's currencies, in USD


def _settings(tmp_path, trained, secure: bool = True, fx: dict | None = SIM_FX) -> Settings:
    return Settings(
        report_fx=fx or {"usd": 1.0},
        database_url=f"sqlite:///{tmp_path / 'dash.db'}",
        mlflow_tracking_uri=trained.tracking_uri,
        stripe_webhook_secret_platform=SecretStr("whsec_p"),
        stripe_webhook_secret_connect=SecretStr("whsec_c"),
        policy_reload_seconds=3600,
        dashboard_secure_cookies=secure,
    )


@pytest.fixture
def site(tmp_path, trained, history):
    with TestClient(create_app(_settings(tmp_path, trained)), base_url="https://testserver") as c:
        engine = c.app.state.engine
        repo.save_contract(engine, history)
        accounts = sorted(history.payments["account_id"].unique())
        keys = {
            "analyst": create_key(engine, "analyst"),
            "scoped": create_key(engine, "analyst", accounts=[accounts[0]]),
            "scheduler": create_key(engine, "scheduler"),
        }
        yield c, keys, accounts


def _sign_in(client, key: str):
    form = client.get("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return client.post("/dashboard/login", data={"csrf": csrf, "key": key}, follow_redirects=False)


PERIOD = "start=2026-01-01&end=2026-12-31"
# the history's second half: its previous period holds the first half, drawn as a line
HALF = "start=2026-03-05&end=2026-05-03"


def test_signing_in_gives_an_http_only_signed_session(site) -> None:
    client, keys, accounts = site
    assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard"
    assert client.get("/dashboard", follow_redirects=False).headers["location"].endswith("/login")
    # a form without its CSRF token is refused
    forged = client.post("/dashboard/login", data={"key": keys["analyst"][1]})
    assert forged.status_code == 403 and "expired" in forged.text
    assert _sign_in(client, "rk_not_a_key").status_code == 401
    assert _sign_in(client, keys["scheduler"][1]).status_code == 403
    ok = _sign_in(client, keys["analyst"][1])
    assert ok.status_code == 303
    cookie = ok.headers["set-cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=strict"):
        assert flag.lower() in cookie.lower(), flag
    page = client.get(f"/dashboard?{PERIOD}")
    assert page.status_code == 200 and "Recovered revenue" in page.text
    assert "<svg" in page.text and 'class="recovered"' in page.text
    # a tampered session is no session
    session = client.cookies.get("reclaim_session")
    client.cookies.delete("reclaim_session")
    client.cookies.set("reclaim_session", session[:-2] + ("00" if session[-2:] != "00" else "11"))
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_the_dashboard_opens_on_the_newest_data(site, history) -> None:
    """Issue 28: after a replay of past months the dashboard opened on an empty month. With
    no dates, a page shows the 30 days up to the newest failed payment the key sees, and says
    so; a key scoped to one account, up to that account's newest."""
    client, keys, accounts = site
    _sign_in(client, keys["analyst"][1])
    newest = history.payments["failed_at"].max().date()
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert f"The newest failed payment is from {newest:%Y-%m-%d}" in page.text
    assert "No failed payments in this period." not in page.text
    for path in ("/dashboard/accounts", "/dashboard/declines"):
        assert f"from {newest:%Y-%m-%d}" in client.get(path).text, path
    _sign_in(client, keys["scoped"][1])
    own = history.payments[history.payments["account_id"] == accounts[0]]
    theirs = client.get("/dashboard").text
    assert f"The newest failed payment is from {own['failed_at'].max().date():%Y-%m-%d}" in theirs
    chosen = client.get("/dashboard?end=2026-12-31").text  # dates given: no note
    assert 'id="period-note"' not in chosen
    # an empty period chosen by hand says where the data is, and links to it
    _sign_in(client, keys["analyst"][1])
    empty = client.get("/dashboard?start=2020-01-01&end=2020-01-31").text
    assert f"The newest is from {newest:%Y-%m-%d}" in empty
    assert f'href="?end={newest:%Y-%m-%d}"' in empty


def test_one_chart_with_axes_a_total_at_stated_rates_and_csv(site, history) -> None:
    """Issue 28: one daily chart, of the currency chosen (by default the one with the most
    failed payments), with dates and counts on its axes; a total in the reporting currency at
    RECLAIM_REPORT_FX's rates beside the per-currency rows; every table as CSV."""
    import csv
    import io

    client, keys, _ = site
    _sign_in(client, keys["analyst"][1])
    page = client.get(f"/dashboard?{PERIOD}").text
    counts = history.payments["currency"].value_counts()
    top = counts.index[0]
    assert page.count('<svg class="chart"') == 1 and f'data-currency="{top}"' in page
    assert re.search(r'<text class="tick x"[^>]*>Jan 1</text>', page)
    assert re.search(r'<text class="tick y"[^>]*>0</text>', page)
    assert "day of the first failure (UTC)" in page
    # how the recovered came back: per currency, the ways' shares add up to all of them
    paths = re.findall(r"<tr><td>([A-Z]{3})</td><td>([^<]+)</td><td>[\d,]+</td><td>([\d.]+)%</td>",
                       page.split('id="paths"')[1].split("</table>")[0])  # fmt: skip
    assert {how for _, how, _ in paths} >= {"a merchant retry on the same card"}
    for cur in {c for c, _, _ in paths}:
        assert sum(float(x) for c, _, x in paths if c == cur) == pytest.approx(100, abs=0.2)
    # how every failed payment stands: recovered + lost + open = all, per currency
    ended = re.findall(
        r'<tr class="ending-(\w+)"><td>([A-Z]{3})</td><td>[^<]+</td><td>([\d,]+)</td>', page
    )
    for cur, n in counts.items():
        assert sum(int(k.replace(",", "")) for _, c, k in ended if c == cur.upper()) == n, cur
    ok = history.attempts[history.attempts["outcome"] == "succeeded"]
    recovered_n = ok["payment_id"].nunique()
    assert sum(int(k.replace(",", "")) for e, _, k in ended if e == "recovered") == recovered_n
    times = page.split('id="times"')[1].split("</table>")[0]
    took = [int(n.replace(",", "")) for n in re.findall(r"</td><td>([\d,]+)</td>", times)]
    assert len(took) == 5 and sum(took) == recovered_n
    assert re.search(r'id="median-time">Half of the recovered payments came back within '
                     r"<strong>\d+ (days?|h|min)", page)  # fmt: skip
    other = counts.index[1]
    picked = client.get(f"/dashboard?{PERIOD}&currency={other}").text
    assert f'data-currency="{other}"' in picked and f'<option value="{other}" selected>' in picked
    assert 'data-currency="' + top + '"' in client.get(f"/dashboard?{PERIOD}&currency=xx").text

    # the total: counts summed, money converted at the stated rates (the test's SIM_FX)
    total = re.search(r'<tr class="total" id="total">(.*?)</tr>', page, re.S).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", total)
    assert cells[0] == "All, in USD" and cells[1] == f"{len(history.payments):,}"
    rows = list(csv.DictReader(io.StringIO(client.get(f"/dashboard?{PERIOD}&format=csv").text)))
    assert [r["currency"] for r in rows[:-1]] == list(counts.index)
    by_currency = {r["currency"]: r for r in rows[:-1]}
    usd = sum(float(r["recovered_amount"]) * SIM_FX[c] for c, r in by_currency.items())
    assert float(rows[-1]["recovered_amount"]) == pytest.approx(usd, abs=0.01)
    assert cells[5] == f"${usd:,.2f}"
    assert all(0 <= float(r["recovery_rate"]) <= 1 for r in rows)

    accounts = client.get(f"/dashboard/accounts?{PERIOD}&format=csv")
    assert accounts.headers["content-type"].startswith("text/csv")
    assert (
        len(list(csv.DictReader(io.StringIO(accounts.text))))
        >= history.payments["account_id"].nunique()
    )
    # the overview's other tables, each as the page links it
    for table, first_column in (("paths", "currency"), ("endings", "currency"),
                                ("times", "bucket")):  # fmt: skip
        assert f"format=csv&amp;table={table}" in page, table
        got = list(csv.DictReader(io.StringIO(
            client.get(f"/dashboard?{PERIOD}&format=csv&table={table}").text
        )))  # fmt: skip
        assert got and list(got[0])[0] == first_column, table
        assert all(0 <= float(r["share"]) <= 1 for r in got), table
    times = list(csv.DictReader(io.StringIO(
        client.get(f"/dashboard?{PERIOD}&format=csv&table=times").text
    )))  # fmt: skip
    assert sum(int(r["payments"]) for r in times) == recovered_n
    listed = list(csv.DictReader(io.StringIO(
        client.get(f"/dashboard/payments?{PERIOD}&status=recovered&format=csv").text
    )))  # fmt: skip
    assert len(listed) == recovered_n and {r["recovered"] for r in listed} == {"True"}
    some = history.payments.set_index("payment_id").loc[listed[0]["payment_id"]]
    scale = 1 if some["currency"] in ZERO_DECIMAL else 100
    assert float(listed[0]["amount"]) == pytest.approx(some["amount"] / scale)
    declines = list(
        csv.DictReader(io.StringIO(client.get(f"/dashboard/declines?{PERIOD}&format=csv").text))
    )
    assert {"Decline category", "Charge model"} <= {r["breakdown"] for r in declines}


def test_the_payment_list_filters_and_pages(site, history) -> None:
    """Issue 28: a list of payments, not only search: the period's, newest first, filtered
    by status, currency and account, paged; a scoped key lists its own accounts' alone."""
    client, keys, accounts = site
    _sign_in(client, keys["analyst"][1])
    p = history.payments
    ok = history.attempts[history.attempts["outcome"] == "succeeded"]["payment_id"]
    page = client.get(f"/dashboard/payments?{PERIOD}").text
    assert f"{len(p):,} payments whose first failure" in page and 'id="next"' in page
    listed = re.findall(r'<tr><td><a href="/dashboard/payments/([^"?]+)\?', page)
    newest = p.sort_values("failed_at", ascending=False)["payment_id"].head(50).tolist()
    assert listed == newest
    recovered = client.get(f"/dashboard/payments?{PERIOD}&status=recovered").text
    want = int(p["payment_id"].isin(ok).sum())
    assert f"{want:,} payments whose first failure" in recovered
    assert "<td>not recovered</td>" not in recovered
    cur, acct = p["currency"].iloc[0], accounts[1]
    both = client.get(f"/dashboard/payments?{PERIOD}&currency={cur.upper()}&account={acct}").text
    n = int(((p["currency"] == cur) & (p["account_id"] == acct)).sum())
    assert f"{n:,} payments whose first failure" in both
    assert set(re.findall(r"</a></td><td>(acct_[^<]+)</td>", both)) <= {acct}
    for odd in ("status=lost", "currency=%00", "account=" + "x" * 300, "page=-4"):
        assert client.get(f"/dashboard/payments?{PERIOD}&{odd}").status_code == 200, odd
    _sign_in(client, keys["scoped"][1])
    own = client.get(f"/dashboard/payments?{PERIOD}").text
    assert set(re.findall(r"</a></td><td>(acct_[^<]+)</td>", own)) == {accounts[0]}


def test_revoking_the_key_ends_its_sessions_and_sign_out_needs_the_token(site) -> None:
    client, keys, _ = site
    _sign_in(client, keys["analyst"][1])
    assert client.get("/dashboard").status_code == 200
    assert client.post("/dashboard/logout", data={"csrf": "guess"}, follow_redirects=False)
    assert client.get("/dashboard", follow_redirects=False).status_code == 200  # still in
    with client.app.state.engine.begin() as conn:
        conn.execute(
            sa.update(t.api_keys)
            .where(t.api_keys.c.key_id == keys["analyst"][0])
            .values(revoked_at=datetime.now(UTC))
        )
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_a_scoped_key_sees_only_its_accounts(site, history) -> None:
    client, keys, accounts = site
    _sign_in(client, keys["scoped"][1])
    page = client.get(f"/dashboard/accounts?{PERIOD}&sort=recovery_rate")
    assert page.status_code == 200
    shown = set(re.findall(r">(acct_[^<]+)</a></td>", page.text))
    assert shown == {accounts[0]}
    mine = (history.payments["account_id"] == accounts[0]).sum()
    overview = client.get(f"/dashboard?{PERIOD}").text
    overview = re.sub(r'<tr class="total".*?</tr>', "", overview, flags=re.S)  # the rows only
    failed = sum(
        int(n.replace(",", ""))
        for n in re.findall(r"<td>([\d,]+)</td>\s*<td>[\d,]+</td>\s*<td>[\d.]+%</td>", overview)
    )
    assert failed == mine


def test_an_account_page_shows_its_numbers_and_its_configuration(site, history) -> None:
    client, keys, accounts = site
    mine, theirs = accounts[0], accounts[1]
    _, admin = create_key(client.app.state.engine, "admin")
    overridden = client.put(
        f"/v1/accounts/{mine}/config",
        json={"max_retries": 2, "allowed_channels": ["email"]},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert overridden.status_code == 200, overridden.text
    client.put(
        "/v1/accounts/*/config", json={"orchestration": True},
        headers={"Authorization": f"Bearer {admin}"},
    )  # fmt: skip

    _sign_in(client, keys["analyst"][1])
    listing = client.get(f"/dashboard/accounts?{PERIOD}&search={mine}").text
    link = re.search(rf'href="(/dashboard/accounts/{mine}\?[^"]+)"', listing).group(1)
    page = client.get(link.replace("&amp;", "&"))
    assert page.status_code == 200 and f"<h1>{mine}</h1>" in page.text  # no name known yet
    # once Stripe has told its name: beside the id in the list and the title, and searchable
    with client.app.state.engine.begin() as conn:
        profiles.save(conn, [{"account_id": mine, "display_name": "Yoga Studio Nord",
                              "updated_at": datetime(2026, 6, 1, tzinfo=UTC)}])  # fmt: skip
    by_name = client.get(f"/dashboard/accounts?{PERIOD}&search=studio+NORD").text
    assert (
        re.findall(r'href="/dashboard/accounts/([^"?]+)\?', by_name)
        == [mine] * len(re.findall(r'href="/dashboard/accounts/', by_name))
        and f'{mine}</a> <span class="name">Yoga Studio Nord</span>' in by_name
    )
    page = client.get(link.replace("&amp;", "&"))
    assert f'<h1>Yoga Studio Nord <span class="id">{mine}</span></h1>' in page.text
    # its numbers are its payments' alone
    failed = sum(
        int(n.replace(",", ""))
        for n in re.findall(r"<td>([\d,]+)</td>\s*<td>[\d,]+</td>\s*<td>[\d.]+%</td>\s*<td>",
                            re.sub(r'<tr class="total".*?</tr>', "", page.text,
                                   flags=re.S).split('id="categories"')[0])
    )  # fmt: skip
    assert failed == (history.payments["account_id"] == mine).sum()
    assert 'class="recovered"' in page.text, "its chart has data"
    categories = page.text.split('id="categories"')[1].split("</table>")[0]
    assert (
        sum(
            int(n.replace(",", ""))
            for n in re.findall(r"<tr><td>[a-z_]+</td><td>([\d,]+)</td>", categories)
        )
        == failed
    )
    # each setting says where it comes from
    rows = dict(
        (label, (value, html.unescape(source)))
        for label, value, source in re.findall(
            r"<tr[^>]*><td>([^<]+)</td><td>([^<]*)</td><td>([^<]+)</td></tr>",
            page.text.split('id="settings"')[1],
        )
    )
    assert rows["Retries per payment at most"] == ("2", "this account")
    assert rows["Channels allowed"] == ("email", "this account")
    assert rows["Stripe Orchestration"] == ("yes", "platform default")
    assert rows["Messages per payment at most"] == ("3", "Reclaim's default")

    # a scoped key: its own account, and another's reads exactly as one that does not exist
    _sign_in(client, keys["scoped"][1])
    assert client.get(f"/dashboard/accounts/{mine}?{PERIOD}").status_code == 200
    foreign = client.get(f"/dashboard/accounts/{theirs}?{PERIOD}")
    unknown = client.get("/dashboard/accounts/acct_nobody")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.text.replace(theirs, "X") == unknown.text.replace("acct_nobody", "X")
    assert theirs not in re.sub(r"No account &#39;[^&]+&#39;", "", foreign.text)
    for odd in ("a" * 300, "acct_%00x", "acct_\u2028"):
        assert client.get(f"/dashboard/accounts/{odd}").status_code == 404


def _run_experiment(engine, history) -> dict[str, str]:
    """Experiment ``exp-a`` over the later 60% of ``history``'s payments (stored), each arm's
    decisions logged by its policy; returns the arms by payment id."""
    from reclaim.experiment import ExperimentDesign
    from reclaim.serving.store import experiments

    payments = history.payments
    later = payments[payments["failed_at"] >= payments["failed_at"].quantile(0.4)]
    arms = experiments.assign(engine, ExperimentDesign(name="exp-a"), later, datetime.now(UTC))
    rows = [
        {"account_id": account, "payment_id": pid, "decided_at": datetime.now(UTC),
         "model_version": "1", "policy": "stripe_like" if arm == "control" else "learned",
         "propensity": 1.0}
        for (account, pid), arm in arms.items()
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(t.decision_log.insert(), rows)
    return {pid: arm for (_, pid), arm in arms.items()}


def test_an_experiment_page_shows_the_numbers_of_reclaim_report(tmp_path, trained, history):
    from reclaim.serving.store import experiments
    from reclaim.training.ab_report import build_report

    with TestClient(create_app(_settings(tmp_path, trained)), base_url="https://testserver") as c:
        engine = c.app.state.engine
        repo.save_contract(engine, history)
        arms = _run_experiment(engine, history)
        # the whole store, as `reclaim report` on exported tables reads it
        tables = repo.load_contract(engine)
        _, assignments, opted_out, _ = experiments.report_inputs(engine, "exp-a")
        expected = build_report("exp-a", tables, assignments, SIM_FX, "usd", opted_out=opted_out)
        mine = sorted(history.payments["account_id"].unique())[0]
        _, analyst = create_key(engine, "analyst")
        _, scoped = create_key(engine, "analyst", accounts=[mine])

        _sign_in(c, analyst)
        listing = c.get("/dashboard/experiments").text
        assert re.search(rf'exp-a">exp-a</a></td><td>{len(arms):,}<', listing)
        page = c.get("/dashboard/experiments/exp-a")
        assert page.status_code == 200, page.text
        rows = re.findall(r"<tr><td>(\w+) \((\w+)\)</td><td>([\d,]+)</td><td>([\d,]+)</td>"
                          r"<td>([\d.]+%)</td>", page.text)  # fmt: skip
        named = [(arm, policy) for arm, policy, *_ in rows]
        assert named == [("control", "stripe_like"), ("treatment", "learned")]
        for arm, _, n, recovered, rate in rows:  # the same numbers as `reclaim report`
            assert int(n.replace(",", "")) == expected.arms.loc[arm, "payments"]
            assert int(recovered.replace(",", "")) == expected.arms.loc[arm, "recovered"]
            assert rate == f"{expected.arms.loc[arm, 'recovery_rate']:.1%}"
        effect = expected.effects.loc["recovery_rate"]
        shown = f"{effect['diff'] * 100:+.1f} pts (95% CI {effect['lo'] * 100:+.1f} to "
        assert shown in page.text and f"<td>{effect['p_value']:.3f}</td>" in page.text
        verdicts = re.findall(r'<p class="verdict"><strong>([^<]+)</strong>', page.text)
        assert len(verdicts) == 2 and all(v.startswith("Verdict: ") for v in verdicts)
        assert "revenue per failed payment" in html.unescape(verdicts[1])
        assert "USD at the rates of" in page.text and "EUR " in page.text
        uplift = re.findall(r"<tr><td><a href=\"/dashboard/accounts/([^\"]+)\">", page.text)
        assert len(uplift) >= 2, "the history has accounts with 20 payments in each arm"
        # a long per-account table is paged: one row a page here, every row on some page
        from reclaim.serving import dashboard

        dashboard.PAGE_SIZE, size = 1, dashboard.PAGE_SIZE
        try:
            paged = [
                re.findall(r"<tr><td><a href=\"/dashboard/accounts/([^\"]+)\">", c.get(
                    f"/dashboard/experiments/exp-a?page={i}").text)
                for i in range(len(uplift))
            ]  # fmt: skip
            last = c.get("/dashboard/experiments/exp-a?page=99999").text
        finally:
            dashboard.PAGE_SIZE = size
        assert [row for rows in paged for row in rows] == uplift
        assert f"page {len(uplift)} of {len(uplift)}" in last and 'id="next"' not in last

        # a scoped key: its account's payments only; an experiment it has none of is not found
        _sign_in(c, scoped)
        own = c.get("/dashboard/experiments/exp-a")
        n_mine = int((assignments["account_id"] == mine).sum())
        assert own.status_code == 200 and f"{n_mine:,} failed payments assigned on the" in own.text
        assert set(re.findall(r">(acct_[^<]+)</a></td>", own.text)) <= {mine}
        for name in ("exp-none", "x" * 200, "exp\u2028"):
            assert c.get(f"/dashboard/experiments/{name}").status_code == 404

    # without a rate for every currency, the page says so instead of summing currencies
    (tmp_path / "b").mkdir()
    bare = _settings(tmp_path / "b", trained, fx=None)
    with TestClient(create_app(bare), base_url="https://testserver") as c:
        repo.save_contract(c.app.state.engine, history)
        _run_experiment(c.app.state.engine, history)
        _sign_in(c, create_key(c.app.state.engine, "analyst")[1])
        page = c.get("/dashboard/experiments/exp-a")
        assert page.status_code == 200 and "cannot be computed" in page.text


def test_a_restarted_api_warms_the_reports_of_stored_experiments(tmp_path, trained, history):
    """The platform-wide report of every stored experiment is computed in the background at
    start, so an analyst's first view gets it at once."""
    settings = _settings(tmp_path, trained)
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        repo.save_contract(c.app.state.engine, history)
        _run_experiment(c.app.state.engine, history)
        analyst = create_key(c.app.state.engine, "analyst")[1]
        assert c.app.state.reports.computed_at(("exp-a", None)) is None  # nothing at its start
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        c.app.state.report_warm_up.join(120)
        warmed = c.app.state.reports.computed_at(("exp-a", None))
        assert warmed is not None
        _sign_in(c, analyst)
        page = c.get("/dashboard/experiments/exp-a")
        assert (
            page.status_code == 200 and f"Computed at {warmed:%Y-%m-%d %H:%M:%S} UTC" in page.text
        )


def test_a_payment_page_tells_its_story_in_plain_words(site, history) -> None:
    client, keys, accounts = site
    # a decision through the API, so the payment has one with reasons
    p = history.payments.iloc[0]
    payment = {
        "payment_id": "in_dash_1", "object": "invoice", "account_id": p["account_id"],
        "charge_model": p["charge_model"], "amount": 4900, "currency": "usd",
        "customer_id": "cus_dash_1", "customer_timezone": "America/Chicago",
        "card_brand": "visa", "card_funding": "debit", "billing_reason": "subscription_cycle",
        "failed_at": "2026-05-20T14:00:00Z", "decline_code": "insufficient_funds",
    }  # fmt: skip
    decided = client.post(
        "/v1/decisions",
        json={"payment": payment, "now": "2026-05-20T14:00:00Z"},
        headers={"Authorization": f"Bearer {keys['scheduler'][1]}"},
    )
    assert decided.status_code == 200, decided.text
    _sign_in(client, keys["analyst"][1])
    found = client.get("/dashboard/payments?q=cus_dash_1")
    assert f'href="/dashboard/payments/in_dash_1?account={payment["account_id"]}"' in found.text
    page = client.get("/dashboard/payments/in_dash_1")
    assert page.status_code == 200
    assert "$49.00, open" in page.text and "First failure" in page.text
    assert "Retry at" in page.text or "No retry:" in page.text
    assert re.search(r"<li>[a-z ]+( = .+| not known) (raised|lowered) the chance \([+-]", page.text)
    # a second decision half an hour later replaces the first one's plan, which says so
    again = client.post(
        "/v1/decisions",
        json={"payment": payment, "now": "2026-05-20T14:30:00Z"},
        headers={"Authorization": f"Bearer {keys['scheduler'][1]}"},
    )
    assert again.status_code == 200, again.text
    page = client.get("/dashboard/payments/in_dash_1").text
    first_plan = decided.json()["retry"]
    if first_plan is not None:
        assert "(replaced by the decision of 2026-05-20 14:30:00)" in page
    # in event order, one time format, nothing shown as nan
    kinds = re.findall(r'<tr class="(attempt|decision|message)">', page)
    assert kinds[0] == "attempt" and kinds.index("decision") > 0, kinds
    times = re.findall(r'<tr class="\w+">\s*<td>([^<]*)</td>', page)
    assert times and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", t) for t in times)
    assert times == sorted(times)
    assert "nan" not in re.sub(r"<[^>]+>", " ", page).split()

    # a key scoped to another account: not found, the same words as for an unknown id
    other = next(a for a in accounts if a != p["account_id"])
    _, outsider = create_key(client.app.state.engine, "analyst", accounts=[other])
    _sign_in(client, outsider)
    hidden = client.get("/dashboard/payments/in_dash_1")
    unknown = client.get("/dashboard/payments/in_nobody")
    assert hidden.status_code == unknown.status_code == 404
    results = client.get("/dashboard/payments?q=cus_dash_1").text.split("</form>")[-1]
    assert "cus_dash_1" not in results and "No payment with that id" in results


def test_the_declines_and_operations_pages(site) -> None:
    import csv
    import io

    client, keys, _ = site
    _sign_in(client, keys["analyst"][1])
    page = client.get(f"/dashboard/declines?{PERIOD}")
    assert page.status_code == 200
    for title in ("Decline category", "Charge model", "Card brand", "Merchant retries made"):
        assert f"<h2>{title}</h2>" in page.text
    assert "<td>soft</td>" in page.text and "<td>hard</td>" in page.text
    # money by decline category, in the reporting currency at the stated rates, and as CSV
    money = page.text.split('id="decline-money"')[1].split("</table>")[0]
    assert "<th>Currency</th>" not in money and "In USD, each currency converted" in page.text
    first = re.search(r"<tr><td>(\w+)</td><td>[\d,]+</td><td>\$([\d,.]+)</td>", money)
    rows = list(csv.DictReader(io.StringIO(
        client.get(f"/dashboard/declines?{PERIOD}&format=csv&table=money").text
    )))  # fmt: skip
    usd = sum(float(r["failed_amount"]) * SIM_FX[r["currency"]] for r in rows
              if r["category"] == first.group(1))  # fmt: skip
    assert float(first.group(2).replace(",", "")) == pytest.approx(usd, abs=0.01)
    assert {r["currency"] for r in rows} == set(SIM_FX) & {r["currency"] for r in rows}
    ops = client.get("/dashboard/operations")
    assert ops.status_code == 200 and "Retries due and not yet made" in ops.text
    assert "Not compared yet" in ops.text and 'id="idle"' not in ops.text
    # a plan left by a finished run, months due: a human duration and what it means
    from reclaim.serving.store import tables as t

    account = client.app.state.engine.connect().execute(
        sa.text("select account_id, payment_id from payments limit 1")
    ).one()  # fmt: skip
    long_ago = datetime(2026, 5, 1, 12, tzinfo=UTC)
    with client.app.state.engine.begin() as conn:
        conn.execute(sa.insert(t.scheduled_actions), [{
            "action_id": f"{account[0]}:{account[1]}:0:0", "payment_id": account[1],
            "account_id": account[0], "after_attempt": 0, "decided_at": long_ago,
            "retry_at": long_ago, "status": "scheduled", "updated_at": long_ago, "tries": 0,
        }])  # fmt: skip
    ops = client.get("/dashboard/operations").text
    late = re.search(r"How late the oldest of them is</td><td>(\d+ days(?: \d+ h)?)</td>", ops)
    assert late and 'id="idle"' in ops and "no scheduler works this store" in ops, ops[:3000]
    # once the API has decided 200 times, the page compares their features with training's
    ids = list(client.app.state.engine.connect().execute(
        sa.text("select payment_id from payments order by payment_id limit 250")
    ).scalars())  # fmt: skip
    decided = client.post(
        "/v1/decisions/batch",
        json={"decisions": [{"payment_id": i, "now": "2026-06-01T12:00:00Z"} for i in ids]},
        headers={"Authorization": f"Bearer {keys['scheduler'][1]}"},
    )
    assert decided.status_code == 200, decided.text
    ops = client.get("/dashboard/operations")
    assert '<table id="skew">' in ops.text and "<td>network_decline_code</td>" in ops.text


def test_odd_query_strings_get_a_page_not_an_error(site) -> None:
    client, keys, _ = site
    _sign_in(client, keys["analyst"][1])
    for query in ("start=yesterday", "start=2026-05-02&end=2026-05-01", "start=1000-01-01",
                  "page=-4&sort=drop&order=sideways&search=%00%ud800&q=%00%ud800"):  # fmt: skip
        for path in ("/dashboard", "/dashboard/accounts", "/dashboard/payments",
                     "/dashboard/declines", "/dashboard/operations"):  # fmt: skip
            page = client.get(f"{path}?{query}")
            assert page.status_code == 200, (path, query, page.text[:200])


def test_a_period_of_centuries_is_cut_to_three_years_and_answers_at_once(site) -> None:
    """The period is bounded (a chart row per day): the page says so, the API refuses."""
    client, keys, _ = site
    _sign_in(client, keys["analyst"][1])
    page = client.get("/dashboard?start=2000-01-01&end=2999-12-31")
    assert page.status_code == 200 and "at most 1,096 days" in page.text
    assert len(page.content) < 5_000_000  # was 290 MB
    api = client.get(
        "/v1/stats/overview?start=2000-01-01&end=2999-12-31",
        headers={"Authorization": f"Bearer {keys['analyst'][1]}"},
    )
    assert api.status_code == 422 and "at most 1,096" in api.text


def test_healthz_answers_while_a_dashboard_page_is_being_built(tmp_path, trained, monkeypatch):
    """A page's queries run off the event loop: while one is held in the middle of building
    the dashboard over 2000–2999, ``/healthz`` and another page still answer."""
    import threading

    import httpx

    from reclaim.serving.store import stats

    entered, release = threading.Event(), threading.Event()
    overview = stats.overview

    def held(*args, **kwargs):
        if not entered.is_set():  # the first page only
            entered.set()
            assert release.wait(60), "the test never released the page"
        return overview(*args, **kwargs)

    monkeypatch.setattr(stats, "overview", held)
    port = _free_port()
    server = _serve(create_app(_settings(tmp_path, trained, secure=False)), port)
    base = f"http://127.0.0.1:{port}"
    try:
        _, analyst = create_key(repo.make_engine(f"sqlite:///{tmp_path / 'dash.db'}"), "analyst")
        with httpx.Client(base_url=base, timeout=60) as browser:
            assert _sign_in(browser, analyst).status_code == 303
            answers: list[httpx.Response] = []
            slow = threading.Thread(
                target=lambda: answers.append(
                    browser.get("/dashboard?start=2000-01-01&end=2999-12-31")
                )
            )
            slow.start()
            assert entered.wait(60), "the page never reached its query"
            health = httpx.get(f"{base}/healthz", timeout=10)
            login = httpx.get(f"{base}/dashboard/login", timeout=10)
            still_building = slow.is_alive()
            release.set()
            slow.join(60)
        assert health.status_code == 200 and login.status_code == 200
        assert still_building, "the page was held while the others answered"
        assert answers[0].status_code == 200 and "at most 1,096 days" in answers[0].text
    finally:
        release.set()
        server.should_exit = True


def _report_page(engine, folder: Path) -> Path:
    """Experiment exp-a's HTML report, from the store, written to ``folder``."""
    from reclaim.serving.store import experiments
    from reclaim.training.ab_publish import to_html
    from reclaim.training.ab_report import build_report

    tables = repo.load_contract(engine)
    _, assignments, opted_out, _ = experiments.report_inputs(engine, "exp-a")
    report = build_report("exp-a", tables, assignments, SIM_FX, "usd", opted_out=opted_out)
    page = folder / "ab_report.html"
    page.write_text(to_html(report))
    return page


@needs_chromium
def test_the_pages_in_a_real_browser(tmp_path, trained, history) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(_settings(tmp_path, trained))
    port = _free_port()
    server = _serve(app, port)
    engine = app.state.engine
    repo.save_contract(engine, history)
    _run_experiment(engine, history)
    accounts = sorted(history.payments["account_id"].unique())
    _, analyst = create_key(engine, "analyst")
    _, scoped = create_key(engine, "analyst", accounts=[accounts[1]])

    driver = chromium(browser_logs=True)
    base = f"http://localhost:{port}"
    try:

        def sign_in(key: str) -> None:
            driver.delete_all_cookies()
            driver.get(f"{base}/dashboard/login")
            driver.find_element(By.ID, "key").send_keys(key)
            driver.find_element(By.ID, "sign-in").click()
            WebDriverWait(driver, 30).until(lambda d: d.title.startswith("Overview"))

        sign_in(analyst)
        driver.get(f"{base}/dashboard?{HALF}")
        assert driver.title.startswith("Overview")
        bars = driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.recovered")
        assert sum(float(b.get_attribute("height")) > 0 for b in bars) > 10, "charts have data"
        # the previous period is drawn in: a point per day, some above the baseline
        points = driver.find_elements(By.CSS_SELECTOR, "svg.chart circle.previous")
        assert len(points) == len(bars)
        assert sum(float(p.get_attribute("cy")) < 136 for p in points) > 10, "it has data"
        driver.save_screenshot(str(DOCS / "dashboard-overview.png"))
        chart = driver.find_element(By.CSS_SELECTOR, "svg.chart[data-currency='usd']")
        chart.screenshot(str(DOCS / "dashboard-chart.png"))
        driver.find_element(By.LINK_TEXT, "Accounts").click()
        WebDriverWait(driver, 30).until(lambda d: d.title.startswith("Accounts"))
        driver.get(f"{base}/dashboard/accounts?{PERIOD}")
        driver.find_element(By.PARTIAL_LINK_TEXT, "Recovery rate").click()
        WebDriverWait(driver, 30).until(lambda d: "sort=recovery_rate" in d.current_url)
        rows = driver.find_elements(By.CSS_SELECTOR, "#accounts tbody tr")
        assert len(rows) > 5
        driver.save_screenshot(str(DOCS / "dashboard-accounts.png"))
        first = driver.find_element(By.CSS_SELECTOR, "#accounts tbody tr td:first-child a")
        account_id = first.text
        first.click()
        WebDriverWait(driver, 30).until(lambda d: d.title.startswith(account_id))
        assert driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.recovered")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#settings tbody tr")) == 7
        driver.execute_script("document.getElementById('categories').scrollIntoView()")
        driver.save_screenshot(str(DOCS / "dashboard-account.png"))  # categories, settings
        driver.find_element(By.LINK_TEXT, "Payments").click()
        WebDriverWait(driver, 30).until(lambda d: d.title.startswith("Payments"))
        driver.find_element(By.ID, "q").send_keys(history.payments["customer_id"].iloc[3] + "\n")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#payments a"))
        driver.find_element(By.CSS_SELECTOR, "#payments a").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "timeline"))
        assert driver.find_elements(By.CSS_SELECTOR, "#timeline tr.attempt")
        driver.save_screenshot(str(DOCS / "dashboard-payment.png"))
        for name, title in (("Declines", "Declines"), ("Operations", "Operations")):
            driver.find_element(By.LINK_TEXT, name).click()
            WebDriverWait(driver, 30).until(lambda d, t=title: d.title.startswith(t))
        driver.get(f"{base}/dashboard/declines?{PERIOD}")
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.breakdown tbody tr")) > 10
        driver.save_screenshot(str(DOCS / "dashboard-declines.png"))
        driver.find_element(By.LINK_TEXT, "Experiments").click()
        WebDriverWait(driver, 30).until(lambda d: d.title.startswith("Experiments"))
        driver.find_element(By.LINK_TEXT, "exp-a").click()
        WebDriverWait(driver, 60).until(lambda d: d.title.startswith("Experiment exp-a"))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#arms tbody tr")) == 2
        assert driver.find_element(By.CSS_SELECTOR, "p.verdict").text.startswith("Verdict:")
        driver.save_screenshot(str(DOCS / "dashboard-experiment.png"))
        driver.find_element(By.LINK_TEXT, "Operations").click()
        WebDriverWait(driver, 30).until(lambda d: d.title.startswith("Operations"))
        driver.save_screenshot(str(DOCS / "dashboard-operations.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        # every page, as it opens (no dates given: the newest data), shows data and writes
        # every number for people: no scientific notation, no "nan"
        for path in ("", "/accounts", f"/accounts/{accounts[0]}", "/declines", "/experiments",
                     "/experiments/exp-a", "/operations", "/payments"):  # fmt: skip
            driver.get(f"{base}/dashboard{path}")
            body = driver.find_element(By.TAG_NAME, "body").text
            assert not re.search(r"\d\.?\d*e[+-]\d\d|\bnan\b|NaN|None", body), (path, body[:500])
            assert "No failed payments in this period" not in body, path

        # the HTML report of the same experiment, as `reclaim report --html` writes it
        page = _report_page(engine, tmp_path)
        driver.get(page.as_uri())
        first = driver.find_element(By.CSS_SELECTOR, "body > *:nth-child(2)")
        assert first.get_attribute("id") == "verdicts" and first.text.startswith("Verdict:")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert not re.search(r"\d\.?\d*e[+-]\d\d|\bnan\b|NaN", body), "numbers for people"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#uplift tbody tr")) <= 20
        driver.save_screenshot(str(DOCS / "ab-report.png"))
        driver.execute_script("document.getElementById('uplift').scrollIntoView()")
        driver.save_screenshot(str(DOCS / "ab-report-accounts.png"))

        sign_in(scoped)
        driver.get(f"{base}/dashboard/accounts?{PERIOD}")
        cells = driver.find_elements(By.CSS_SELECTOR, "#accounts tbody tr td:first-child")
        assert {c.text for c in cells} == {accounts[1]}, driver.page_source[:3000]
        driver.get(f"{base}/dashboard/accounts/{accounts[0]}?{PERIOD}")
        assert driver.find_element(By.TAG_NAME, "h1").text == "Account not found"
        driver.back()
        driver.find_element(By.XPATH, "//button[text()='Sign out']").click()
        WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("/dashboard/login"))
        driver.get(f"{base}/dashboard")
        assert driver.current_url.endswith("/dashboard/login"), "signed out"
    finally:
        driver.quit()
        server.should_exit = True
