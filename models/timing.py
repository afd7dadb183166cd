"""The local-time effect on a retry's success, pooled across every decline.

Approval rates differ by the customer's local hour and weekday (Recurly publishes a decline
rate of 25–28% from 1 to 4 am against about 18% in business hours; docs/sources.md). The
retry-time model can learn this, but a tree ensemble stopped early splits on the large
effects first and learns a few-percent effect only in part. :class:`TimingEffect` measures
what it left: a logistic regression of the retries' outcomes on three local-time bands —
night (1 to 5 am), outside business hours, weekend; weekday business hours (9 am to 6 pm)
are the reference — with the model's own *out-of-fold* log-odds as a fixed offset, so it
estimates only the timing the model has not already captured, from all retries at once.
:meth:`TimingEffect.apply` shifts the model's chances by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NIGHT_HOURS = (1, 5)
BUSINESS_HOURS = (9, 18)
BANDS = ("night", "outside_business_hours", "weekend")


def bands(hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """(n, 3) indicators of :data:`BANDS` for local retry hours (0–23, fractional allowed)
    and weekend flags. An unknown hour or day (NaN) is in no band: no shift is guessed."""
    hour = np.asarray(hour, dtype=float)
    night = (hour >= NIGHT_HOURS[0]) & (hour < NIGHT_HOURS[1])
    business = (hour >= BUSINESS_HOURS[0]) & (hour < BUSINESS_HOURS[1])
    outside = np.isfinite(hour) & ~night & ~business
    return np.column_stack([night, outside, np.asarray(weekend, dtype=float) > 0])


@dataclass(frozen=True)
class TimingEffect:
    """Log-odds shifts of a retry's success by local-time band (:data:`BANDS`), beyond what
    the retry-time model predicts, with their standard errors."""

    coef: tuple[float, float, float]
    se: tuple[float, float, float]
    rows: int

    def shift(self, hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
        """The log-odds shift of each retry."""
        return bands(hour, weekend).astype(float) @ np.asarray(self.coef)

    def apply(self, p: np.ndarray, hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
        """Chances ``p`` (any shape; ``hour`` and ``weekend`` the same shape) shifted by
        the effect in log-odds; 0 and 1 stay as they are."""
        p = np.asarray(p, dtype=float)
        shift = self.shift(np.ravel(hour), np.ravel(weekend)).reshape(p.shape)
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

    def describe(self) -> str:
        """One line for a run's record: each band's odds ratio with its 95% interval."""
        parts = [
            f"{name.replace('_', ' ')} ×{np.exp(c):.3f} "
            f"({np.exp(c - 1.96 * s):.3f} to {np.exp(c + 1.96 * s):.3f})"
            for name, c, s in zip(BANDS, self.coef, self.se, strict=True)
        ]
        return (
            "retry timing beyond the retry model, odds against weekday business hours "
            f"(out-of-fold, {self.rows:,} retries): " + ", ".join(parts)
        )


def fit_timing_effect(
    y: np.ndarray, out_of_fold: np.ndarray, hour: np.ndarray, weekend: np.ndarray
) -> TimingEffect:
    """:class:`TimingEffect` from retries' outcomes ``y`` (0/1), the retry model's
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
    return TimingEffect(
        coef=tuple(float(b) for b in beta[1:]),  # type: ignore[arg-type]
        se=tuple(float(s) for s in se[1:]),  # type: ignore[arg-type]
        rows=len(y),
    )
