"""The skew reference: the same rows are not drifting; rows that lost a field are."""

from __future__ import annotations

import math

import numpy as np

from reclaim.features.decisions import build_decision_rows
from reclaim.features.drift import MIN_PRESENT, MISSING_ALERT, FeatureReference


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


def test_a_share_over_too_few_first_decisions_raises_no_alert(history):
    """Late in a month the recent decisions are mostly later ones: three missing codes among
    five first decisions are 60%, not a shift; 20 of 40 are not one either (within four
    standard errors of training's 27%). The same share over enough rows is one."""
    _, features = build_decision_rows(history.tables)
    half = len(features) // 2
    reference = FeatureReference.from_frame(features.iloc[:half])
    later = _shown(features.iloc[half:])
    firsts = [r for r in later if r["decision_number"] == 0]
    others = [r for r in later if r["decision_number"] > 0][:1995]
    lost = [{**r, "advice_code": None} for r in firsts[:3]] + firsts[3:5]
    few = {d.feature: d for d in reference.compare(others + lost)}
    assert few["advice_code"].rows == 5 and few["advice_code"].missing_recent > 0.5
    assert few["advice_code"].alert is None
    present = [r for r in firsts if r["advice_code"] is not None]
    lost = [{**r, "advice_code": None} for r in present[:20]] + present[20:40]
    forty = {d.feature: d for d in reference.compare(others + lost)}["advice_code"]
    assert forty.rows == 40 and forty.missing_recent == 0.5
    assert forty.missing_recent - forty.missing_reference > MISSING_ALERT
    assert forty.alert is None
    many = [{**r, "advice_code": None} for r in firsts[:MIN_PRESENT]]
    assert {d.feature: d for d in reference.compare(others + many)}["advice_code"].alert == (
        "missing"
    )
