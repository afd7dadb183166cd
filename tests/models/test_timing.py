"""The timing effect the retry model leaves out: measured as an offset regression on
out-of-fold chances, apart for funds declines and the others, it finds a known effect in
each group and nothing where there is none, and shifts chances in log-odds by group."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from reclaim.features import schema
from reclaim.models.timing import (
    BandEffect,
    TimingEffect,
    bands,
    fit_timing_effect,
    groups,
    inputs_matrix,
)


def _retries(n: int, coef: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    hour = rng.uniform(0, 24, n)
    weekend = rng.random(n) < 2 / 7
    code = rng.choice(["insufficient_funds", "do_not_honor", "generic_decline"], n)
    group = groups(code)
    model = rng.uniform(0.05, 0.6, n)  # the model's out-of-fold chance, timing left out
    on = bands(hour, weekend).astype(float)
    shift = np.where(group == "funds", on @ coef["funds"], on @ coef["other"])
    y = rng.random(n) < 1 / (1 + np.exp(-(np.log(model / (1 - model)) + shift)))
    return y, model, hour, weekend, group


def test_each_group_s_known_timing_effect_is_found_and_none_where_there_is_none() -> None:
    # the weekend helps funds declines (paydays) and hurts the others: pooled, they cancel
    truth = {"funds": np.array([-0.05, 0.0, 0.25]), "other": np.array([-0.25, -0.08, -0.12])}
    effect = fit_timing_effect(*_retries(90_000, truth, seed=1))
    assert set(effect.effects) == {"funds", "other"}
    for name, t in truth.items():
        e = effect.effects[name]
        for c, s, expected in zip(e.coef, e.se, t, strict=True):
            assert abs(c - expected) < 3 * s and s < 0.06, (name, e, t)
    none = fit_timing_effect(*_retries(60_000, {"funds": np.zeros(3), "other": np.zeros(3)}, 2))
    for e in none.effects.values():
        assert all(abs(c) < 3 * s for c, s in zip(e.coef, e.se, strict=True)), none
    said = effect.describe()
    night = np.exp(effect.effects["other"].coef[0])
    rows = {name: e.rows for name, e in effect.effects.items()}
    assert sum(rows.values()) == 90_000 and f"funds declines ({rows['funds']:,} retries)" in said
    assert f"night ×{night:.3f}" in said.split("other declines (")[1], said


def test_a_group_with_too_few_retries_is_not_measured_nor_shifted() -> None:
    y, model, hour, weekend, group = _retries(
        20_000, {"funds": np.zeros(3), "other": np.zeros(3)}, 3
    )
    funds = np.flatnonzero(group == "funds")[:100]
    keep = np.concatenate([np.flatnonzero(group == "other"), funds])
    effect = fit_timing_effect(y[keep], model[keep], hour[keep], weekend[keep], group[keep])
    assert set(effect.effects) == {"other"}
    assert "funds declines not measured" in effect.describe()
    p = effect.apply(np.array([0.3, 0.3]), np.array([3.0, 3.0]), np.array([1, 1]),
                     np.array(["funds", "other"]))  # fmt: skip
    assert p[0] == 0.3 and p[1] != 0.3


def test_the_effect_shifts_chances_in_log_odds_by_band_and_group() -> None:
    effect = TimingEffect(
        {
            "other": BandEffect((np.log(0.5), 0.0, np.log(2.0)), (0.1, 0.1, 0.1), 1),
            "funds": BandEffect((0.0, 0.0, np.log(4.0)), (0.1, 0.1, 0.1), 1),
        }
    )
    p = np.array([[0.5, 0.5], [0.5, 0.0], [0.5, 0.5]])
    hour = np.array([[3.0, 12.0], [12.0, 3.0], [12.0, 3.0]])
    weekend = np.array([[0, 0], [1, 0], [1, 0]])
    group = np.array([["other"] * 2, ["other"] * 2, ["funds"] * 2], dtype=object)
    shifted = effect.apply(p, hour, weekend, group)
    # odds 1 → 0.5 at night (p 1/3), unchanged in weekday business hours, ×2 on a weekend;
    # a funds decline's weekend ×4, its night unchanged
    np.testing.assert_allclose(shifted, [[1 / 3, 0.5], [2 / 3, 0.0], [0.8, 0.5]])
    assert (
        effect.apply(np.array([1.0]), np.array([3.0]), np.array([0]), np.array(["other"]))[0] == 1
    )
    assert effect.metrics()["timing_funds_weekend"] == pytest.approx(np.log(4.0))


def test_a_policy_pickled_before_the_split_keeps_its_pooled_effect() -> None:
    """A policy registered before the groups holds one effect for every decline: it loads and
    shifts every retry by it."""
    old = TimingEffect.__new__(TimingEffect)
    state = {"coef": (np.log(0.5), 0.0, 0.0), "se": (0.1, 0.1, 0.1), "rows": 7}
    old.__setstate__(state)
    again = pickle.loads(pickle.dumps(old))
    assert set(again.effects) == {"all"}
    shifted = again.apply(np.array([0.5, 0.5]), np.array([3.0, 3.0]), np.array([0, 0]),
                          np.array(["funds", None], dtype=object))  # fmt: skip
    np.testing.assert_allclose(shifted, [1 / 3, 1 / 3])
    assert "all declines (7 retries): night ×0.500" in again.describe()


def test_the_matrix_rows_are_grouped_as_the_frame_rows() -> None:
    names = ["retry_local_hour", "decline_code", "retry_is_weekend"]
    codes = schema.DECLINE_CODE.categories
    matrix = np.array(
        [[3.0, codes.get_loc("insufficient_funds"), 0.0],
         [3.0, codes.get_loc("do_not_honor"), 1.0],
         [3.0, np.nan, 1.0]]
    )  # fmt: skip
    hour, weekend, group = inputs_matrix(matrix, names)
    assert group.tolist() == ["funds", "other", "other"]  # an unknown code is no funds decline
    assert groups(np.array(["insufficient_funds", None, "xyz"], dtype=object)).tolist() == [
        "funds",
        "other",
        "other",
    ]
    np.testing.assert_array_equal(weekend, [0, 1, 1])


@pytest.mark.parametrize("hour, expected", [(0.5, [0, 1]), (1, [1, 0]), (4.99, [1, 0]),
                                            (5, [0, 1]), (9, [0, 0]), (17.5, [0, 0]),
                                            (18, [0, 1])])  # fmt: skip
def test_bands_follow_the_published_hours(hour: float, expected: list[int]) -> None:
    assert bands(np.array([hour]), np.array([0]))[0, :2].tolist() == [bool(e) for e in expected]


def test_each_retry_s_bands_are_said_in_words() -> None:
    effect = TimingEffect({"other": BandEffect((-0.1, -0.05, -0.02), (0.1, 0.1, 0.1), 1)})
    hour, weekend = np.array([3.0, 12.0, 20.0, 2.0]), np.array([0, 0, 1, 1])
    assert effect.labels(hour, weekend) == [
        "night",
        "business hours",
        "outside business hours+weekend",
        "night+weekend",
    ]
    group = np.array(["other"] * 4)
    np.testing.assert_allclose(effect.shift(hour, weekend, group), [-0.1, 0.0, -0.07, -0.12])
    # an unknown local time is in no band: nothing is guessed
    unknown = effect.apply(np.array([0.3]), np.array([np.nan]), np.array([np.nan]), group[:1])
    assert unknown[0] == 0.3
    assert effect.labels(np.array([np.nan]), np.array([np.nan])) == ["unknown"]
