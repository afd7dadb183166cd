"""A decision's randomness is its own: the same payment and time draw the same uniforms
whatever else is decided with them, so batching never changes an answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from reclaim.policy import DecisionRandom

AT = datetime(2026, 5, 20, 14, tzinfo=UTC)


def _draws(ids: list[str], times: list, calls: int) -> np.ndarray:
    rng = DecisionRandom(ids, times)
    return np.column_stack([rng.random(len(ids)) for _ in range(calls)])


def test_draws_depend_on_the_decision_only() -> None:
    alone = _draws(["in_a"], [AT], 20)  # more than one block of eight
    mates = ["in_b", "in_a", "in_c"]
    together = _draws(mates, [AT, AT, AT + timedelta(hours=1)], 20)
    np.testing.assert_array_equal(together[1], alone[0])
    assert not np.array_equal(together[0], together[1]), "another payment draws its own"
    later = _draws(["in_a"], [AT + timedelta(hours=1)], 20)
    assert not np.array_equal(later[0], alone[0]), "another time draws its own"
    # a pandas Timestamp and a datetime of the same instant are the same decision
    np.testing.assert_array_equal(_draws(["in_a"], [pd.Timestamp(AT)], 20), alone)


def test_draws_are_uniform_on_the_unit_interval() -> None:
    ids = [f"in_{i}" for i in range(20_000)]
    u = _draws(ids, [AT] * len(ids), 3)
    assert u.min() >= 0.0 and u.max() < 1.0
    # each call's draws: mean 1/2 and variance 1/12 within a few standard errors
    se_mean = np.sqrt(1 / 12 / len(ids))
    assert np.all(np.abs(u.mean(axis=0) - 0.5) < 5 * se_mean)
    assert np.all(np.abs(u.var(axis=0) - 1 / 12) < 0.005)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05, "successive draws independent"


def test_draws_are_per_decision() -> None:
    with pytest.raises(ValueError, match="2 payment ids but 1 decision times"):
        DecisionRandom(["in_a", "in_b"], [AT])
    with pytest.raises(ValueError, match="draws are per decision: asked 3, have 2"):
        DecisionRandom(["in_a", "in_b"], [AT, AT]).random(3)
