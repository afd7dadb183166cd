"""The whole loop as the demo runs it: the API as its own process, the scheduler, the stand-in
answering from the simulator's truth, an A/B test in simulated time."""

from __future__ import annotations

import pandas as pd

from reclaim.replay import ReplayConfig, run_replay


def test_a_replay_runs_both_arms_charges_each_key_once_and_repeats_for_its_seed(tmp_path, trained):
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

    again = run_replay(trained.market, trained.tracking_uri, tmp_path / "second", config)
    pd.testing.assert_frame_equal(table, again)
    pd.testing.assert_frame_equal(table.attrs["per_payment"], again.attrs["per_payment"])
    frames = ("per_payment", "data_path")
    assert {k: v for k, v in table.attrs.items() if k not in frames} == {
        k: v for k, v in again.attrs.items() if k not in frames
    }
