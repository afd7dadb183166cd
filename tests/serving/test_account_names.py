"""Issue 28: connected accounts' display names from Stripe — a sweep of the platform's accounts
(`reclaim accounts names`, through the official SDK against the stand-in) and Connect's
``account.updated`` events as Stripe delivers them; the newest wins, a replay changes nothing,
an event about another account changes nothing; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import stripe
from typer.testing import CliRunner

from reclaim.cli import app
from reclaim.features import stripe_normalize as sn
from reclaim.reference import NoRetry
from reclaim.serving import webhooks
from reclaim.serving.store import profiles
from reclaim.serving.store import tables as t
from reclaim.settings import get_settings
from reclaim.simulator import generate, rollout
from reclaim.simulator.stripe_export import display_name, to_stripe_objects
from reclaim.simulator.stripe_standin import StripeStandIn

SECRET = "whsec_names"


def _deliver(engine, event: dict) -> webhooks.Receipt:
    body = json.dumps(event).encode()
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), SECRET, timestamp=int(time.time())
    )
    return webhooks.receive(engine, "connect", body, header, SECRET)


def test_names_come_from_a_sweep_and_stay_current_through_account_events(
    engine, store_url, monkeypatch
) -> None:
    simulated = rollout(generate(4, 30, seed=3), NoRetry()).tables
    accounts = sorted(simulated.payments["account_id"].unique())
    with StripeStandIn() as standin:
        standin.load(to_stripe_objects(simulated))
        monkeypatch.setenv("RECLAIM_STRIPE_API_KEY", standin.api_key)
        monkeypatch.setenv("RECLAIM_STRIPE_API_BASE", standin.url)
        monkeypatch.setenv("RECLAIM_DATABASE_URL", store_url)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(app, ["accounts", "names"])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        assert f"read {len(accounts)} connected accounts; {len(accounts)} have a display name" in (
            result.output
        )
        assert profiles.names(engine, accounts) == {a: display_name(a) for a in accounts}

        # the owner renames the account in Stripe: Connect's event, delivered as Stripe does
        sent: list[dict] = []
        standin.send_event = sent.append
        standin.webhooks = {"platform": ("", ""), "connect": ("", "")}
        later = datetime.now(UTC) + timedelta(days=1)
        standin.rename_account(accounts[0], "Yoga Studio Nord", later)
        standin.rename_account(accounts[0], "Yoga Studio Süd", later + timedelta(hours=1))
    older, newer = sent
    assert newer["type"] == "account.updated" and newer["account"] == accounts[0]
    assert _deliver(engine, newer).status == "processed"
    assert _deliver(engine, older).status == "processed"  # late, and older: it loses
    again = _deliver(engine, newer)
    assert not again.first_delivery
    assert profiles.names(engine, [accounts[0]]) == {accounts[0]: "Yoga Studio Süd"}

    # an event on one account's endpoint about another account changes nothing
    forged = {**newer, "id": "evt_forged", "account": accounts[1]}
    forged["data"] = {"object": {**newer["data"]["object"], "display_name": "x"}}
    forged["data"]["object"]["settings"] = {"dashboard": {"display_name": "Not Theirs"}}
    _deliver(engine, forged)
    assert profiles.names(engine, accounts[:2]) == {
        accounts[0]: "Yoga Studio Süd", accounts[1]: display_name(accounts[1])
    }  # fmt: skip
    with engine.connect() as conn:
        assert conn.execute(
            sa.select(sa.func.count()).select_from(t.account_profiles)
        ).scalar() == (len(accounts))


def test_a_display_name_is_what_people_call_the_account() -> None:
    both = {"id": "acct_1", "settings": {"dashboard": {"display_name": "Dash"}},
            "business_profile": {"name": "Business"}}  # fmt: skip
    assert sn.display_name(both) == "Dash"
    assert sn.display_name({"id": "acct_1", "business_profile": {"name": " Biz\x00\n "}}) == "Biz"
    for nameless in ({"id": "acct_1"}, {"id": "acct_1", "business_profile": {"name": ""}},
                     {"id": "acct_1", "settings": {"dashboard": {"display_name": 7}}}):  # fmt: skip
        assert sn.display_name(nameless) is None
    assert len(sn.display_name({"business_profile": {"name": "n" * 1000}}) or "") == 255
    with pytest.raises(sn.Unsupported):
        sn.account_profile({"business_profile": {"name": "no id"}}, datetime.now(UTC))


def test_names_of_more_accounts_than_a_query_may_name(engine) -> None:
    """The accounts CSV asks for the names of every row (up to 100,000): more ids than one
    PostgreSQL statement takes."""
    at = datetime(2026, 6, 1, tzinfo=UTC)
    many = [f"acct_{k:06d}" for k in range(70_000)]  # PostgreSQL takes at most 65,535
    with engine.begin() as conn:
        profiles.save(conn, [{"account_id": many[-1], "display_name": "Last", "updated_at": at}])
    assert profiles.names(engine, many) == {many[-1]: "Last"}
