"""A/B tests in the API: the control arm's customers get the reference policy's decisions,
assigned by a hash of the customer, the same on every call."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from reclaim.experiment import in_control
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.settings import Settings


def test_assignment_is_stable_and_near_the_share():
    ids = [f"cus_{i}" for i in range(4000)]
    arm = in_control(ids, 0.3)
    assert np.array_equal(arm, in_control(ids, 0.3))
    assert 0.27 < arm.mean() < 0.33
    assert not in_control(ids, 0.0).any() and in_control(ids, 1.0).all()
    with pytest.raises(ValueError, match="within"):
        in_control(ids, 1.5)


def _client(tmp_path, trained, **settings) -> TestClient:
    app = create_app(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'ab.db'}",
            mlflow_tracking_uri=trained.tracking_uri,
            stripe_webhook_secret_platform=SecretStr("whsec_p"),
            stripe_webhook_secret_connect=SecretStr("whsec_c"),
            policy_reload_seconds=3600,
            **settings,
        )
    )
    return TestClient(app)


def test_the_control_arm_is_decided_by_the_reference_policy(tmp_path, trained, inline_payment):
    with _client(tmp_path, trained, experiment_control="stripe_like") as client:
        _, key = create_key(client.app.state.engine, "scheduler")
        client.headers["Authorization"] = f"Bearer {key}"
        body = {
            "decisions": [
                {"payment": inline_payment(i), "now": "2026-05-20T14:00:00Z"} for i in range(40)
            ]
        }
        decisions = client.post("/v1/decisions/batch", json=body).json()["decisions"]
        again = client.post("/v1/decisions/batch", json=body).json()["decisions"]
    customers = [inline_payment(i)["customer_id"] for i in range(40)]
    control = in_control(customers, 0.5)
    assert 0 < control.sum() < 40
    assert [d["policy"] for d in decisions] == ["stripe_like" if c else "learned" for c in control]
    assert [d["policy"] for d in again] == [d["policy"] for d in decisions]
    # stripe_like retries a day after the failure; the learned policy chooses its own time
    first = [
        d["retry"]["at_utc"] for d, c in zip(decisions, control, strict=True) if c and d["retry"]
    ]
    assert first and set(first) == {"2026-05-21T14:00:00Z"}


def test_an_unknown_control_policy_is_refused_by_name(tmp_path, trained):
    with pytest.raises(ValueError, match="not a reference policy"):
        _client(tmp_path, trained, experiment_control="gut_feeling")
