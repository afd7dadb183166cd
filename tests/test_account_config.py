"""Account configuration: defaults merged with overrides, and the limits it puts on actions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from reclaim import account_config as ac
from reclaim import contract, rules, vocab
from reclaim.policy import ActionBatch, DecisionBatch
from reclaim.simulator import Marketplace, generate

RULES = rules.NetworkRules()


@pytest.fixture(scope="module")
def small_market() -> Marketplace:
    return generate(n_accounts=5, n_payments=200, seed=2)


def test_overrides_lie_over_the_defaults_field_by_field() -> None:
    defaults = {
        "max_messages": 2,
        "branding": {"display_name": "Platform", "accent_color": "#112233"},
    }
    own = {"max_retries": 4, "branding": {"display_name": "Shop"}}
    cfg = ac.effective(defaults, own)
    assert cfg.max_messages == 2 and cfg.max_retries == 4 and not cfg.opted_out
    assert cfg.branding.display_name == "Shop" and cfg.branding.accent_color == "#112233"
    assert [c.value for c in cfg.allowed_channels] == ["email", "sms", "in_app"]
    # only fields given in a body count as overrides
    body = ac.AccountConfig.model_validate({"allowed_channels": ["email"], "sender": None})
    assert ac.overrides(body) == {"allowed_channels": ["email"], "sender": None}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_retries": 99}, "max_retries"),
        ({"allowed_channels": ["fax"]}, "allowed_channels"),
        ({"branding": {"accent_color": "red"}}, "accent_color"),
        ({"branding": {"email_from": "not an address"}}, "email_from"),
        ({"sender": "customer"}, "sender"),
        ({"opt_out": True}, "opt_out"),
    ],
)
def test_invalid_configuration_names_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ac.AccountConfig.model_validate(body)


def _batch(market: Marketplace, configs: dict[str, ac.AccountConfig]) -> DecisionBatch:
    """The first decision of 60 payments, right after their first failure, of customers every
    channel reaches (reachability has its own tests)."""
    p = market.payments.iloc[:60].reset_index(drop=True)
    p = p.assign(reachable_email=True, reachable_sms=True, reachable_in_app=True)
    return DecisionBatch.from_history(
        p,
        contract.first_failures(p),
        contract.empty(contract.MESSAGES),
        p["failed_at"],
        ac.constraints(p["account_id"], configs),
    )


def _everything(batch: DecisionBatch, channel: str = "sms") -> ActionBatch:
    n = len(batch)
    return ActionBatch.build(
        n,
        retry_at=batch.now + pd.Timedelta(hours=30),
        channel=np.full(n, channel),
        sender=np.full(n, "account"),
    )


def test_enforce_applies_each_accounts_limits(small_market: Marketplace) -> None:
    accounts = small_market.payments["account_id"].iloc[:60].unique()
    out_acct, capped, email_only, platform = accounts[:4]
    configs = {
        out_acct: ac.AccountConfig(opted_out=True),
        capped: ac.AccountConfig(max_retries=0),
        email_only: ac.AccountConfig(allowed_channels=["email"]),
        platform: ac.AccountConfig(sender="platform"),
    }
    batch = _batch(small_market, configs)
    acct = batch.payments["account_id"].to_numpy()
    soft = (batch.state["ever_hard"] == False).to_numpy()  # noqa: E712
    soft = (
        soft & ~batch.state["last_decline_code"].isin(list(vocab.CUSTOMER_ACTION_CODES)).to_numpy()
    )
    out = rules.enforce(batch, _everything(batch), RULES)
    reason, channel = out.reason.to_numpy(), out.channel.astype("object").to_numpy()
    sender = out.sender.astype("object").to_numpy()

    assert (reason[acct == out_acct] == "opted_out").all()
    assert pd.isna(channel[acct == out_acct]).all()
    assert (reason[(acct == capped) & soft] == "account_max_retries").all()
    assert pd.isna(channel[acct == email_only]).all(), "sms is not allowed there"
    assert (sender[acct == platform] == "platform").all()
    free = ~np.isin(acct, [out_acct, capped, email_only, platform]) & soft
    assert free.any() and out.retry_at[free].notna().all() and (channel[free] == "sms").all()
    assert (sender[free] == "account").all()
    # the same action with email passes where only email is allowed
    emails = rules.enforce(batch, _everything(batch, "email"), RULES)
    assert (emails.channel.astype("object").to_numpy()[acct == email_only] == "email").all()


def test_an_account_cap_above_the_networks_does_not_loosen_them(small_market) -> None:
    accounts = small_market.payments["account_id"].iloc[:60].unique()
    loose = {a: ac.AccountConfig(max_retries=35) for a in accounts}
    batch = _batch(small_market, loose)
    strict = dataclasses.replace(batch, constraints=None)
    assert (
        rules.limits(batch, RULES)["retries_left"] == rules.limits(strict, RULES)["retries_left"]
    ).all()
