"""The retry-time model: the probability that a retry succeeds, given the decision row and the
candidate retry time (``features.schema.DECISION_FEATURES`` + ``RETRY_FEATURES``).

LightGBM, calibrated on a later time split: :meth:`RetryTimeModel.fit` takes rows in time
order, fits the booster on the earlier part and the calibrator on the last
``calibration_share`` of them — isotonic with at least ``min_isotonic_rows`` rows (isotonic
overfits below ~1,000), sigmoid (Platt) otherwise. The same later rows stop the boosting
where their log-loss stops improving: the booster keeps as many trees as help on data it was
not fitted on (on 16,000 simulated payments, 64 of 300: a better held-out log-loss and a
fifth of the API's scoring cost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_array, column_or_1d
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from reclaim.models import lgbm

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "seed": 0,
}


def as_frame(X: Any, names: list[str] | None = None, min_samples: int = 1) -> pd.DataFrame:
    """``X`` as a DataFrame.

    A DataFrame passes as is (its categorical columns matter); anything else is validated as a
    dense, finite-or-NaN numeric 2-d array and gets ``x0, x1, …`` (or ``names``) as columns.
    """
    if isinstance(X, pd.DataFrame):
        if len(X) < min_samples:
            raise ValueError(
                f"Found array with {len(X)} sample(s) (shape={X.shape}) while a minimum of "
                f"{min_samples} is required."
            )
        return X
    array = check_array(
        X, dtype="numeric", ensure_all_finite="allow-nan", ensure_min_samples=min_samples
    )
    cols = names or [f"x{i}" for i in range(array.shape[1])]
    return pd.DataFrame(array, columns=cols)


def _binary_target(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, target)``: the two labels of ``y`` (sorted; the second is "success") and
    ``y`` as a float 0/1 vector, or a ValueError saying what is wrong with ``y``."""
    if y is None:
        raise ValueError("requires y to be passed, but the target y is None")
    y = column_or_1d(y, warn=True)
    kind = type_of_target(y)
    if kind not in ("binary", "unknown"):
        raise ValueError(
            f"Only binary classification is supported. The type of the target is {kind}."
        )
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(
            "y needs both outcomes (a success and a failure) to fit: only one "
            f"class is present ({classes.tolist()})"
        )
    return classes, (y == classes[1]).astype(float)


class RetryTimeModel(ClassifierMixin, BaseEstimator):
    """P(retry succeeds | decision, retry time), calibrated on the latest rows.

    Parameters
    ----------
    params
        LightGBM parameters (merged over :data:`DEFAULT_PARAMS`).
    num_boost_round
        At most this many boosting rounds.
    early_stopping_rounds
        Stop when the calibration rows' log-loss has not improved for this many rounds, and
        keep the trees up to its best round; None (or no calibration rows) fits every round.
    calibration_share
        Share of the (time-ordered) rows, taken from the end, used only to calibrate.
    min_isotonic_rows
        Fewer calibration rows than this use sigmoid calibration instead of isotonic.
    monotone
        Feature name → +1 (the chance may not fall as it grows) or -1 (may not rise): LightGBM's
        monotone constraints, for the features among the rows' columns; None: none.
    """

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        num_boost_round: int = 300,
        calibration_share: float = 0.2,
        min_isotonic_rows: int = 1000,
        early_stopping_rounds: int | None = 25,
        monotone: dict[str, int] | None = None,
    ):
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.calibration_share = calibration_share
        self.min_isotonic_rows = min_isotonic_rows
        self.monotone = monotone

    def fit(self, X: Any, y: Any) -> RetryTimeModel:
        """Fit on rows in time order: the last ``calibration_share`` of them calibrate."""
        if not 0.0 <= self.calibration_share < 1.0:
            raise ValueError(f"calibration_share must be in [0, 1), got {self.calibration_share}")
        stop = self.early_stopping_rounds
        if stop is not None and stop < 1:
            raise ValueError(f"early_stopping_rounds must be at least 1 or None, got {stop}")
        frame = as_frame(X, min_samples=2)
        if y is not None and len(frame) != len(np.asarray(y)):
            raise ValueError(f"X has {len(frame)} rows but y has {len(np.asarray(y))}")
        classes, target = _binary_target(y)
        n_cal = int(round(len(frame) * self.calibration_share))
        n_fit = len(frame) - n_cal
        params = self.lightgbm_params(n_fit, list(frame.columns))
        self.booster_ = self._boost(params, frame, target, n_fit)
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.classes_ = classes
        raw = self.booster_.predict(frame.iloc[n_fit:]) if n_cal else np.zeros(0)
        self._calibrate(raw, target[n_fit:])
        return self

    def lightgbm_params(self, n_fit: int, columns: list[str] | None = None) -> dict[str, Any]:
        """The booster's parameters for ``n_fit`` training rows with ``columns``: :attr:`params`
        over :data:`DEFAULT_PARAMS`, with smaller leaves where the rows are few, and
        :attr:`monotone` as constraints on the columns it names."""
        params = {**DEFAULT_PARAMS, "num_threads": lgbm.threads(), **(self.params or {})}
        if n_fit < 2 * params["min_data_in_leaf"]:
            params["min_data_in_leaf"] = max(1, n_fit // 10)
            params["min_data_in_bin"] = 1
        monotone = getattr(self, "monotone", None)  # models pickled before it have none
        if monotone and columns is not None:
            params["monotone_constraints"] = [int(monotone.get(c, 0)) for c in columns]
            params["monotone_constraints_method"] = "intermediate"
        return params

    def fit_booster(self, booster: lgb.Booster, X_cal: Any, y_cal: Any) -> RetryTimeModel:
        """Take a booster fitted elsewhere (LightGBM's distributed training, all
        :attr:`num_boost_round` rounds) and finish the model as :meth:`fit` would on the later
        rows ``X_cal``, ``y_cal``: keep the trees up to the round where their log-loss stopped
        improving for :attr:`early_stopping_rounds` rounds, then calibrate on them."""
        frame = as_frame(X_cal, min_samples=2)
        classes, target = _binary_target(y_cal)
        losses = round_losses(booster, frame, target) / len(frame)
        self.finish(
            booster, list(frame.columns), losses, lambda b: (lgbm.predict(b, frame), target)
        )
        self.classes_ = classes
        return self

    def finish(
        self,
        booster: lgb.Booster,
        columns: list[str],
        losses: np.ndarray,
        predict_later: Callable[[lgb.Booster], tuple[np.ndarray, np.ndarray]],
    ) -> RetryTimeModel:
        """:meth:`fit_booster` from its parts, for later rows kept elsewhere (a cluster's
        workers): the mean log-loss of the later rows after each round (:func:`round_losses`
        over their count), and a function giving the kept booster's raw predictions of them
        with their outcomes (0/1)."""
        if self.early_stopping_rounds is not None:
            booster = _first_rounds(booster, best_round(losses, self.early_stopping_rounds))
        raw, target = predict_later(booster)
        self.booster_ = booster
        self.feature_names_in_ = np.asarray(columns, dtype=object)
        self.n_features_in_ = len(columns)
        self.classes_ = np.array([0, 1])
        self._calibrate(np.asarray(raw, dtype=float), np.asarray(target, dtype=float))
        return self

    def _calibrate(self, raw: np.ndarray, cal_y: np.ndarray) -> None:
        """Fit the calibrator on the later rows' raw predictions and outcomes."""
        n_cal = len(raw)
        if n_cal == 0 or len(np.unique(cal_y)) < 2:
            self.calibration_method_ = "none"
            self.calibrator_ = None
        elif n_cal >= self.min_isotonic_rows:
            self.calibration_method_ = "isotonic"
            self.calibrator_ = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            self.calibrator_.fit(raw, cal_y)
        else:
            self.calibration_method_ = "sigmoid"
            self.calibrator_ = LogisticRegression().fit(_logit(raw)[:, None], cal_y)

    def _boost(
        self, params: dict[str, Any], frame: pd.DataFrame, target: np.ndarray, n_fit: int
    ) -> lgb.Booster:
        """The booster fitted on the first ``n_fit`` rows, stopped early on the rest (when
        asked and there are any), holding only the trees up to its best round."""
        fit = lgb.Dataset(frame.iloc[:n_fit], target[:n_fit])
        if self.early_stopping_rounds is None or n_fit == len(frame):
            return lgb.train(params, fit, self.num_boost_round)
        held = lgb.Dataset(frame.iloc[n_fit:], target[n_fit:], reference=fit)
        booster = lgb.train(
            {**params, "metric": "binary_logloss"},
            fit,
            self.num_boost_round,
            valid_sets=[held],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        return _first_rounds(booster, booster.best_iteration)

    def _frame(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "booster_")
        frame = as_frame(X)
        if frame.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {frame.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        if not isinstance(X, pd.DataFrame):
            frame.columns = list(self.feature_names_in_)
        return frame[list(self.feature_names_in_)]

    def predict_raw(self, X: Any) -> np.ndarray:
        """The booster's uncalibrated probability of success."""
        frame = self._frame(X)  # checks fitted first
        return lgbm.predict(self.booster_, frame)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities, shape (n, 2): failure, success."""
        return self._calibrated(self.predict_raw(X))

    def predict_proba_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` of LightGBM's own float matrix (columns in
        ``feature_names_in_`` order, categoricals as their codes in ``features.schema``'s
        dtypes): the API's path, with no DataFrame."""
        check_is_fitted(self, "booster_")
        return self._calibrated(lgbm.predict_matrix(self.booster_, matrix))

    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Each feature's share of the raw log-odds for rows of LightGBM's float matrix, by
        the path each row takes through the trees (``models.lgbm.LeafPaths``): shape
        (n, features); far cheaper than SHAP, and what the API's reasons show."""
        check_is_fitted(self, "booster_")
        return lgbm.path_contributions(self.booster_, matrix)[:, :-1]

    def _calibrated(self, raw: np.ndarray) -> np.ndarray:
        if self.calibrator_ is None:
            p = raw
        elif self.calibration_method_ == "isotonic":
            # IsotonicRegression.predict with out_of_bounds="clip", without its input checks
            # (a millisecond per call, more than the API's whole prediction)
            c = self.calibrator_
            p = np.interp(np.clip(raw, c.X_min_, c.X_max_), c.X_thresholds_, c.y_thresholds_)
        else:
            p = self.calibrator_.predict_proba(_logit(raw)[:, None])[:, 1]
        p = np.clip(p, 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """The more likely class label."""
        success = self.predict_proba(X)[:, 1] >= 0.5  # checks fitted first
        return self.classes_[success.astype(int)]

    def contributions(self, X: Any) -> pd.DataFrame:
        """Each feature's contribution to the raw log-odds, one row per row: path
        contributions (:meth:`contributions_matrix`) where the frame converts to LightGBM's
        matrix, else LightGBM's SHAP values."""
        frame = self._frame(X)
        matrix = lgbm.as_matrix(frame, self.booster_.pandas_categorical)
        if matrix is not None:
            values = self.contributions_matrix(matrix)
        else:
            values = lgbm.predict(self.booster_, frame, pred_contrib=True)[:, :-1]
        return pd.DataFrame(values, columns=frame.columns, index=frame.index)

    def __sklearn_tags__(self):  # binary only; LightGBM handles missing values
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.allow_nan = True
        return tags


def _first_rounds(booster: lgb.Booster, rounds: int) -> lgb.Booster:
    """A booster of the first ``rounds`` trees only: every prediction (leaf paths and the
    API's matrix calls included) then reads the same model."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds))


def round_losses(booster: lgb.Booster, frame: pd.DataFrame, target: np.ndarray) -> np.ndarray:
    """The log-loss of rows ``frame`` with outcomes ``target`` (0/1) after each of the
    booster's rounds, summed over the rows (so parts of the rows add up). One tree at a time:
    as cheap as one full prediction."""
    matrix = lgbm.as_matrix(frame, booster.pandas_categorical)
    x = frame if matrix is None else matrix
    raw = np.zeros(len(frame))
    y = np.asarray(target, dtype=float)
    out = np.zeros(booster.current_iteration())
    for i in range(len(out)):
        raw += booster.predict(x, start_iteration=i, num_iteration=1, raw_score=True)
        # log-loss from the raw score: log(1 + e^-z) for successes, log(1 + e^z) for failures
        out[i] = np.logaddexp(0.0, np.where(y > 0, -raw, raw)).sum()
    return out


def best_round(losses: np.ndarray, patience: int) -> int:
    """The round LightGBM's early stopping keeps, given the validation log-loss after each
    round: the first round of lowest loss, looking no further than ``patience`` rounds
    without improvement."""
    best, best_loss = 0, np.inf
    for i, loss in enumerate(losses):
        if loss < best_loss:
            best, best_loss = i + 1, loss
        elif i + 1 - best >= patience:
            break
    return best


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
