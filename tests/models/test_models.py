"""The retry-time and channel models: estimator contract, calibration, uplift, MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from reclaim.models.channel import ChannelUpliftModel
from reclaim.models.retry import RetryTimeModel

SMALL = {"num_leaves": 7, "min_data_in_leaf": 5}

# The one scikit-learn check that does not apply:
NOT_APPLICABLE = {
    "check_sample_weight_equivalence_on_dense_data": "fit takes no sample weights",
}


@parametrize_with_checks(
    [RetryTimeModel(params=SMALL, num_boost_round=10)],
    expected_failed_checks=lambda est: NOT_APPLICABLE,
)
def test_retry_model_meets_the_estimator_contract(estimator, check) -> None:
    check(estimator)


def _synthetic(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "hour": rng.uniform(0, 24, n),
            "days": rng.uniform(0, 10, n),
            "kind": pd.Categorical(rng.choice(["a", "b"], n), categories=["a", "b"]),
        }
    )
    logit = -2 + 0.25 * x["days"] - 1.0 * (x["hour"] < 5) + 0.8 * (x["kind"] == "b")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y.to_numpy()


def test_calibration_is_isotonic_with_enough_rows_else_sigmoid() -> None:
    x, y = _synthetic(20_000)
    big = RetryTimeModel(num_boost_round=50).fit(x, y)
    assert big.calibration_method_ == "isotonic"
    small = RetryTimeModel(num_boost_round=20, params=SMALL).fit(x.iloc[:2000], y[:2000])
    assert small.calibration_method_ == "sigmoid"
    xt, yt = _synthetic(20_000, seed=1)
    p = big.predict_proba(xt)[:, 1]
    assert abs(p.mean() - yt.mean()) < 0.01
    assert clone(big).get_params() == big.get_params()


def test_boosting_stops_where_the_later_rows_stop_improving() -> None:
    """Early stopping keeps the trees that help on the calibration rows: fewer than asked
    for on data with little to learn, no worse held out than every round, and the kept
    booster is the whole model (nothing past the best round is read by any prediction)."""
    x, y = _synthetic(6_000)
    x["noise"] = np.random.default_rng(3).normal(size=len(x))  # room to overfit
    stopped = RetryTimeModel(num_boost_round=400).fit(x, y)
    full = RetryTimeModel(num_boost_round=400, early_stopping_rounds=None).fit(x, y)
    assert stopped.booster_.num_trees() < 200
    assert full.booster_.num_trees() == 400
    xt, yt = _synthetic(20_000, seed=1)
    xt["noise"] = np.random.default_rng(4).normal(size=len(xt))

    def loss(m: RetryTimeModel) -> float:
        p = np.clip(m.predict_proba(xt)[:, 1], 1e-6, 1 - 1e-6)
        return float(-np.mean(yt * np.log(p) + (1 - yt) * np.log(1 - p)))

    assert loss(stopped) <= loss(full)
    raw = stopped.booster_.predict(xt, num_iteration=stopped.booster_.num_trees())
    np.testing.assert_array_equal(stopped.predict_raw(xt), raw)
    with pytest.raises(ValueError, match="early_stopping_rounds must be at least 1"):
        RetryTimeModel(early_stopping_rounds=0).fit(x, y)


def test_a_booster_fitted_elsewhere_is_finished_as_fit_would() -> None:
    """The Dask path boosts every round on the workers and finishes here: it keeps the same
    trees LightGBM's own early stopping keeps on the same later rows, and calibrates on them,
    so the model equals :meth:`RetryTimeModel.fit` on the same rows."""
    import lightgbm as lgb

    x, y = _synthetic(6_000)
    x["noise"] = np.random.default_rng(3).normal(size=len(x))
    fitted = RetryTimeModel(num_boost_round=400).fit(x, y)
    n_fit = len(x) - int(round(len(x) * 0.2))
    params = fitted.lightgbm_params(n_fit)
    every_round = lgb.train(params, lgb.Dataset(x.iloc[:n_fit], y[:n_fit]), 400)
    finished = RetryTimeModel(num_boost_round=400).fit_booster(
        every_round, x.iloc[n_fit:], y[n_fit:]
    )
    assert finished.booster_.num_trees() == fitted.booster_.num_trees() < 400
    assert finished.calibration_method_ == fitted.calibration_method_ == "isotonic"
    xt, _ = _synthetic(2_000, seed=1)
    xt["noise"] = 0.0
    np.testing.assert_allclose(finished.predict_proba(xt), fitted.predict_proba(xt))


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros((10, 2)), np.arange(10), "Only binary classification is supported"),
        (np.zeros((10, 2)), np.zeros(10), "needs both outcomes"),
        (np.zeros((10, 2)), np.zeros(9), "X has 10 rows but y has 9"),
        (np.zeros(10), np.zeros(10), "Expected 2D array"),
        (np.zeros((10, 2)), None, "target y is None"),
    ],
)
def test_retry_model_bad_input(X, y, message) -> None:
    with pytest.raises(ValueError, match=message):
        RetryTimeModel().fit(X, y)


def test_channel_model_recovers_known_uplift() -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    x = pd.DataFrame({"b2b": rng.integers(0, 2, n).astype(float), "z": rng.random(n)})
    arm = rng.choice(["none", "email", "sms"], n, p=[0.5, 0.25, 0.25])
    base = 0.3
    effect = np.where(
        arm == "email", 0.15 * x["b2b"], np.where(arm == "sms", 0.15 * (1 - x["b2b"]), 0)
    )
    y = (rng.random(n) < base + effect).astype(int)
    prop = np.where(arm == "none", 0.5, 0.25)
    params = {"num_leaves": 7, "min_data_in_leaf": 500, "learning_rate": 0.1}
    model = ChannelUpliftModel(params=params, num_boost_round=100).fit(x, arm, y, prop)
    grid = np.linspace(0.01, 0.99, 50)
    b2b = model.predict(pd.DataFrame({"b2b": 1.0, "z": grid})).mean()
    b2c = model.predict(pd.DataFrame({"b2b": 0.0, "z": grid})).mean()
    assert list(b2b.index) == ["email", "sms"]
    assert b2b["email"] == pytest.approx(0.15, abs=0.03)
    assert b2c["email"] == pytest.approx(0.0, abs=0.03)
    assert b2c["sms"] == pytest.approx(0.15, abs=0.03)
    assert b2b["sms"] == pytest.approx(0.0, abs=0.03)


def test_channel_model_needs_a_control_arm() -> None:
    x = pd.DataFrame({"a": np.arange(10.0)})
    with pytest.raises(ValueError, match="control arm 'none'"):
        ChannelUpliftModel().fit(x, ["email"] * 10, [0, 1] * 5)
    with pytest.raises(ValueError, match="propensities must be in"):
        ChannelUpliftModel().fit(x, ["none", "email"] * 5, [0, 1] * 5, np.zeros(10))


def test_models_survive_an_mlflow_round_trip(tmp_path) -> None:
    import mlflow.sklearn

    x, y = _synthetic(5_000)
    model = RetryTimeModel(num_boost_round=30).fit(x, y)
    mlflow.sklearn.save_model(model, tmp_path / "retry", serialization_format="cloudpickle")
    loaded = mlflow.sklearn.load_model(str(tmp_path / "retry"))
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    arm = np.where(np.arange(5_000) % 2 == 0, "none", "email")
    channel = ChannelUpliftModel(params=SMALL, num_boost_round=10).fit(x, arm, y)
    mlflow.sklearn.save_model(channel, tmp_path / "channel", serialization_format="cloudpickle")
    again = mlflow.sklearn.load_model(str(tmp_path / "channel"))
    pd.testing.assert_frame_equal(again.predict(x), channel.predict(x))


def test_lightgbm_threads_come_from_the_settings(monkeypatch) -> None:
    """RECLAIM_LIGHTGBM_THREADS reaches every booster the models train; a negative count is
    refused by name."""
    from pydantic import ValidationError

    from reclaim.settings import Settings, get_settings

    x, y = _synthetic(2_000)
    monkeypatch.setenv("RECLAIM_LIGHTGBM_THREADS", "3")
    get_settings.cache_clear()
    try:
        retry = RetryTimeModel(num_boost_round=2, early_stopping_rounds=None).fit(x, y)
        assert retry.booster_.params["num_threads"] == 3
        arm = np.where(np.arange(len(x)) % 2 == 0, "none", "email")
        channel = ChannelUpliftModel(num_boost_round=2).fit(x, arm, y)
        assert {b.params["num_threads"] for b in channel.boosters_.values()} == {3}
    finally:
        get_settings.cache_clear()
    with pytest.raises(ValidationError, match="lightgbm_threads"):
        Settings(lightgbm_threads=-1)


def test_a_monotone_model_s_chance_does_not_fall_along_the_features_it_names() -> None:
    """The gate's world (``TrainConfig.world_model``): rows where success falls with ``days``
    give a free model a falling chance; constrained not to fall with ``days``, it stays level
    or rises at every row, while the feature it does not name still moves it."""
    rng = np.random.default_rng(5)
    n = 12_000
    x = pd.DataFrame({"days": rng.uniform(0, 10, n), "hour": rng.uniform(0, 24, n)})
    logit = -1.0 - 0.15 * x["days"] - 1.0 * (x["hour"] < 5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).to_numpy().astype(int)
    later = x.assign(days=x["days"] + 3.0)
    free = RetryTimeModel(num_boost_round=100).fit(x, y)
    assert free.predict_proba(later)[:, 1].mean() < free.predict_proba(x)[:, 1].mean() - 0.02
    held = RetryTimeModel(num_boost_round=100, monotone={"days": 1, "absent": -1}).fit(x, y)
    assert held.lightgbm_params(10_000, ["hour", "days"])["monotone_constraints"] == [0, 1]
    raw = held.booster_.predict(x), held.booster_.predict(later)
    assert np.all(raw[1] >= raw[0] - 1e-12)
    night = x.assign(hour=3.0)
    assert held.predict_proba(night)[:, 1].mean() < held.predict_proba(x)[:, 1].mean() - 0.02
