"""The simulator: reproducible, honest about its sources, and with the effects it claims."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reclaim import contract, vocab
from reclaim.reference import RandomizedLogging
from reclaim.simulator import Marketplace, Rollout, SimulatorConfig, generate, rollout, truth
from reclaim.simulator.config import sources


def test_same_seed_same_tables() -> None:
    a = rollout(generate(10, 500, seed=5), RandomizedLogging(), seed=5).tables
    b = rollout(generate(10, 500, seed=5), RandomizedLogging(), seed=5).tables
    for name in ("payments", "attempts", "messages", "decisions"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    c = rollout(generate(10, 500, seed=6), RandomizedLogging(), seed=6).tables
    assert not c.payments["amount"].equals(a.payments["amount"])


def test_logged_history_satisfies_the_contract(history: Rollout) -> None:
    valid = contract.validate(history.tables)
    assert len(valid.decisions) == len(history.tables.decisions)
    logged = valid.attempts[valid.attempts["attempt_number"] > 0]
    merchant = logged[logged["initiator"] == vocab.Initiator.MERCHANT]
    assert merchant["propensity"].between(0, 1, inclusive="right").all()
    assert (merchant["policy"] == "randomized_logging").all()
    assert valid.messages["propensity"].between(0, 1, inclusive="right").all()


def test_logging_propensities_match_the_randomization(history: Rollout) -> None:
    """A first-decision message goes out with probability 0.6, split evenly over the channels
    the customer can receive (the 3D Secure reminder, a rule's, aside)."""
    d = history.tables.decisions
    first = d[(d["decision_number"] == 0) & (d["channel_propensity"] < 1)]
    share = first["channel"].notna().mean()
    assert share == pytest.approx(0.6, abs=0.04)
    p = history.tables.payments.set_index("payment_id")
    reach = p[["reachable_email", "reachable_sms", "reachable_in_app"]].sum(axis=1)
    sent = first[first["channel"].notna()]
    expected = 0.6 / reach.reindex(sent["payment_id"]).to_numpy()
    assert np.allclose(sent["channel_propensity"], expected)
    for ch in ("sms", "in_app"):  # never through a channel the customer cannot receive
        rows = history.tables.messages[history.tables.messages["channel"] == ch]
        assert p.loc[rows["payment_id"], f"reachable_{ch}"].all()


def test_payments_look_like_the_published_mix() -> None:
    m = generate(50, 40_000, seed=2)
    debit = m.payments["card_funding"].isin(["debit", "prepaid"])
    if_share = m.payments["decline_code"] == "insufficient_funds"
    # Recurly: insufficient funds is 6.9% of credit declines and 29.0% of debit declines.
    assert if_share[~debit].mean() == pytest.approx(0.069, abs=0.01)
    assert if_share[debit].mean() == pytest.approx(0.290, abs=0.015)
    volume = m.payments.groupby("account_id").size().sort_values(ascending=False)
    assert volume.iloc[: len(volume) // 10].sum() > 0.4 * volume.sum(), "heavy-tailed volume"
    assert set(m.payments["charge_model"].astype(str)) == {c.value for c in vocab.ChargeModel}
    assert m.payments["on_behalf_of"].any()
    # an address for ~85% of customers; the rest are placed by their card's country, as the
    # Stripe normalizer places them
    assert m.payments["customer_country"].isna().mean() == pytest.approx(0.15, abs=0.01)
    assert m.payments["customer_timezone"].notna().all()


def test_no_retry_ever_recovers_a_hard_decline(market: Marketplace) -> None:
    hard = np.flatnonzero((market.hidden["category"] == "hard").to_numpy())
    assert len(hard) > 50
    for days in (0.1, 1, 3, 7.5, 14, 29):
        at = market.payments["failed_at"].iloc[hard] + pd.Timedelta(days=days)
        p = truth.retry_success_probability(market, hard, at, np.ones(len(hard), dtype=int))
        assert (p == 0).all()


def test_hard_declines_recover_only_through_the_customer(market: Marketplace) -> None:
    from reclaim.reference import StripeLike

    out = rollout(market, StripeLike()).tables.attempts
    hard_ids = market.payments.loc[(market.hidden["category"] == "hard").to_numpy(), "payment_id"]
    on_hard = out[out["payment_id"].isin(hard_ids)]
    assert (on_hard["attempt_number"] == 0).sum() == len(hard_ids)
    retried = on_hard[(on_hard["initiator"] == "merchant") & (on_hard["attempt_number"] > 0)]
    assert retried.empty, "the rules forbid retrying hard declines"
    assert (on_hard["outcome"] == "succeeded").any(), "messages still recover some"


def _at_local(market: Marketplace, rows: np.ndarray, day: int, hour: float) -> pd.Series:
    from reclaim import timeutil

    h = market.hidden.iloc[rows]
    local = h["failed_local"].dt.normalize() + pd.Timedelta(days=day, hours=hour)
    return timeutil.to_utc(local, h["true_timezone"])


def test_retry_success_varies_with_local_hour_as_configured(market: Marketplace) -> None:
    cfg = market.config
    # Processing errors have a flat base, so the ratio isolates the hour effect.
    rows = np.flatnonzero(
        (market.payments["decline_code"] == "processing_error").to_numpy()
        & (market.payments["card_funding"] == "credit").to_numpy()
    )
    assert len(rows) > 5
    one = np.ones(len(rows), dtype=int)
    night = truth.retry_success_probability(market, rows, _at_local(market, rows, 8, 3.0), one)
    noon = truth.retry_success_probability(market, rows, _at_local(market, rows, 8, 14.0), one)
    evening = truth.retry_success_probability(market, rows, _at_local(market, rows, 8, 20.0), one)
    expected = cfg.hour_multiplier["night"] / cfg.hour_multiplier["business"]
    assert np.allclose(night / noon, expected)
    assert np.allclose(evening / noon, cfg.hour_multiplier["other"])


def test_insufficient_funds_succeed_after_payday(market: Marketplace) -> None:
    cfg = market.config
    h = market.hidden
    rows = np.flatnonzero(
        (market.payments["decline_code"] == "insufficient_funds").to_numpy()
        & (h["pay_cycle"] == "monthly").to_numpy()
        & ~h["funds_never"].to_numpy()
        & (h["failed_local"].dt.day.between(5, 20)).to_numpy()
    )
    assert len(rows) > 10
    local_fail = h["failed_local"].iloc[rows]
    next_first = (local_fail.dt.to_period("M") + 1).dt.to_timestamp()
    from reclaim import timeutil

    tz = h["true_timezone"].iloc[rows]
    before = timeutil.to_utc(next_first - pd.Timedelta(hours=12), tz)
    after = timeutil.to_utc(next_first + pd.Timedelta(hours=12), tz)
    one = np.ones(len(rows), dtype=int)
    p_before = truth.retry_success_probability(market, rows, before, one)
    p_after = truth.retry_success_probability(market, rows, after, one)
    lo, hi = cfg.funds_success
    # Same hour of day, half a day either side of payday: only the funds differ.
    assert (p_after > 5 * p_before).all()
    assert np.median(p_after / p_before) > 0.5 * hi / lo


def test_message_effect_decays_with_days_delinquent(market: Marketplace) -> None:
    rows = np.flatnonzero((market.hidden["segment"] == "email").to_numpy())
    email = np.full(len(rows), "email", dtype=object)
    own = np.asarray(market.payments["charge_model"].iloc[rows] == "direct")
    sender = np.where(
        own | market.payments["on_behalf_of"].iloc[rows].to_numpy(), "account", "platform"
    )
    effect = {}
    for day in (0, 15):
        at = market.payments["failed_at"].iloc[rows] + pd.Timedelta(days=day)
        effect[day], _ = truth.message_effect(market, rows, at, email, sender, np.zeros(len(rows)))
    ratio = effect[15].sum() / effect[0].sum()
    assert ratio == pytest.approx(4.2 / 13.3, rel=0.05)  # Baremetrics day 15 vs day 0


def test_every_parameter_has_a_source_and_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "simulator.md").read_text()
    published = ("Recurly", "Baremetrics", "Stripe", "Churn Buster", "Visa")
    for f in fields(SimulatorConfig):
        source = sources()[f.name]
        assert "assumption" in source or any(p in source for p in published), f.name
        assert f"`{f.name}`" in doc, f"{f.name} missing from docs/simulator.md"


def test_generate_rejects_empty_marketplaces() -> None:
    with pytest.raises(ValueError, match="at least one account and one payment"):
        generate(0, 10, seed=1)


def test_slices_rolled_out_apart_join_into_the_same_rollout() -> None:
    """A payment's rollout depends on its own draws only, so slices of a marketplace rolled
    out apart (as on Dask) join into the whole marketplace's rollout, row for row; another
    seed draws another exploration."""
    from reclaim.simulator import Oracle
    from reclaim.simulator.distributed import slices

    market = generate(12, 900, seed=9)
    for make in (lambda m: RandomizedLogging(), Oracle):
        whole = rollout(market, make(market), seed=9)
        parts = [rollout(market.subset(s), make(market.subset(s)), seed=9) for s in slices(900, 4)]
        joined = Rollout.concat(parts)
        for name in ("payments", "attempts", "messages", "decisions"):
            pd.testing.assert_frame_equal(
                getattr(joined.tables, name), getattr(whole.tables, name), check_exact=True
            )
        pd.testing.assert_frame_equal(joined.outcomes, whole.outcomes, check_exact=True)
    other = rollout(market, RandomizedLogging(), seed=10).tables.decisions
    first = rollout(market, RandomizedLogging(), seed=9).tables.decisions
    assert not other["retry_at"].equals(first["retry_at"])
    assert [len(s) for s in slices(10, 4)] == [3, 3, 2, 2] and len(slices(3, 8)) == 3
