"""Train/serve skew caught in production: the API's monitor raises its alert for the feature a
replay's Stripe answers lost, and stays silent on a clean replay."""

from __future__ import annotations

import pytest

from reclaim.replay import ReplayConfig, run_replay

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("strip", [False, True], ids=["clean", "network codes stripped"])
def test_the_skew_alert_fires_for_a_lost_field_and_only_then(tmp_path, trained, strip):
    config = ReplayConfig(
        payments=80, control_share=0.0, seed=31, strip_network_codes=strip, failure_days=10
    )
    table = run_replay(trained.market, trained.tracking_uri, tmp_path, config)
    alerts = table.attrs["skew_alerts"]
    if strip:
        assert "network_decline_code" in alerts
        mix = table.attrs["data_path"].set_index("value")
        assert mix.loc["network_decline_code (payments)", "stored"] == 1.0
    else:
        assert alerts == []
