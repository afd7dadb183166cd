"""The whole loop as the demo runs it: the API as its own process, the scheduler, the stand-in
answering from the simulator's truth, an A/B test in simulated time."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import sqlalchemy as sa

from reclaim.replay import ReplayConfig, run_replay
from reclaim.serving.store import tables as t
from reclaim.serving.store.repository import make_engine


def test_a_replay_runs_both_arms_charges_each_key_once_and_repeats_for_its_seed(tmp_path, trained):
    """Played again in two parts at once (split by account, each with its own API and store),
    it gives the same result, payment by payment, and one merged store."""
    config = ReplayConfig(payments=40, horizon_days=20, failure_days=10)
    table = run_replay(trained.market, trained.tracking_uri, tmp_path / "first", config)
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
    one, merged = (_store(tmp_path / name / "reclaim.db") for name in ("first", "second"))
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
