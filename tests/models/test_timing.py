"""The timing effect the retry model leaves out: measured as an offset regression on
out-of-fold chances, it finds a known effect and nothing where there is none, and shifts
chances in log-odds."""

from __future__ import annotations

import numpy as np
import pytest

from reclaim.models.timing import TimingEffect, bands, fit_timing_effect


def _retries(n: int, coef: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    hour = rng.uniform(0, 24, n)
    weekend = rng.random(n) < 2 / 7
    model = rng.uniform(0.05, 0.6, n)  # the model's out-of-fold chance, timing left out
    logit = np.log(model / (1 - model)) + bands(hour, weekend).astype(float) @ coef
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return y, model, hour, weekend


def test_a_known_timing_effect_is_found_and_none_where_there_is_none() -> None:
    truth = np.array([-0.25, -0.08, -0.12])
    effect = fit_timing_effect(*_retries(60_000, truth, seed=1))
    for c, s, t in zip(effect.coef, effect.se, truth, strict=True):
        assert abs(c - t) < 3 * s and s < 0.05, (effect, truth)
    none = fit_timing_effect(*_retries(60_000, np.zeros(3), seed=2))
    assert all(abs(c) < 3 * s for c, s in zip(none.coef, none.se, strict=True)), none
    assert "night ×0.7" in effect.describe() and "60,000 retries" in effect.describe()


def test_the_effect_shifts_chances_in_log_odds_by_band() -> None:
    effect = TimingEffect(coef=(np.log(0.5), 0.0, np.log(2.0)), se=(0.1, 0.1, 0.1), rows=1)
    p = np.array([[0.5, 0.5], [0.5, 0.0]])
    hour = np.array([[3.0, 12.0], [12.0, 3.0]])  # night, business; business, night
    weekend = np.array([[0, 0], [1, 0]])
    shifted = effect.apply(p, hour, weekend)
    # odds 1 → 0.5 at night (p 1/3), unchanged in weekday business hours, ×2 on a weekend
    np.testing.assert_allclose(shifted, [[1 / 3, 0.5], [2 / 3, 0.0]])
    assert effect.apply(np.array([1.0]), np.array([3.0]), np.array([0]))[0] == 1.0


@pytest.mark.parametrize("hour, expected", [(0.5, [0, 1]), (1, [1, 0]), (4.99, [1, 0]),
                                            (5, [0, 1]), (9, [0, 0]), (17.5, [0, 0]),
                                            (18, [0, 1])])  # fmt: skip
def test_bands_follow_the_published_hours(hour: float, expected: list[int]) -> None:
    assert bands(np.array([hour]), np.array([0]))[0, :2].tolist() == [bool(e) for e in expected]


def test_each_retry_s_bands_are_said_in_words() -> None:
    effect = TimingEffect(coef=(-0.1, -0.05, -0.02), se=(0.1, 0.1, 0.1), rows=1)
    hour, weekend = np.array([3.0, 12.0, 20.0, 2.0]), np.array([0, 0, 1, 1])
    assert effect.labels(hour, weekend) == [
        "night",
        "business hours",
        "outside business hours+weekend",
        "night+weekend",
    ]
    np.testing.assert_allclose(effect.shift(hour, weekend), [-0.1, 0.0, -0.07, -0.12])
    # an unknown local time is in no band: nothing is guessed
    unknown = effect.apply(np.array([0.3]), np.array([np.nan]), np.array([np.nan]))
    assert unknown[0] == 0.3
    assert effect.labels(np.array([np.nan]), np.array([np.nan])) == ["unknown"]
