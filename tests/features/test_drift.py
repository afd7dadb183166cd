"""The skew reference: the same rows are not drifting; rows that lost a field are."""

from __future__ import annotations

import math

import numpy as np

from reclaim.features.decisions import build_decision_rows
from reclaim.features.drift import MISSING_ALERT, FeatureReference


def _shown(features) -> list[dict]:
    rows = features.astype(object).where(features.notna(), None).to_dict(orient="records")
    return [
        {k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()} for r in rows
    ]


def test_rows_like_the_reference_do_not_drift_and_rows_without_a_field_do(history):
    _, features = build_decision_rows(history.tables)
    half = len(features) // 2
    reference = FeatureReference.from_frame(features.iloc[:half])
    again = FeatureReference.from_dict(reference.to_dict())  # kept as JSON in MLflow
    later = _shown(features.iloc[half:])
    drift = {d.feature: d for d in again.compare(later)}
    assert not {f: d.alert for f, d in drift.items() if d.alert}
    assert drift["decline_code"].psi < 0.05

    stripped = [{**r, "network_decline_code": None, "network_advice_code": None} for r in later]
    drift = {d.feature: d for d in again.compare(stripped)}
    assert drift["network_decline_code"].alert == "missing"
    assert drift["network_decline_code"].missing_recent == 1.0
    assert drift["decline_code"].alert is None
    assert math.isclose(drift["network_decline_code"].missing_reference, 0.0, abs_tol=MISSING_ALERT)
