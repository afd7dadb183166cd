"""Train/serve skew caught in production: the served decisions' features against training's.

:class:`SkewMonitor` keeps the feature rows of a process's most recent decisions (a window of
``window`` rows) and, apart, of its most recent first decisions (which the features that
describe a payment are compared over: late in a month they are few among the recent
decisions), compares them every ``every`` decisions with the reference the model was
trained with (:class:`reclaim.features.drift.FeatureReference`, carried by the policy), sets
the ``reclaim_feature_*`` gauges, and logs an ``ALERT`` when a feature starts drifting (and a
line when it stops). The dashboard's operations page shows :meth:`SkewMonitor.state`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from reclaim.features.drift import Drift, FeatureReference
from reclaim.serving.metrics import Metrics

log = logging.getLogger(__name__)


class SkewMonitor:
    """Recent decisions' features against a reference; thread-safe. It keeps the last
    ``window`` decisions and, apart, the last ``window`` first decisions."""

    def __init__(
        self,
        reference: FeatureReference | None,
        metrics: Metrics | None = None,
        window: int = 2000,
        every: int = 100,
        min_rows: int = 200,
    ):
        self.reference, self.metrics = reference, metrics
        self.every, self.min_rows = every, min_rows
        self._rows: deque[Mapping[str, Any]] = deque(maxlen=window)
        # first decisions apart: late in a month most recent decisions are later ones, and
        # the features that describe a payment are compared over first decisions only
        self._firsts: deque[Mapping[str, Any]] = deque(maxlen=window)
        self._since = 0
        self._drift: list[Drift] = []
        self._alerting: set[str] = set()
        self._lock = threading.Lock()

    def use(self, reference: FeatureReference | None) -> None:
        """Compare with another reference from now on (a new model version): the window
        starts afresh."""
        with self._lock:
            if reference is self.reference:
                return
            self.reference = reference
            self._rows.clear()
            self._firsts.clear()
            self._since, self._drift = 0, []

    def observe(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add decided feature rows; recompare when ``every`` new rows have come."""
        with self._lock:
            for row in rows:
                self._rows.append(row)
                if row.get("decision_number") == 0:
                    self._firsts.append(row)
                self._since += 1
            due = (
                self.reference is not None
                and len(self._rows) >= self.min_rows
                and self._since >= self.every
            )
            if not due:
                return
            self._since = 0
            recent, firsts = list(self._rows), list(self._firsts)
            reference = self.reference
        assert reference is not None
        drift = reference.compare(recent, firsts)
        with self._lock:
            self._drift = drift
        self._report(drift)

    def state(self) -> list[Drift]:
        """The last comparison, one entry per feature (empty before the first)."""
        with self._lock:
            return list(self._drift)

    def alerts(self) -> dict[str, str]:
        """Drifting features and why."""
        return {d.feature: d.alert for d in self.state() if d.alert}

    def _report(self, drift: list[Drift]) -> None:
        now = {d.feature for d in drift if d.alert}
        for d in drift:
            if self.metrics is not None:
                self.metrics.feature_missing.labels(d.feature, "recent").set(d.missing_recent)
                self.metrics.feature_missing.labels(d.feature, "training").set(d.missing_reference)
                self.metrics.feature_psi.labels(d.feature).set(d.psi)
                self.metrics.feature_drift.labels(d.feature).set(1.0 if d.alert else 0.0)
            if d.feature in now and d.feature not in self._alerting:
                log.error(
                    "ALERT feature skew: %s (%s): missing %.1f%% of recent decisions vs %.1f%% "
                    "in training, PSI %.3f",
                    d.feature, d.alert, 100 * d.missing_recent, 100 * d.missing_reference, d.psi,
                )  # fmt: skip
            elif d.feature in self._alerting and d.feature not in now:
                log.warning("feature skew over: %s", d.feature)
        self._alerting = now
