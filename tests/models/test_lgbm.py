"""The matrix fast path gives exactly LightGBM's own predictions, and steps aside when the
categories differ from training."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from reclaim.models import lgbm


def _frame(n: int, seed: int, colours: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    colour = pd.Categorical(rng.choice(["red", "green", "blue", None], n), categories=colours)
    return pd.DataFrame({"x": x, "colour": colour, "k": rng.integers(0, 5, n)})


def _booster() -> lgb.Booster:
    train = _frame(2000, 0, ["red", "green", "blue"])
    y = ((train["colour"] == "red") | (train["x"] > 0.5)).astype(int)
    data = lgb.Dataset(train, y, categorical_feature=["colour"])
    return lgb.train({"objective": "binary", "verbose": -1, "min_data_per_group": 5}, data, 30)


def test_fast_path_equals_lightgbm_on_values_and_contributions():
    booster = _booster()
    frame = _frame(500, 1, ["red", "green", "blue"])
    assert lgbm.as_matrix(frame, booster.pandas_categorical) is not None
    np.testing.assert_array_equal(lgbm.predict(booster, frame), booster.predict(frame))
    np.testing.assert_array_equal(
        lgbm.predict(booster, frame, pred_contrib=True), booster.predict(frame, pred_contrib=True)
    )
    both = lgbm.predict_each({"a": booster, "b": booster}, frame)
    np.testing.assert_array_equal(both["b"], booster.predict(frame))


def test_other_categories_take_lightgbms_own_path():
    booster = _booster()
    reordered = _frame(500, 1, ["blue", "green", "red"])  # same values, other codes
    assert lgbm.as_matrix(reordered, booster.pandas_categorical) is None
    np.testing.assert_array_equal(lgbm.predict(booster, reordered), booster.predict(reordered))
    # and LightGBM maps by category, so the reordered frame scores like the original
    original = _frame(500, 1, ["red", "green", "blue"])
    np.testing.assert_allclose(lgbm.predict(booster, reordered), booster.predict(original))


def test_path_contributions_add_up_to_the_raw_score_and_follow_the_path():
    booster = _booster()
    frame = _frame(500, 2, ["red", "green", "blue"])
    matrix = lgbm.as_matrix(frame, booster.pandas_categorical)
    contrib = lgbm.path_contributions(booster, matrix)
    assert contrib.shape == (500, 4)  # x, colour, k and the bias
    np.testing.assert_allclose(contrib.sum(axis=1), booster.predict(matrix, raw_score=True),
                               rtol=0, atol=1e-12)  # fmt: skip
    # a feature no tree splits on gets nothing; the bias is the same for every row
    used = booster.feature_importance() > 0
    assert np.all(contrib[:, :-1][:, ~used] == 0)
    assert np.ptp(contrib[:, -1]) == 0
    # the label is red-or-large-x: those two features carry the prediction, k hardly at all
    share = np.abs(contrib[:, :3]).mean(axis=0)
    assert share[0] > share[2] and share[1] > share[2]
