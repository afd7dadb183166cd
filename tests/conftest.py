"""Shared, seeded fixtures: one small simulated marketplace and its logged history."""

from __future__ import annotations

import warnings

import pytest

from reclaim.reference import RandomizedLogging
from reclaim.simulator import Marketplace, Rollout, generate, rollout

warnings.filterwarnings("error", category=FutureWarning, module="reclaim")


@pytest.fixture(scope="session")
def market() -> Marketplace:
    """2,000 failed payments over 40 accounts (seed 11)."""
    return generate(40, 2_000, seed=11)


@pytest.fixture(scope="session")
def history(market: Marketplace) -> Rollout:
    """The randomized logging policy rolled out on :func:`market`."""
    return rollout(market, RandomizedLogging(), seed=11)
