"""Estimators for A/B tests of recovery: the difference between arms with a 95% interval.

One function, :func:`difference`, is what every table of the experiment report uses, so the
coverage test (``tests/training/test_ab_coverage.py``) checks the intervals people read:

- every randomization unit holds one row → a two-proportion z-test for 0/1 outcomes
  (unpooled standard error for the interval, pooled for the p-value) and Welch's t for
  continuous ones (revenue per failed payment);
- units hold several rows (a customer with several failed payments, or assignment by
  connected account) → the difference of means with a cluster-robust (CR2) standard error
  and t with G − 1 degrees of freedom (G clusters; the smaller arm's clusters − 1 when each
  cluster is wholly in one arm).

:func:`cuped` adjusts an outcome with a pre-period covariate (Deng et al., 2013): the same
difference, a narrower interval when the covariate predicts the outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from reclaim.intervals import p_value

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """Treatment minus control, with its 95% interval and two-sided p-value."""

    control: float
    treatment: float
    diff: float
    se: float
    lo: float
    hi: float
    p_value: float
    n_control: int
    n_treatment: int
    method: str

    @property
    def significant(self) -> bool:
        return bool(self.p_value < 1 - LEVEL)

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def verdict(d: Difference, outcome: str, more: str, less: str, show: Callable[[float], str]) -> str:
    """An effect's verdict in plain words: ``more`` where its 95% interval lies above zero,
    ``less`` where below, else that this size shows no difference in ``outcome``, with what
    it could detect (80% power, two-sided 5%) and about how many payments the observed
    difference would need, both assuming the arms' spread stays what it is. ``show`` writes
    an amount of the outcome with its sign (``+$2.48``, ``+1.7 pts``)."""
    p = p_value(d.p_value)
    p = f"p {p}" if p.startswith("<") else f"p = {p}"
    if d.lo > 0:
        return f"Verdict: {more} (the 95% interval lies above zero; {p})."
    if d.hi < 0:
        return f"Verdict: {less} (the 95% interval lies below zero; {p})."
    detectable = (1.96 + 0.84) * d.se
    n = d.n_control + d.n_treatment
    need = int(math.ceil(n * (2.8 * d.se / abs(d.diff)) ** 2)) if d.diff else None
    if need is not None and need <= 100 * n:
        observed = f" the observed {show(d.diff)} would need about {need:,} payments"
    else:  # a difference this small is not one any test of practical size would show
        observed = f" the observed {show(d.diff)} is too small to detect at any practical size"
    return (
        f"Verdict: no significant difference in {outcome} at this size "
        f"({p}). {n:,} payments detect a difference of "
        f"{show(detectable).lstrip('+')} (80% power);{observed}."
    )


def _empty(method: str, n0: int, n1: int) -> Difference:
    nan = float("nan")
    return Difference(nan, nan, nan, nan, nan, nan, nan, n0, n1, method)


def difference(
    y: np.ndarray, treated: np.ndarray, clusters: np.ndarray | None = None
) -> Difference:
    """Mean of ``y`` in treatment minus control.

    Parameters
    ----------
    y
        Outcome per row (0/1 for a recovery, an amount for revenue).
    treated
        Boolean per row.
    clusters
        The randomization unit (or a coarser grouping) per row; None when rows are units.
    """
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated, dtype=bool)
    n1, n0 = int(t.sum()), int((~t).sum())
    if clusters is not None:
        codes = pd.factorize(np.asarray(clusters))[0]
        if len(np.unique(codes)) < len(codes):
            return _clustered(y, t, codes)
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    if n0 < 2 or n1 < 2:
        return _empty("two_proportion" if binary else "welch", n0, n1)
    m1, m0 = y[t].mean(), y[~t].mean()
    if binary:
        se = float(np.sqrt(m1 * (1 - m1) / n1 + m0 * (1 - m0) / n0))
        pooled = y.mean()
        se0 = float(np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0)))
        z = stats.norm.ppf(0.5 + LEVEL / 2)
        p = 2 * stats.norm.sf(abs(m1 - m0) / se0) if se0 > 0 else 1.0
        return Difference(m0, m1, m1 - m0, se, m1 - m0 - z * se, m1 - m0 + z * se, float(p),
                          n0, n1, "two_proportion")  # fmt: skip
    v1, v0 = y[t].var(ddof=1) / n1, y[~t].var(ddof=1) / n0
    se = float(np.sqrt(v1 + v0))
    df = (v1 + v0) ** 2 / (v1**2 / (n1 - 1) + v0**2 / (n0 - 1)) if se > 0 else 1.0
    q = stats.t.ppf(0.5 + LEVEL / 2, df)
    p = 2 * stats.t.sf(abs(m1 - m0) / se, df) if se > 0 else 1.0
    return Difference(m0, m1, m1 - m0, se, m1 - m0 - q * se, m1 - m0 + q * se, float(p),
                      n0, n1, "welch")  # fmt: skip


def _clustered(y: np.ndarray, t: np.ndarray, codes: np.ndarray) -> Difference:
    """OLS of y on [1, t] with CR2 cluster-robust errors (Bell & McCaffrey, 2002); the slope
    is the difference. CR2 scales each cluster's residuals by (I − H_gg)^(-1/2), which keeps
    the interval honest when a few clusters are large; with X_g of rank ≤ 2 that inverse
    square root is the identity plus a rank-2 term, computed per cluster in O(n_g)."""
    n1, n0 = int(t.sum()), int((~t).sum())
    g = int(codes.max()) + 1
    if n0 < 2 or n1 < 2 or g < 3:
        return _empty("clustered", n0, n1)
    m1, m0 = y[t].mean(), y[~t].mean()
    resid = y - np.where(t, m1, m0)
    x = np.column_stack([np.ones_like(y), t.astype(float)])
    bread = np.linalg.inv(x.T @ x)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    scores = np.zeros((g, 2))
    for k, rows in enumerate(np.split(order, bounds)):
        xg, eg = x[rows], resid[rows]
        q, r = np.linalg.qr(xg)
        lam, vec = np.linalg.eigh(r @ bread @ r.T)
        u = q @ vec
        shrink = 1 / np.sqrt(np.clip(1 - lam, 1e-9, None)) - 1
        adjusted = eg + u @ (shrink * (u.T @ eg))
        scores[k] = xg.T @ adjusted
    cov = bread @ (scores.T @ scores) @ bread
    se = float(np.sqrt(cov[1, 1]))
    # clusters wholly in one arm leave fewer for each arm's mean: the smaller arm's count sets df
    treated_share = np.bincount(codes, weights=t, minlength=g) / np.bincount(codes, minlength=g)
    pure = ((treated_share == 0) | (treated_share == 1)).all()
    df = (
        (min(int((treated_share == 1).sum()), int((treated_share == 0).sum())) - 1)
        if pure
        else g - 1
    )
    df = max(df, 1)
    q95 = stats.t.ppf(0.5 + LEVEL / 2, df)
    p = 2 * stats.t.sf(abs(m1 - m0) / se, df) if se > 0 else 1.0
    return Difference(m0, m1, m1 - m0, se, m1 - m0 - q95 * se, m1 - m0 + q95 * se, float(p),
                      n0, n1, "clustered_cr2")  # fmt: skip


def cuped(y: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """``y − θ (x − x̄)`` with θ = cov(y, x) / var(x), pooled over both arms.

    The covariate must not depend on the arm (a pre-period figure), so the adjustment keeps
    the difference's expectation and removes the part of its variance the covariate explains.
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(covariate, dtype=float)
    var = x.var()
    if var == 0:
        return y.copy()
    theta = np.cov(y, x, ddof=0)[0, 1] / var
    return y - theta * (x - x.mean())
