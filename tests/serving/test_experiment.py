"""A/B tests in the API: each payment's arm is assigned once by a hash of its unit within its
account's rollout segment, stored, and the control arm is decided by the reference policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from reclaim import contract
from reclaim.experiment import ExperimentDesign, Segment
from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.store import experiments
from reclaim.serving.store import repository as repo
from reclaim.settings import Settings
from reclaim.simulator import generate

ROLLOUT = [
    Segment(name="small", max_failed_payments=50, treatment_share=0.1),
    Segment(name="large", treatment_share=0.5),
]


def test_assignment_follows_each_segments_rollout_share():
    design = ExperimentDesign(name="rollout", segments=ROLLOUT)
    ids = [f"cus_{i}" for i in range(6000)]
    sizes = np.where(np.arange(6000) % 2 == 0, 10, 500)
    segments, arms = design.assign(ids, sizes)
    again = design.assign(ids, sizes)[1]
    assert np.array_equal(arms, again)
    treated = arms == "treatment"
    assert set(segments[sizes == 10]) == {"small"} and set(segments[sizes == 500]) == {"large"}
    assert 0.08 < treated[sizes == 10].mean() < 0.12
    assert 0.47 < treated[sizes == 500].mean() < 0.53


@pytest.mark.parametrize(
    ("segments", "problem"),
    [
        ([Segment(name="a", max_failed_payments=5, treatment_share=0.1)], "last segment"),
        (
            [
                Segment(name="a", max_failed_payments=50, treatment_share=0.1),
                Segment(name="b", max_failed_payments=5, treatment_share=0.1),
                Segment(name="c", treatment_share=0.1),
            ],
            "ascending",
        ),
    ],
)
def test_a_rollout_that_cannot_place_every_account_is_refused(segments, problem):
    with pytest.raises(ValidationError, match=problem):
        ExperimentDesign(name="bad", segments=segments)


def test_a_payments_stored_arm_never_changes(engine):
    market = generate(8, 400, seed=2)
    payments = market.payments
    repo.save_contract(
        engine,
        contract.ContractTables(
            payments, contract.first_failures(payments), contract.empty(contract.MESSAGES)
        ),
    )
    now = payments["failed_at"].max().to_pydatetime()
    narrow = ExperimentDesign(name="widen", segments=[Segment(name="all", treatment_share=0.1)])
    first = experiments.assign(engine, narrow, payments.iloc[:200], now)
    wide = ExperimentDesign(name="widen", segments=[Segment(name="all", treatment_share=0.9)])
    later = experiments.assign(engine, wide, payments, now)
    assert {p: later[p] for p in first} == first  # widening the rollout moved nobody
    keys = [tuple(k) for k in payments[["account_id", "payment_id"]].iloc[200:].values]
    share_new = pd.Series([later[k] for k in keys]).eq("treatment")
    assert share_new.mean() > 0.7  # new payments follow the wider rollout
    stored = experiments.load_assignments(engine, "widen")
    assert len(stored) == 400 and set(stored["segment"]) == {"all"}
    assert experiments.experiments(engine) == {"widen": 400}


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
    with _client(
        tmp_path, trained, experiment_control="stripe_like", experiment_name="api-ab"
    ) as client:
        _, key = create_key(client.app.state.engine, "scheduler")
        client.headers["Authorization"] = f"Bearer {key}"
        body = {
            "decisions": [
                {"payment": inline_payment(i), "now": "2026-05-20T14:00:00Z"} for i in range(40)
            ]
        }
        decisions = client.post("/v1/decisions/batch", json=body).json()["decisions"]
        again = client.post("/v1/decisions/batch", json=body).json()["decisions"]
        stored = experiments.load_assignments(client.app.state.engine, "api-ab")
    arm = dict(zip(stored["payment_id"], stored["arm"], strict=True))
    control = [arm[d["payment_id"]] == "control" for d in decisions]
    assert len(stored) == 40 and 0 < sum(control) < 40
    assert set(stored["unit_id"]) == {inline_payment(i)["customer_id"] for i in range(40)}
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


def test_a_rollout_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(
        "RECLAIM_EXPERIMENT_ROLLOUT",
        '[{"name": "small", "max_failed_payments": 100, "treatment_share": 0.1},'
        ' {"name": "large", "treatment_share": 0.5}]',
    )
    monkeypatch.setenv("RECLAIM_EXPERIMENT_UNIT", "account")
    design = Settings().experiment_design()
    assert [s.name for s in design.segments] == ["small", "large"]
    assert design.unit == "account"
