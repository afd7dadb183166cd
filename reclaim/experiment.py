"""A/B assignment: which arm a payment is in, decided once and then stored.

A unit's arm (the customer's, or the connected account's) is a hash of its id salted with the
experiment's name, compared with the rollout share of the account's size segment — for
example 10% of small accounts' customers get the treatment, 50% of large ones'. The API
stores each payment's arm the first time it decides for it
(:mod:`reclaim.serving.store.experiments`), so the arm never changes when an account grows
into another segment or the rollout is widened, and no model output can move anyone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

ARMS = ("control", "treatment")


def _uniform(ids: Iterable[str], salt: str) -> np.ndarray:
    """A number in [0, 1) per id, the same for the same id and salt everywhere."""
    out = []
    for value in ids:
        digest = hashlib.sha256(f"{salt}:{value}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "big") / 2**64)
    return np.array(out, dtype=float)


class Segment(BaseModel):
    """Accounts up to ``max_failed_payments`` failed payments in the last 90 days (no bound
    when None), and the share of their units that get the treatment."""

    name: str = Field(min_length=1, max_length=40)
    treatment_share: float = Field(ge=0.0, le=1.0)
    max_failed_payments: int | None = Field(default=None, ge=0)


class ExperimentDesign(BaseModel):
    """An experiment: its name (also the hash's salt), the unit of randomization and the
    rollout per account segment, smallest bound first; the last segment must be unbounded."""

    name: str = Field(min_length=1, max_length=100)
    unit: Literal["customer", "account"] = "customer"
    segments: list[Segment] = Field(
        default_factory=lambda: [Segment(name="all", treatment_share=0.5)], min_length=1
    )

    @model_validator(mode="after")
    def _bounds_rise_to_unbounded(self) -> ExperimentDesign:
        bounds = [s.max_failed_payments for s in self.segments]
        if bounds[-1] is not None:
            raise ValueError("the last segment must have no max_failed_payments")
        finite = [b for b in bounds[:-1] if b is not None]
        if len(finite) < len(bounds) - 1 or finite != sorted(finite):
            raise ValueError("segments must be ordered by max_failed_payments, ascending")
        return self

    def segment_of(self, account_sizes: np.ndarray) -> np.ndarray:
        """The segment name for each account size (its failed payments in 90 days)."""
        sizes = np.asarray(account_sizes)
        out = np.full(len(sizes), self.segments[-1].name, dtype=object)
        for segment in reversed(self.segments[:-1]):
            out[sizes <= segment.max_failed_payments] = segment.name
        return out

    def assign(
        self, unit_ids: Iterable[str], account_sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(segment, arm)`` per unit: treatment where the unit's hash falls under its
        segment's rollout share."""
        segments = self.segment_of(account_sizes)
        share = {s.name: s.treatment_share for s in self.segments}
        shares = np.array([share[s] for s in segments], dtype=float)
        treated = _uniform(unit_ids, self.name) < shares
        return segments, np.where(treated, "treatment", "control").astype(object)
