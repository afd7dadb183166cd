"""The local-time effect on a retry's success that the retry model leaves out, by decline
cause.

Approval rates differ by the customer's local hour and weekday (Recurly publishes a decline
rate of 25–28% from 1 to 4 am against about 18% in business hours; docs/sources.md). The
retry-time model can learn this, but a tree ensemble stopped early splits on the large
effects first and learns a few-percent effect only in part. :class:`TimingEffect` measures
what it left: a logistic regression of the retries' outcomes on three local-time bands —
night (1 to 5 am), outside business hours, weekend; weekday business hours (9 am to 6 pm)
are the reference — with the model's own *out-of-fold* log-odds as a fixed offset, so it
estimates only the timing the model has not already captured.

It is measured apart for each :data:`GROUPS` of declines. A funds decline clears when money
arrives, so its retries' weekday pattern follows the pay cycle (paydays fall before
weekends: a weekend retry after a funds decline often follows a payday), while an issuer's
decline clears as its risk systems relax, which the published hourly rates describe. One
effect pooled over both gave issuer declines the funds declines' weekend lift: the policy
moved its issuer-decline retries onto weekends, where they succeed less. A group with too
few retries to measure gets no shift. :meth:`TimingEffect.apply` shifts the model's chances
by the effect of each retry's group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reclaim.features import schema

NIGHT_HOURS = (1, 5)
BUSINESS_HOURS = (9, 18)
BANDS = ("night", "outside_business_hours", "weekend")
#: Declines that clear when the customer's money arrives.
FUNDS_CODES = ("insufficient_funds",)
#: The groups measured apart: funds declines (:data:`FUNDS_CODES`) and all others.
GROUPS = ("funds", "other")
#: The group of an effect measured before the split (pooled over every decline).
POOLED = "all"
#: A group with fewer retries than this is not measured (its retries are not shifted).
MIN_GROUP_ROWS = 500
#: The retry rows' columns an effect reads.
COLUMNS = ("retry_local_hour", "retry_is_weekend", "decline_code")


def bands(hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """(n, 3) indicators of :data:`BANDS` for local retry hours (0–23, fractional allowed)
    and weekend flags. An unknown hour or day (NaN) is in no band: no shift is guessed."""
    hour = np.asarray(hour, dtype=float)
    night = (hour >= NIGHT_HOURS[0]) & (hour < NIGHT_HOURS[1])
    business = (hour >= BUSINESS_HOURS[0]) & (hour < BUSINESS_HOURS[1])
    outside = np.isfinite(hour) & ~night & ~business
    return np.column_stack([night, outside, np.asarray(weekend, dtype=float) > 0])


def groups(decline_code: Any) -> np.ndarray:
    """Each retry's group (:data:`GROUPS`) from the decline it follows (names; an unknown
    code is not a funds decline)."""
    code = pd.Series(np.ravel(np.asarray(decline_code, dtype=object)), dtype=object)
    return np.where(code.isin(FUNDS_CODES).to_numpy(), GROUPS[0], GROUPS[1])


def inputs(x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The local hour, weekend flag and group (:func:`groups`) of retry rows ``x`` (the
    retry model's frame, :data:`COLUMNS` among its columns; rows without ``decline_code``
    are in no group, so only a :data:`POOLED` effect shifts them)."""
    group = (
        groups(x["decline_code"].astype(object).to_numpy())
        if "decline_code" in x
        else np.full(len(x), None, dtype=object)
    )
    return (
        x["retry_local_hour"].to_numpy(dtype=float),
        x["retry_is_weekend"].to_numpy(dtype=float),
        group,
    )


def inputs_matrix(
    matrix: np.ndarray, names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`inputs` of rows in LightGBM's float matrix (columns ``names``, categoricals as
    their codes in ``features.schema``'s categories)."""
    if "decline_code" in names:
        code = matrix[:, names.index("decline_code")]
        funds = np.isin(code, [schema.DECLINE_CODE.categories.get_loc(c) for c in FUNDS_CODES])
        group = np.where(funds, GROUPS[0], GROUPS[1]).astype(object)
    else:
        group = np.full(len(matrix), None, dtype=object)
    return (
        matrix[:, names.index("retry_local_hour")],
        matrix[:, names.index("retry_is_weekend")],
        group,
    )


@dataclass(frozen=True)
class BandEffect:
    """Log-odds shifts by :data:`BANDS` with their standard errors, from ``rows`` retries."""

    coef: tuple[float, float, float]
    se: tuple[float, float, float]
    rows: int


@dataclass(frozen=True)
class TimingEffect:
    """The log-odds shifts of a retry's success by local-time band, beyond what the
    retry-time model predicts: one :class:`BandEffect` per measured group (:data:`GROUPS`;
    :data:`POOLED` for one measured over every decline, as policies trained before the split
    hold)."""

    effects: dict[str, BandEffect] = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:
        if "effects" not in state:  # pickled before the split: one effect for every decline
            state = {"effects": {POOLED: BandEffect(state["coef"], state["se"], state["rows"])}}
        object.__setattr__(self, "effects", state["effects"])

    def shift(self, hour: np.ndarray, weekend: np.ndarray, group: np.ndarray) -> np.ndarray:
        """The log-odds shift of each retry (``group``: :func:`groups`)."""
        hour = np.ravel(np.asarray(hour, dtype=float))
        indicators = bands(hour, np.ravel(weekend)).astype(float)
        group = np.ravel(np.asarray(group, dtype=object))
        out = np.zeros(len(hour))
        for name, effect in self.effects.items():
            rows = np.ones(len(hour), dtype=bool) if name == POOLED else group == name
            out[rows] = indicators[rows] @ np.asarray(effect.coef)
        return out

    def apply(
        self, p: np.ndarray, hour: np.ndarray, weekend: np.ndarray, group: np.ndarray
    ) -> np.ndarray:
        """Chances ``p`` (any shape; ``hour``, ``weekend`` and ``group`` the same shape)
        shifted by the effect in log-odds; 0 and 1 stay as they are."""
        p = np.asarray(p, dtype=float)
        shift = self.shift(hour, weekend, group).reshape(p.shape)
        odds = p / np.clip(1.0 - p, 1e-12, None) * np.exp(shift)
        return np.where((p <= 0) | (p >= 1), p, odds / (1.0 + odds))

    def labels(self, hour: np.ndarray, weekend: np.ndarray) -> list[str]:
        """Each retry's bands in words, as a decision's reasons show them: ``night``,
        ``outside business hours``, ``weekend`` (joined by ``+``), ``business hours``, or
        ``unknown`` where the local hour is not known."""
        names = [b.replace("_", " ") for b in BANDS]
        known = np.isfinite(np.asarray(hour, dtype=float))
        return [
            ("+".join(n for n, on in zip(names, row, strict=True) if on) or "business hours")
            if ok
            else "unknown"
            for row, ok in zip(bands(hour, weekend), known, strict=True)
        ]

    def metrics(self) -> dict[str, float]:
        """Each measured log-odds shift by name, ``timing_<group>_<band>``."""
        return {
            f"timing_{name}_{band}": c
            for name, effect in self.effects.items()
            for band, c in zip(BANDS, effect.coef, strict=True)
        }

    def describe(self) -> str:
        """One line for a run's record: each group's odds ratio by band with its 95%
        interval."""
        said = []
        for name in [*GROUPS, POOLED]:
            effect = self.effects.get(name)
            if effect is None:
                if name != POOLED:
                    said.append(f"{name} declines not measured (too few retries)")
                continue
            parts = [
                f"{band.replace('_', ' ')} ×{np.exp(c):.3f} "
                f"({np.exp(c - 1.96 * s):.3f} to {np.exp(c + 1.96 * s):.3f})"
                for band, c, s in zip(BANDS, effect.coef, effect.se, strict=True)
            ]
            said.append(f"{name} declines ({effect.rows:,} retries): " + ", ".join(parts))
        return (
            "retry timing beyond the retry model, odds against weekday business hours "
            "(out-of-fold): " + "; ".join(said)
        )


def fit_bands(
    y: np.ndarray, out_of_fold: np.ndarray, hour: np.ndarray, weekend: np.ndarray
) -> BandEffect:
    """:class:`BandEffect` from retries' outcomes ``y`` (0/1), the retry model's
    out-of-fold chances of them, and their local hour and weekend flag: a logistic
    regression with an intercept and the bands, the model's log-odds as offset (Newton's
    method; the intercept absorbs any overall miscalibration and is not kept)."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(out_of_fold, dtype=float), 1e-6, 1 - 1e-6)
    offset = np.log(p / (1 - p))
    x = np.column_stack([np.ones(len(y)), bands(hour, weekend).astype(float)])
    beta = np.zeros(x.shape[1])
    for _ in range(50):
        q = 1.0 / (1.0 + np.exp(-(offset + x @ beta)))
        hessian = (x * (q * (1 - q))[:, None]).T @ x + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, x.T @ (y - q))
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    se = np.sqrt(np.diag(np.linalg.inv(hessian)))
    return BandEffect(
        coef=tuple(float(b) for b in beta[1:]),  # type: ignore[arg-type]
        se=tuple(float(s) for s in se[1:]),  # type: ignore[arg-type]
        rows=len(y),
    )


def fit_timing_effect(
    y: np.ndarray,
    out_of_fold: np.ndarray,
    hour: np.ndarray,
    weekend: np.ndarray,
    group: np.ndarray,
    min_rows: int = MIN_GROUP_ROWS,
) -> TimingEffect:
    """:class:`TimingEffect` with :func:`fit_bands` on each group's retries (``group``:
    :func:`groups`); a group with fewer than ``min_rows`` retries, or one outcome only, is
    left out."""
    y = np.asarray(y, dtype=float)
    group = np.asarray(group, dtype=object)
    hour, weekend = np.asarray(hour, dtype=float), np.asarray(weekend, dtype=float)
    effects = {}
    for name in GROUPS:
        rows = group == name
        if rows.sum() >= min_rows and len(np.unique(y[rows])) == 2:
            effects[name] = fit_bands(
                y[rows], np.asarray(out_of_fold)[rows], hour[rows], weekend[rows]
            )
    return TimingEffect(effects)
