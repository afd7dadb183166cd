"""Off-policy estimators: the value of a target policy from logs of another.

Pure functions of the logged bundle — rewards, the logging policy's propensities, the target
policy's probability of each logged action — and, for the doubly robust estimator, a reward
model's predictions. Written here because the Open Bandit Pipeline does not install on this
stack; tested against the simulator's known values (``tests/training/test_ope.py``).

Every estimate comes with a 95% interval from the normal approximation of its per-row terms
(for SNIPS, of its linearisation) and the effective sample size of the importance weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """One estimate of a policy value, with its 95% interval."""

    value: float
    lo: float
    hi: float
    se: float

    def covers(self, truth: float) -> bool:
        return self.lo <= truth <= self.hi


def _estimate(terms: np.ndarray, value: float | None = None) -> Estimate:
    n = len(terms)
    v = float(terms.mean()) if value is None else value
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Estimate(v, v - Z95 * se, v + Z95 * se, se)


def mean_estimate(terms: np.ndarray) -> Estimate:
    """The mean of per-row terms, with its 95% interval."""
    return _estimate(np.asarray(terms, dtype=float))


def importance_weights(
    target: np.ndarray, logged: np.ndarray, clip: float | None = None
) -> np.ndarray:
    """π_target(a|x) / π_logging(a|x), optionally clipped at ``clip``."""
    target, logged = np.asarray(target, float), np.asarray(logged, float)
    if np.any(logged <= 0) or np.any(logged > 1):
        raise ValueError("logged propensities must be in (0, 1]")
    if np.any(target < 0) or np.any(target > 1):
        raise ValueError("target probabilities must be in [0, 1]")
    w = target / logged
    return np.minimum(w, clip) if clip is not None else w


def effective_sample_size(w: np.ndarray) -> float:
    """(Σw)² / Σw²: how many equally weighted rows the weighted sample is worth."""
    return float(w.sum() ** 2 / np.square(w).sum()) if np.square(w).sum() > 0 else 0.0


def ips(reward: np.ndarray, w: np.ndarray) -> Estimate:
    """Inverse propensity scoring: mean of w·r."""
    return _estimate(w * reward)


def snips(reward: np.ndarray, w: np.ndarray) -> Estimate:
    """Self-normalised IPS: Σ w·r / Σ w (its interval from the delta method)."""
    mean_w = w.mean()
    value = float((w * reward).sum() / w.sum())
    return _estimate(w * (reward - value) / mean_w + value, value)


def doubly_robust(
    reward: np.ndarray, w: np.ndarray, q_logged: np.ndarray, q_target: np.ndarray
) -> Estimate:
    """Doubly robust: the reward model's value of the target policy, corrected by the weighted
    residuals of the logged actions.

    ``q_logged``: the model's prediction for the logged action; ``q_target``: its expected
    prediction under the target policy, Σ_a π(a|x)·q(x, a).
    """
    return _estimate(q_target + w * (reward - q_logged))


def all_estimates(
    reward: np.ndarray,
    logged: np.ndarray,
    target: np.ndarray,
    q_logged: np.ndarray,
    q_target: np.ndarray,
    clip: float | None = None,
) -> dict[str, object]:
    """IPS, SNIPS and DR estimates with intervals, the logging policy's own value (the mean
    reward), and the effective sample size."""
    w = importance_weights(target, logged, clip)
    return {
        "ips": ips(reward, w),
        "snips": snips(reward, w),
        "dr": doubly_robust(reward, w, q_logged, q_target),
        "logging": _estimate(np.asarray(reward, float)),
        "ess": effective_sample_size(w),
        "n": len(w),
    }


def aipw_effects(
    reward: np.ndarray,
    arm: np.ndarray,
    propensity: np.ndarray,
    q: dict[str, np.ndarray],
    control: str = "none",
) -> dict[str, np.ndarray]:
    """The per-row doubly robust (AIPW) effect of each arm over ``control``: their mean is the
    arm's average uplift (:func:`mean_estimate` gives its interval), and they are the
    pseudo-outcomes to check an uplift model's predictions against.

    ``q[a]`` is a reward model's prediction for every row had it taken arm ``a``;
    ``propensity`` the probability of each row's own arm. Arms without a reward model are
    left out.
    """
    reward, arm = np.asarray(reward, float), np.asarray(arm, dtype=object)
    p = np.asarray(propensity, float)
    if np.any(p <= 0) or np.any(p > 1):
        raise ValueError("propensities must be in (0, 1]")

    def potential(a: str) -> np.ndarray:
        return q[a] + (arm == a).astype(float) * (reward - q[a]) / p

    base = potential(control)
    return {a: potential(a) - base for a in q if a != control}
