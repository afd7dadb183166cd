"""The logging policy's message choice, estimated from history: for exports without a
randomized log.

A platform's own export has messages but no record of how likely each one was: the choice
was made by people or by a fixed dunning schedule. :class:`ArmPropensityModel` learns
P(arm | decision features) — ``none`` or a channel — from the decisions themselves (a
multiclass LightGBM, kept shallow and heavily regularised so that its probabilities are smooth
rather than sure), and clips them at ``floor`` so no weight explodes. Its estimates are only
as good as the features: a choice driven by something the export does not hold (a support
agent's judgement) is confounding no estimator can remove, which the training run says.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from reclaim.models import lgbm
from reclaim.models.retry import as_frame

PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "lambda_l2": 10.0,
    "feature_fraction": 0.9,
    "verbose": -1,
}


class ArmPropensityModel(BaseEstimator):
    """``fit(X, arm)``; ``predict_proba(X)`` → P(arm | x) per arm, each at least ``floor``.

    Parameters
    ----------
    num_boost_round
        Boosting rounds of the multiclass model.
    floor
        Smallest probability returned (then rows are renormalised): the weights 1/p stay
        below 1/floor.
    """

    def __init__(self, num_boost_round: int = 100, floor: float = 0.01):
        self.num_boost_round = num_boost_round
        self.floor = floor

    def fit(self, X: Any, arm: Any) -> ArmPropensityModel:
        """Learn the arms' probabilities; ``arm`` holds ``none`` or a channel per row."""
        frame = as_frame(X)
        arms = pd.Series(np.asarray(arm, dtype=object))
        if len(arms) != len(frame):
            raise ValueError("X and arm must have the same length")
        self.arms_ = sorted(arms.unique().tolist())
        codes = pd.Categorical(arms, categories=self.arms_).codes
        if len(self.arms_) == 1:  # one arm only: it is certain
            self.booster_ = None
        else:
            self.booster_ = lgb.train(
                {**PARAMS, "num_class": len(self.arms_), "num_threads": lgbm.threads()},
                lgb.Dataset(frame, codes.astype(float)),
                self.num_boost_round,
            )
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        return self

    def predict_proba(self, X: Any) -> pd.DataFrame:
        """P(arm | x): n rows, one column per arm seen in training, rows summing to 1."""
        check_is_fitted(self, "arms_")
        frame = as_frame(X)[list(self.feature_names_in_)]
        if self.booster_ is None:
            p = np.ones((len(frame), 1))
        else:
            p = np.asarray(lgbm.predict(self.booster_, frame)).reshape(len(frame), -1)
        p = np.maximum(p, self.floor)
        return pd.DataFrame(p / p.sum(axis=1, keepdims=True), columns=self.arms_, index=frame.index)

    def logged(self, X: Any, arm: Any) -> np.ndarray:
        """The probability of each row's own arm (an arm never seen in training: ``floor``)."""
        probs = self.predict_proba(X)
        arms = np.asarray(arm, dtype=object)
        col = pd.Index(probs.columns).get_indexer(arms)
        out = np.full(len(arms), self.floor)
        known = col >= 0
        out[known] = probs.to_numpy()[np.flatnonzero(known), col[known]]
        return out


def overlap(propensity: np.ndarray, arm: Any, floor: float = 0.05) -> dict[str, Any]:
    """How well the logged arms cover each other: per arm its rows and its smallest
    propensity, the share of rows whose own arm had a probability below ``floor`` (their
    weights dominate any estimate), and the effective sample size of uniform-target weights."""
    p = np.asarray(propensity, dtype=float)
    arms = pd.Series(np.asarray(arm, dtype=object))
    w = 1.0 / p
    return {
        "rows": len(p),
        "rows_per_arm": arms.value_counts().to_dict(),
        "min_propensity_per_arm": {
            str(a): float(p[(arms == a).to_numpy()].min()) for a in sorted(arms.unique())
        },
        "share_below_floor": float((p < floor).mean()) if len(p) else 0.0,
        "floor": floor,
        "ess": float(w.sum() ** 2 / np.square(w).sum()) if len(p) else 0.0,
    }
