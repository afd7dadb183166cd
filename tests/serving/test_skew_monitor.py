"""The API's skew monitor late in a month: first decisions are few among the recent ones, so
it keeps its own window of them — no alert on a handful, and a field lost from first
decisions is still caught when later decisions far outnumber them."""

from __future__ import annotations

from reclaim.features.decisions import build_decision_rows
from reclaim.features.drift import FeatureReference
from reclaim.serving.skew import SkewMonitor

from ..features.test_drift import _shown


def _month(history) -> tuple[FeatureReference, list[dict], list[dict]]:
    _, features = build_decision_rows(history.tables)
    half = len(features) // 2
    later = _shown(features.iloc[half:])
    firsts = [r for r in later if r["decision_number"] == 0]
    others = [r for r in later if r["decision_number"] > 0]
    return FeatureReference.from_frame(features.iloc[:half]), firsts, others


def test_a_handful_of_first_decisions_late_in_a_month_raises_no_alert(history) -> None:
    reference, firsts, others = _month(history)
    monitor = SkewMonitor(reference, window=2000, every=100)
    monitor.observe(firsts[:400])  # the month's start, as in training
    # its end: later decisions, among them a few new payments that all lack an advice code
    lost = [{**r, "advice_code": None} for r in firsts[400:403]]
    monitor.observe(others[:1000] + lost + others[1000:2000])
    assert "advice_code" not in monitor.alerts(), monitor.alerts()
    advice = next(d for d in monitor.state() if d.feature == "advice_code")
    assert advice.rows == 403  # over the window of first decisions, not the 3 among the rest


def test_a_field_lost_from_first_decisions_is_caught_among_many_later_ones(history) -> None:
    reference, firsts, others = _month(history)
    monitor = SkewMonitor(reference, window=2000, every=100)
    monitor.observe(firsts[:400])
    assert not monitor.alerts()
    # from here Stripe's answers lack network codes, one new payment every 20 decisions:
    # fewer than MIN_PRESENT of them among the last 2,000 decisions
    lost = [{**r, "network_decline_code": None} for r in firsts[400:650]]
    later = others * 2
    assert len(later) >= 19 * len(lost)
    for i, row in enumerate(lost):
        monitor.observe([*later[19 * i : 19 * i + 19], row])
    assert monitor.alerts().get("network_decline_code") == "missing", monitor.alerts()
