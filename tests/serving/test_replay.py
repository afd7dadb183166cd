"""The whole loop as the demo runs it: the API as its own process, the scheduler, the stand-in
answering from the simulator's truth, an A/B test in simulated time."""

from __future__ import annotations

import pandas as pd

from reclaim.serving.replay import ReplayConfig, run_replay


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

    again = run_replay(trained.market, trained.tracking_uri, tmp_path / "second", config)
    pd.testing.assert_frame_equal(table, again)
    pd.testing.assert_frame_equal(table.attrs["per_payment"], again.attrs["per_payment"])
    assert {k: v for k, v in table.attrs.items() if k != "per_payment"} == {
        k: v for k, v in again.attrs.items() if k != "per_payment"
    }
