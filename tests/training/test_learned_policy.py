"""Against the simulator's truth: the learned policy beats the reference policies on fresh
payments it never trained on, and closes most of the gap to the oracle."""

from __future__ import annotations

import pytest

from reclaim.training.evaluate import evaluate_in_simulator


@pytest.mark.slow
def test_learned_policy_beats_references_on_fresh_payments(trained) -> None:
    table, _ = evaluate_in_simulator(
        f"models:/reclaim-policy/{trained.result.model_version}",
        trained.tracking_uri,
        n_payments=20_000,
        seed=8,
    )
    learned = table.loc["learned"]
    for reference in ("stripe_like", "rules", "fixed_schedule"):
        assert learned["recovered_usd_lo"] > table.loc[reference, "recovered_usd_hi"], (
            reference,
            table[["recovered_usd_lo", "recovered_usd_hi"]],
        )
    fixed, oracle = table.loc["fixed_schedule", "net_usd"], table.loc["oracle", "net_usd"]
    gap_closed = (learned["net_usd"] - fixed) / (oracle - fixed)
    assert gap_closed >= 0.6, table[["net_usd"]]
    assert learned["messages_per_payment"] <= 3
