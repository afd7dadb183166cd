"""The whole loop as the demo runs it: API and scheduler processes, the stand-in answering
from the simulator's truth, an A/B test in accelerated time."""

from __future__ import annotations

from reclaim.serving.replay import ReplayConfig, run_replay


def test_a_short_replay_runs_both_arms_and_charges_each_key_once(tmp_path, trained):
    config = ReplayConfig(payments=40, wall_seconds=25, horizon_days=20, failure_days=10)
    table = run_replay(trained.market, trained.tracking_uri, tmp_path / "replay", config)
    assert list(table.index) == ["stripe_like", "learned"]
    # a payment is in an arm from its first decision; one its customer paid before the
    # scheduler asked for a decision is in neither
    assert table["payments"].sum() + table.attrs["undecided"] == 40
    assert table.attrs["undecided_paid_by_customer"] == table.attrs["undecided"]
    assert table.attrs["charges"] > 0 and table.attrs["most_per_key"] == 1
    assert (table["recovered"] == table["by_retry"] + table["by_customer"]).all()
    assert (table["retries"] > 0).all()  # both arms' decisions were carried out
