"""A/B assignment: which arm a customer is in, the same everywhere it is asked.

A customer's arm is a hash of their id (salted per experiment), so the API, the scheduler and
the analysis agree without storing an assignment, a customer stays in one arm across all their
payments, and no model output can move anyone between arms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def in_control(customer_ids: Iterable[str], share: float, salt: str = "reclaim-ab") -> np.ndarray:
    """True for customers in the control arm (about ``share`` of them)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"control share must be within [0, 1], got {share}")
    out = []
    for cid in customer_ids:
        digest = hashlib.sha256(f"{salt}:{cid}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "big") / 2**64 < share)
    return np.array(out, dtype=bool)
