"""Train/serve skew: a reference of every decision feature, and how far recent rows are from it.

Training keeps, per feature of :data:`schema.DECISION_FEATURES`, the share of rows where it is
missing and its distribution: each category's share, or a number's share in each of ten bins
cut at the training rows' deciles. The scoring API compares the rows it decided on recently
with it: the missing share, and the population stability index (PSI) of the distribution
among the rows where the feature is present,

    PSI = sum over bins of (recent − reference) × ln(recent / reference),

with every share floored at :data:`FLOOR` so an empty bin counts but does not explode.

Features that describe the payment are compared over first decisions only (one row a
payment): how many decisions a payment gets is the policy's doing, so over all decisions the
mix of declines would move with the policy. The others are compared over all decisions.
Late in a month the recent decisions are mostly later ones, so the API keeps a window of
recent first decisions of its own; and a missing share is only called a rise when the rows
behind it tell it from chance (below).

A feature that describes the payment and its decline (:data:`DESCRIBES_THE_PAYMENT`)
**drifts** when its missing share rose by more than :data:`MISSING_ALERT` (absolute) over the
reference's — over at least :data:`MIN_MISSING_ROWS` rows and by more than
:data:`MISSING_Z` binomial standard errors of the reference's share (three missing codes
among five first decisions are 60%, not a shift; a code missing from all of 80 where
training never lacked it is one) — or its PSI exceeds :data:`PSI_ALERT` (the usual rule of
thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25 a shift worth acting on). The other
features are compared and shown but raise no alert: when to decide, how many retries and
messages came before (and so whether there was a last message), and the account's
aggregates as of the decision move whenever the served policy differs from the one that
logged the history, or time passes.
docs/operations.md says what to do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reclaim.features import schema

PSI_ALERT = 0.25
#: A distribution is compared once this many first decisions have the feature present.
MIN_PRESENT = 200
#: Features whose distribution is the payments' and declines' own, not the policy's or time's.
DESCRIBES_THE_PAYMENT = frozenset(
    [*schema.CATEGORICAL, "visa_category", "on_behalf_of", "log_amount", "timezone_known"]
)
MISSING_ALERT = 0.20
#: A missing share over fewer rows than this raises no alert.
MIN_MISSING_ROWS = 30
#: A rise in the missing share alerts only beyond this many standard errors of the reference's
#: share (compared every 100 decisions, all month: a rare false alarm needs a high bar).
MISSING_Z = 4.0
#: The reference's missing share is taken as at least this (and at most 1 − it) in the test.
MISSING_FLOOR = 0.01
FLOOR = 1e-4
BINS = 10


@dataclass(frozen=True)
class Drift:
    """One feature's recent state against its reference."""

    feature: str
    missing_reference: float
    missing_recent: float
    psi: float
    rows: int = MIN_PRESENT  # the recent rows its missing share is over

    @property
    def alert(self) -> str | None:
        """Why this feature drifts (``missing`` or ``distribution``), or None."""
        if self.feature not in DESCRIBES_THE_PAYMENT:
            return None  # the policy's own doing: shown, not alerted on
        if self.missing_rose:
            return "missing"
        if self.psi > PSI_ALERT:
            return "distribution"
        return None

    @property
    def missing_rose(self) -> bool:
        """Whether the missing share rose by more than :data:`MISSING_ALERT`, over enough
        rows to tell it from chance (see the module)."""
        if self.rows < MIN_MISSING_ROWS:
            return False
        rise = self.missing_recent - self.missing_reference
        p = min(max(self.missing_reference, MISSING_FLOOR), 1.0 - MISSING_FLOOR)
        return rise > MISSING_ALERT and rise > MISSING_Z * math.sqrt(p * (1 - p) / self.rows)


@dataclass
class FeatureReference:
    """Per feature: ``missing`` share, and ``categories`` (name → share) or ``edges`` (the
    inner bin edges) with ``shares`` (per bin, ``len(edges) + 1`` of them)."""

    rows: int
    missing: dict[str, float] = field(default_factory=dict)
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    edges: dict[str, list[float]] = field(default_factory=dict)
    shares: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, features: pd.DataFrame) -> FeatureReference:
        """The reference of decision feature rows (``features.decisions.decision_features``'s
        frame: categoricals and floats)."""
        ref = cls(rows=len(features))
        first = features["decision_number"].to_numpy() == 0
        for name in schema.DECISION_FEATURES:
            column = features[name][first] if name in DESCRIBES_THE_PAYMENT else features[name]
            present = column.notna()
            ref.missing[name] = float(1.0 - present.mean()) if len(column) else 0.0
            values = column[present]
            if name in schema.CATEGORICAL:
                counts = values.astype(object).astype(str).value_counts(normalize=True)
                ref.categories[name] = {str(k): float(v) for k, v in counts.items()}
            else:
                x = values.to_numpy(dtype=float)
                edges = (
                    np.unique(np.quantile(x, np.linspace(0, 1, BINS + 1)[1:-1])) if len(x) else []
                )
                ref.edges[name] = [float(e) for e in edges]
                ref.shares[name] = _bin_shares(x, ref.edges[name])
        return ref

    def compare(
        self,
        rows: Iterable[Mapping[str, Any]],
        firsts: Iterable[Mapping[str, Any]] | None = None,
    ) -> list[Drift]:
        """Each feature's drift over ``rows``: feature rows as the API shows them (category
        names, floats, None or NaN for missing). The features that describe the payment are
        compared over ``firsts`` (recent first decisions; by default those among ``rows``)."""
        rows = list(rows)
        if firsts is None:
            firsts = [r for r in rows if r.get("decision_number") == 0]
        firsts = list(firsts)
        out = []
        for name in schema.DECISION_FEATURES:
            pool = firsts if name in DESCRIBES_THE_PAYMENT else rows
            present = [r.get(name) for r in pool if not _missing(r.get(name))]
            missing = 1.0 - len(present) / len(pool) if pool else 0.0
            reference_missing = self.missing.get(name, 0.0)
            if len(present) < MIN_PRESENT:  # too few to tell a shift from noise
                out.append(Drift(name, reference_missing, missing, 0.0, len(pool)))
                continue
            if name in self.categories:
                ref = self.categories[name]
                counts = pd.Series([str(v) for v in present], dtype=object).value_counts(
                    normalize=True
                )
                keys = set(ref) | set(counts.index)
                psi = _psi(
                    [ref.get(k, 0.0) for k in keys], [float(counts.get(k, 0.0)) for k in keys]
                )
            else:
                recent = _bin_shares(np.asarray(present, dtype=float), self.edges.get(name, []))
                psi = _psi(self.shares.get(name, [1.0]), recent)
            out.append(Drift(name, reference_missing, missing, psi, len(pool)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "missing": self.missing,
            "categories": self.categories,
            "edges": self.edges,
            "shares": self.shares,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureReference:
        return cls(
            int(data["rows"]),
            dict(data["missing"]),
            {k: dict(v) for k, v in data["categories"].items()},
            {k: list(v) for k, v in data["edges"].items()},
            {k: list(v) for k, v in data["shares"].items()},
        )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _bin_shares(x: np.ndarray, edges: list[float]) -> list[float]:
    if len(x) == 0:
        return [0.0] * (len(edges) + 1)
    counts = np.bincount(
        np.searchsorted(np.asarray(edges), x, side="right"), minlength=len(edges) + 1
    )
    return [float(c) for c in counts / len(x)]


def _psi(reference: list[float], recent: list[float]) -> float:
    a = np.maximum(np.asarray(reference, dtype=float), FLOOR)
    b = np.maximum(np.asarray(recent, dtype=float), FLOOR)
    return float(np.sum((b - a) * np.log(b / a)))
