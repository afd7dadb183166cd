"""The channel model: the uplift of each message channel over no message on the probability
that the payment is recovered within its window.

A multi-treatment T-learner over LightGBM, learned from randomized message logs: one outcome
model per arm (``none``, ``email``, ``sms``, ``in_app``), each fit on the decisions that took
that arm, weighted by the inverse of the logged propensity so each arm's sample stands for the
whole population even where the randomization probabilities varied by decision. The uplift of
a channel is its arm's predicted recovery minus the control arm's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from reclaim.models import lgbm
from reclaim.models.retry import DEFAULT_PARAMS, _binary_target, as_frame

CONTROL = "none"


class ChannelUpliftModel(BaseEstimator):
    """Multi-treatment T-learner: ``fit(X, treatment, y, propensity)``, ``predict(X)`` uplift.

    Subclass contract: ``fit`` learns one outcome model per arm and sets ``arms_`` (control
    first); ``predict_outcomes`` returns P(recovered | x, arm) per arm; ``predict`` returns
    each treatment arm's uplift over ``control``. Subclasses may change how outcome models are
    fit but must keep these three methods' shapes.

    Parameters
    ----------
    params, num_boost_round
        LightGBM settings for each arm's outcome model.
    control
        The arm every channel is compared with.
    """

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        num_boost_round: int = 200,
        control: str = CONTROL,
    ):
        self.params = params
        self.num_boost_round = num_boost_round
        self.control = control

    def fit(self, X: Any, treatment: Any, y: Any, propensity: Any = None) -> ChannelUpliftModel:
        """Fit one outcome model per arm.

        Parameters
        ----------
        X
            Decision features, n rows.
        treatment
            The arm each decision took (``none`` or a channel), n values.
        y
            Recovered within the window (0/1), n values.
        propensity
            Probability of the logged arm, n values in (0, 1]; None weighs rows equally.
        """
        frame = as_frame(X)
        _, target = _binary_target(y)
        arm = np.asarray(pd.Series(treatment).astype("object"))
        if not (len(frame) == len(target) == len(arm)):
            raise ValueError("X, treatment and y must have the same length")
        arms = sorted(set(arm.tolist()) - {self.control})
        if self.control not in set(arm.tolist()):
            # with the control arm alone the model predicts no uplift: nothing was tried
            raise ValueError(f"treatment needs the control arm {self.control!r}")
        weight = np.ones(len(frame)) if propensity is None else 1.0 / np.asarray(propensity, float)
        if not np.all(np.isfinite(weight)) or np.any(weight <= 0):
            raise ValueError("propensities must be in (0, 1]")
        params = {
            **DEFAULT_PARAMS,
            "num_leaves": 31,
            "num_threads": lgbm.threads(),
            **(self.params or {}),
        }
        self.arms_ = [self.control, *arms]
        self.boosters_: dict[str, lgb.Booster] = {}
        for name in self.arms_:
            rows = arm == name
            self.boosters_[name] = lgb.train(
                params,
                lgb.Dataset(frame[rows], target[rows], weight=weight[rows]),
                self.num_boost_round,
            )
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        return self

    def predict_outcomes(self, X: Any) -> pd.DataFrame:
        """P(recovered | x, arm) for every arm: n rows, one column per arm."""
        check_is_fitted(self, "boosters_")
        frame = as_frame(X)[list(self.feature_names_in_)]
        return pd.DataFrame(
            lgbm.predict_each(self.boosters_, frame),
            index=frame.index,
        )

    def predict(self, X: Any) -> pd.DataFrame:
        """Uplift of each treatment arm over the control: n rows, one column per channel."""
        outcomes = self.predict_outcomes(X)
        return outcomes[self.arms_[1:]].sub(outcomes[self.control], axis=0)

    def predict_matrix(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`predict` of LightGBM's own float matrix (columns in ``feature_names_in_``
        order, categoricals as codes): each channel's uplift, with no DataFrame."""
        check_is_fitted(self, "boosters_")
        control = lgbm.predict_matrix(self.boosters_[self.control], matrix)
        return {
            arm: lgbm.predict_matrix(self.boosters_[arm], matrix) - control
            for arm in self.arms_[1:]
        }


#: The uplift a kept channel is given (the history's own choice, where its effect is not
#: identified): above any measured one, so that the policy sends it where it may.
KEEP = 1.0
#: The channel a platform sends by default (Stripe's own dunning emails): another channel is
#: preferred to it only where measured to do better (``ChannelCalibration.ahead_first``).
DEFAULT_CHANNEL = "email"


@dataclass(frozen=True)
class ChannelCalibration:
    """How the policy reads one channel's predicted uplift, from what was measured of it.

    A T-learner's uplift is the difference of two noisy predictions; on its own it sends or
    withholds messages on noise. Training measures, doubly robust on held-out (cross-fitted)
    predictions, the channel's average uplift at the first decision and at later ones, and how
    much of the model's spread around its own mean is real (``slope``: the regression of the
    measured per-decision effects on the predicted ones, within [0, 1]). The uplift the policy
    acts on is ``average + slope × (predicted − predicted mean)`` for the decision's stage; a
    stage whose average is ``None`` (not above zero with 95% confidence) never gets this
    channel.

    A stage where the history all but always sent this channel cannot tell its effect (there
    is nothing to compare it with): ``keep_first`` / ``keep_later`` make the policy keep the
    history's own behaviour there, as it would send it whatever its effect (:data:`KEEP`),
    rather than act on an estimate the history cannot give.

    ``ahead_first`` / ``ahead_later``: whether this channel was measured to recover more
    than :data:`DEFAULT_CHANNEL` at that stage (paired, on the customers who can receive
    both, the difference above zero with 95% confidence). Where it was not, the policy does
    not prefer it to the default channel for a customer who can receive the default: two
    uplifts within each other's noise do not tell which channel is better, and the default is
    what a platform already sends.
    """

    first: float | None
    later: float | None
    slope: float = 0.0
    center_first: float = 0.0
    center_later: float = 0.0
    keep_first: bool = False
    keep_later: bool = False
    ahead_first: bool = True
    ahead_later: bool = True

    def ahead(self, first: np.ndarray) -> np.ndarray:
        """Per decision, whether this channel may be preferred to the default channel."""
        return np.where(np.asarray(first, dtype=bool), self.ahead_first, self.ahead_later)

    def apply(self, uplift: np.ndarray, first: np.ndarray) -> np.ndarray:
        """The uplift to act on per decision (``first``: the decision is the first); NaN
        where the channel is closed at that stage."""
        first = np.asarray(first, dtype=bool)
        nan = float("nan")
        base = np.where(
            first,
            nan if self.first is None else self.first,
            nan if self.later is None else self.later,
        )
        center = np.where(first, self.center_first, self.center_later)
        acted = base + self.slope * (np.asarray(uplift, dtype=float) - center)
        keep = np.where(first, self.keep_first, self.keep_later)
        return np.where(keep, KEEP, acted)
