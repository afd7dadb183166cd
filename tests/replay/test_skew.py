"""Train/serve skew caught in production: the API's monitor raises its alert for the feature a
replay's Stripe answers lost (that it stays silent on a clean replay is checked by the parity
test's replay, tests/replay/test_parity.py)."""

from __future__ import annotations

import pytest

from reclaim.replay import ReplayConfig, run_replay

pytestmark = pytest.mark.slow


def test_the_skew_alert_fires_for_a_field_stripe_stopped_sending(tmp_path, trained):
    config = ReplayConfig(
        payments=80, control_share=0.0, seed=31, strip_network_codes=True, failure_days=10
    )
    table = run_replay(trained.market, trained.tracking_uri, tmp_path, config)
    assert "network_decline_code" in table.attrs["skew_alerts"]
    mix = table.attrs["data_path"].set_index("value")
    assert mix.loc["network_decline_code (payments)", "stored"] == 1.0
